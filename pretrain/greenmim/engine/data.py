"""Data loading for pretraining: a step-exact distributed batch sampler and seeded augmentation.

Determinism is by construction, not by saved state:
  * the sample order of epoch e is a permutation seeded by (seed, e);
  * the global micro-batch k of an epoch is perm[k*G:(k+1)*G] (G = world * micro batch) and rank r
    takes the r-th slice of it, so N processes see exactly the batches one process would see;
  * every sample's augmentation draws from a torch RNG seeded by (seed, epoch, index), so it does
    not depend on worker count, worker assignment or where a run was resumed;
  * resuming mid-epoch just starts the sampler at the right step (no data is read to skip).
"""
from __future__ import annotations

from typing import Iterator, List, Optional, Tuple

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from ..config import ConfigError
from ..data.seeds import ORDER, SeededDataset, sample_seed, seed_of  # noqa: F401 (re-exported)


class SyntheticImages(Dataset):
    """Procedural images of textured shapes (greenmim.data.synthetic), drawn on the fly from a
    per-index seed: a dataset that needs no files, for smoke runs, tests and benchmarks.
    Rendered images are cached (uint8, before the transform) in each process that draws them."""

    def __init__(self, size: int, img_size: int, transform=None, seed: int = 0):
        self.size, self.img_size, self.transform, self.seed = size, img_size, transform, seed
        self._cache = {}

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, index: int):
        from PIL import Image
        from ..data.synthetic import render_image
        if index not in self._cache:
            rng = np.random.default_rng([self.seed, 7, index])
            self._cache[index] = render_image(rng, self.img_size)[0]
        img = Image.fromarray(self._cache[index])
        return self.transform(img) if self.transform is not None else img


class StepBatchSampler(Sampler):
    """Yields this rank's micro-batches of (epoch, index) keys, step-exactly resumable.

    Args:
        num_samples: dataset length.
        micro_batch: samples per process per forward pass.
        world_size, rank: process group layout.
        accum_iter: micro-batches per optimiser step.
        seed: base of the per-epoch permutation seed.
    Incomplete optimiser steps at the end of an epoch are dropped, so every step has the full
    global batch and steps_per_epoch = num_samples // (micro_batch * world_size * accum_iter).
    """

    def __init__(self, num_samples: int, micro_batch: int, world_size: int = 1, rank: int = 0,
                 accum_iter: int = 1, seed: int = 0):
        self.num_samples, self.micro_batch = num_samples, micro_batch
        self.world_size, self.rank, self.accum_iter, self.seed = world_size, rank, accum_iter, seed
        self.global_micro = micro_batch * world_size
        self.steps_per_epoch = num_samples // (self.global_micro * accum_iter)
        self.epoch, self.start_step = 0, 0

    def set_epoch(self, epoch: int, start_step: int = 0) -> None:
        """Next iteration covers epoch `epoch` from optimiser step `start_step` on."""
        self.epoch, self.start_step = int(epoch), int(start_step)

    def __len__(self) -> int:
        return max(0, self.steps_per_epoch - self.start_step) * self.accum_iter

    def __iter__(self) -> Iterator[List[Tuple[int, int]]]:
        g = torch.Generator()
        g.manual_seed(seed_of(ORDER, self.seed, self.epoch))
        perm = torch.randperm(self.num_samples, generator=g).tolist()
        lo = self.rank * self.micro_batch
        for k in range(self.start_step * self.accum_iter, self.steps_per_epoch * self.accum_iter):
            chunk = perm[k * self.global_micro:(k + 1) * self.global_micro]
            yield [(self.epoch, i) for i in chunk[lo:lo + self.micro_batch]]


