"""Masks and plans made in the DataLoader workers, off the training step's critical path.

A batch of the pretraining loader is (images [B, 3, H, W], mask: a UnitMask [B, Hu, Wu], plans): the
collate function draws the mask and, for encoders with a planner, builds the sparse path's plans
in the worker that loaded the images, so the main process only copies them to the device
(pinned, non-blocking) and the GPU never waits for planning.

The mask is a pure function of the data: per-sample masks of (seed, epoch, sample index), a shared
mask of (seed, epoch, the micro-batch's first index). So no RNG state lives in the main process,
N processes draw exactly the per-sample masks one process would, and a resumed run draws the
same masks again whatever its worker count.
"""
from __future__ import annotations

from typing import Callable, List, Optional, Sequence, Tuple

import torch
from torch.utils.data import Dataset

from ..data.device_decode import stack_images
from ..data.masking import MaskGenerator, UnitMask
from ..data.seeds import mask_seed  # noqa: F401 (re-exported)


class KeyedDataset(Dataset):
    """dataset[(epoch, index)] -> ((epoch, index), image): the collate function needs the keys."""

    def __init__(self, dataset: Dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: Tuple[int, int]):
        return key, self.dataset[key]


class MaskCollator:
    """collate_fn: [((epoch, index), image)] -> (images, mask, plans); images are float
    [B, 3, H, W], or an EncodedBatch when the training device decodes (data/device_decode.py).

    Args:
        img_size, ratio, shared: as MaskGenerator.
        seed: the run's seed.
        planner: picklable callable unit_mask [P, Hu, Wu] -> plans (the encoder's `planner()`),
            or None (plans None: dense models, and encoders that plan in their forward, e.g.
            Twins). The mask is a UnitMask either way, so no model looks at its values again.
    """

    def __init__(self, img_size, ratio: float, shared: bool, seed: int,
                 planner: Optional[Callable[[torch.Tensor], dict]] = None):
        self.generator = MaskGenerator(img_size, ratio, shared, seed=0)
        self.seed, self.shared, self.planner = int(seed), bool(shared), planner

    def masks(self, keys: Sequence[Tuple[int, int]]) -> torch.Tensor:
        """bool [len(keys), Hu, Wu], True = masked."""
        gen = self.generator
        if self.shared:
            epoch, index = keys[0]
            gen.generator.manual_seed(mask_seed(self.seed, epoch, index))
            return gen(len(keys))
        out = []
        for epoch, index in keys:
            gen.generator.manual_seed(mask_seed(self.seed, epoch, index))
            out.append(gen(1))
        return torch.cat(out)

    def __call__(self, items: List[Tuple[Tuple[int, int], torch.Tensor]]):
        keys = [k for k, _ in items]
        images = stack_images([img for _, img in items])  # an EncodedBatch on the device path
        mask = UnitMask(self.masks(keys), self.shared)  # valid by construction: never checked again
        plans = self.planner(mask) if self.planner is not None else None
        return images, mask, plans


def collator_for(model: torch.nn.Module, img_size, ratio: float, shared: bool, seed: int) -> MaskCollator:
    """The MaskCollator of a pretraining model, with the planner the model asks for (`model.planner()`:
    the green encoder's picklable planner, None for the dense baseline)."""
    return MaskCollator(img_size, ratio, shared, seed, model.planner())
