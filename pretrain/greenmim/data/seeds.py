"""The one seed rule: every random stream of a run is seeded by a linear mix of the run's seed and
the stream's keys (epoch, sample index, step, rank), so each draw is a pure function of them and
does not depend on worker count, process count or where a run was resumed.

    seed_of(stream, seed, *keys) = (seed * stream.seed_mult + sum(key_i * stream.key_mults[i])
                                    + stream.offset) mod 2**63

The constants are those the streams had before they shared this rule, and are fixed forever: a
resumed run of an older checkpoint must draw the same crops, masks and orders. Some streams share
a seed multiplier (e.g. the sample stream at epoch 0 and the epoch-order stream meet at some
keys); they seed different generators for different draws, so no draw repeats another's.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Tuple

import torch
from torch.utils.data import Dataset


@dataclass(frozen=True)
class SeedStream:
    """One random stream: the multipliers of the run seed and of each key, and an offset."""
    name: str
    seed_mult: int
    key_mults: Tuple[int, ...]
    offset: int = 0


SAMPLE = SeedStream("sample augmentation (epoch, index)", 1_000_003, (7_919 * 1_000_033, 1))
MASK = SeedStream("mask (epoch, index)", 2_654_435_761, (97_531 * 1_000_003, 1), 7)
ORDER = SeedStream("sample order (epoch)", 1_000_003, (1,))
STEP = SeedStream("model randomness (step, rank)", 1_000_003, (65_537, 7_919), 12_345)
SUBSET = SeedStream("labelled subset ()", 1_000_003, (), 17)


def seed_of(stream: SeedStream, seed: int, *keys: int) -> int:
    """The seed of `stream` for the run seed `seed` and the stream's keys (a non-negative int
    below 2**63, valid for torch.manual_seed and, mod 2**32, for numpy)."""
    if len(keys) != len(stream.key_mults):
        raise TypeError(f"the {stream.name} stream takes {len(stream.key_mults)} keys, got {len(keys)}")
    mixed = int(seed) * stream.seed_mult + stream.offset
    for key, mult in zip(keys, stream.key_mults):
        mixed += int(key) * mult
    return mixed % (2 ** 63)


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """Seed of the augmentation of sample `index` in epoch `epoch` (crop box and flip)."""
    return seed_of(SAMPLE, seed, epoch, index)


def mask_seed(seed: int, epoch: int, index: int) -> int:
    """Seed of the mask of sample `index` in epoch `epoch` (or of a shared micro-batch mask,
    keyed by its first sample)."""
    return seed_of(MASK, seed, epoch, index)


def step_seed(seed: int, step: int, rank: int) -> int:
    """Seed of torch's global RNG for one optimiser step of one process: drop-path and any other
    randomness in the model is a function of (seed, step, rank), hence identical after a resume."""
    return seed_of(STEP, seed, step, rank)


class SeededDataset(Dataset):
    """Wraps a dataset so that item (epoch, index) is augmented with its own seeded torch RNG.

    dataset[(epoch, index)] -> the inner item (e.g. float [3, H, W]); items that are tuples
    (image, label) are reduced to the image.
    """

    def __init__(self, dataset: Dataset, seed: int = 0):
        self.dataset = dataset
        self.seed = seed

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: Tuple[int, int]):
        epoch, index = key
        with torch.random.fork_rng(devices=[]):
            # the CPU generator only: torch.manual_seed would also reseed the CUDA generators of
            # a main process that reads items (figures, device-path replacements) mid-run
            torch.default_generator.manual_seed(sample_seed(self.seed, epoch, index))
            item = self.dataset[index]
        return item[0] if isinstance(item, (tuple, list)) else item