def build_dataset(cfg: dict, device: Optional[torch.device] = None) -> Dataset:
    """The pretraining dataset named by cfg["data"], already wrapped in SeededDataset.

    Its `decode_plan` (data.device_loader.DecodePlan) says how images are decoded, resolved
    from data.decode for `device` (default: the CUDA device this process uses when cfg["device"]
    allows CUDA, else the CPU); build_loader follows it. Indexing the dataset always gives the
    CPU path's float [3, H, W] image (e.g. for the figures), whatever the plan.
    """
    from ..data.device_loader import DecodePlan, resolve_decode
    from ..data.transforms import build_pretrain_transform
    d = cfg["data"]
    if d["path"] in (None, ""):
        raise ConfigError("no training data given; set data.path=/path/to/images "
                          "(or data.path=synthetic for generated images)")
    if device is None:
        cuda = cfg.get("device", "auto") in ("auto", "cuda") and torch.cuda.is_available()
        device = torch.device("cuda", torch.cuda.current_device()) if cuda else torch.device("cpu")
    if d["path"] == "synthetic":
        plan = DecodePlan("pil", torch.device(device), "data: synthetic images rendered in the "
                                                       "loader workers (data.decode does not apply)")
    else:
        plan = resolve_decode(d["decode"], device)
    transform = build_pretrain_transform(d["img_size"], scale=tuple(d["scale"]),
                                         decode="pil" if plan.path == "gpu" else plan.path)
    if d["path"] == "synthetic":
        # drawn at a larger size so that RandomResizedCrop has room to work
        base = SyntheticImages(int(d["synthetic_size"]), max(64, d["img_size"] * 5 // 4), transform,
                               seed=cfg["seed"])
    else:
        from ..data.folder import ImageFolderDataset
        try:
            base = ImageFolderDataset(d["path"], transform, strict=bool(d["strict"]))
        except (ValueError, OSError) as e:
            raise ConfigError(f"data.path: {e}") from None
    dataset = SeededDataset(base, seed=cfg["seed"])
    dataset.decode_plan = plan
    dataset.img_size, dataset.scale = int(d["img_size"]), tuple(d["scale"])
    return dataset


def build_loader(dataset: Dataset, micro_batch: int, world_size: int, rank: int, accum_iter: int,
                 seed: int, num_workers: int, pin_memory: bool = False, collate=None,
                 prefetch: Optional[int] = None):
    """A DataLoader of this rank's micro-batches (StepBatchSampler), or, when the dataset's
    decode_plan is "gpu", a DeviceDecodingLoader around one: workers hand over file bytes and
    crop draws, the training device decodes (data/device_decode.py); `prefetch` batches are
    decoded ahead in a thread (default: 2 on CUDA, none on the CPU).

    collate: e.g. mask_collate.MaskCollator, which gets ((epoch, index), image) items and
    makes batches of (images, mask, plans); None: batches of images [B, 3, H, W]."""
    from ..data.device_decode import stack_images
    sampler = StepBatchSampler(len(dataset), micro_batch, world_size, rank, accum_iter, seed)
    if sampler.steps_per_epoch == 0:
        need = micro_batch * world_size * accum_iter
        raise ConfigError(f"the dataset has {len(dataset)} images, fewer than one global batch of "
                          f"{need}; lower train.batch_size or add images")
    plan = getattr(dataset, "decode_plan", None)
    decoder = None
    if plan is not None and plan.path == "gpu":
        from timm.data.constants import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
        from ..data.device_decode import DeviceDecoder, EncodeForDevice
        from ..data.device_loader import EncodedView
        encoded = EncodedView(dataset, EncodeForDevice(scale=dataset.scale))
        decoder = DeviceDecoder(plan.device, dataset.img_size, IMAGENET_DEFAULT_MEAN,
                                IMAGENET_DEFAULT_STD, replace=encoded.replace)
        dataset = encoded
    if collate is not None:
        from .mask_collate import KeyedDataset
        dataset = KeyedDataset(dataset)
    loader = DataLoader(dataset, batch_sampler=sampler, num_workers=num_workers,
                        collate_fn=collate if collate is not None else (stack_images if decoder else None),
                        pin_memory=pin_memory, persistent_workers=num_workers > 0)
    if decoder is None:
        return loader
    from ..data.device_loader import DeviceDecodingLoader
    if prefetch is None:
        prefetch = 2 if decoder.device.type == "cuda" else 0
    return DeviceDecodingLoader(loader, decoder, prefetch)


def skipped_images(dataset: Dataset) -> Optional[int]:
    """Unreadable images skipped so far by this process (None if the dataset does not count)."""
    inner = getattr(dataset, "dataset", dataset)
    return getattr(inner, "num_skipped", None)
