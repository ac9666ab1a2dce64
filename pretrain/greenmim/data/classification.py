"""Labelled image folders for classification fine-tuning (ImageNet layout):

    root/train/<class>/<img>    (images may sit in sub-folders of a class folder)
    root/val/<class>/<img>

Class names are the folder names, sorted (label i = classes[i]); train and val must hold the same
classes. Scanning and unreadable-image handling are those of folder.ImageFolderDataset (sorted,
symlink-safe scan; skip with a warning, or raise with data.strict).
"""
from __future__ import annotations

import os
import random
from typing import Callable, List, Optional, Tuple

import numpy as np
import torch
from PIL import Image

from ..config import ConfigError
from .folder import ImageFolderDataset
from .seeds import SUBSET, SeededDataset, sample_seed, seed_of

LAYOUT = "root/train/<class>/<img> and root/val/<class>/<img>"


class LabelledImageFolder(ImageFolderDataset):
    """One split (root/<split>) of labelled images; items are (transform(image), label).

    Args:
        split_dir: root/train or root/val.
        transform: PIL RGB image -> tensor.
        strict: see ImageFolderDataset.
        classes: the label order (default: this split's sorted class folders).
    Raises:
        ValueError: a missing folder, no images, images outside class folders, or classes that
            are not in `classes`.
    """

    def __init__(self, split_dir: str, transform: Optional[Callable] = None, strict: bool = False,
                 classes: Optional[List[str]] = None):
        super().__init__(split_dir, transform, strict)
        names = [os.path.relpath(p, self.root).split(os.sep) for p in self.samples]
        loose = [os.path.join(self.root, *n) for n in names if len(n) == 1]
        if loose:
            raise ValueError(f"{len(loose)} images lie directly in {self.root} (e.g. {loose[0]}), "
                             f"outside a class folder; expected {LAYOUT}")
        found = sorted({n[0] for n in names})
        self.classes = list(classes) if classes is not None else found
        index = {c: i for i, c in enumerate(self.classes)}
        unknown = [c for c in found if c not in index]
        if unknown:
            raise ValueError(f"{self.root} has class folders that are not in the class list: "
                             f"{', '.join(unknown[:5])}")
        self.targets = [index[n[0]] for n in names]

    def keep_fraction(self, fraction: float, seed: int = 0) -> None:
        """Keeps round(fraction * n) (at least 1) images of each class, chosen by a seeded shuffle,
        in their sorted order (so a subset is the same on every process and machine)."""
        if fraction >= 1.0:
            return
        g = torch.Generator().manual_seed(seed_of(SUBSET, seed))
        keep: List[int] = []
        for c in range(len(self.classes)):
            idx = [i for i, t in enumerate(self.targets) if t == c]
            if not idx:
                continue
            k = max(1, int(round(fraction * len(idx))))
            keep += [idx[j] for j in torch.randperm(len(idx), generator=g)[:k].tolist()]
        keep.sort()
        self.samples = [self.samples[i] for i in keep]
        self.targets = [self.targets[i] for i in keep]

    def _item(self, index: int, img: Image.Image) -> Tuple[object, int]:
        return super()._item(index, img), self.targets[index]


def build_splits(root: str, train_transform: Callable, val_transform: Callable,
                 strict: bool = False) -> Tuple[LabelledImageFolder, LabelledImageFolder]:
    """(train, val) of an ImageNet-style root, with the same class list. Raises ConfigError
    (one line) for a missing split, no images, or train/val class sets that differ."""
    root = os.path.abspath(os.path.expanduser(str(root)))
    if not os.path.isdir(root):
        raise ConfigError(f"data.path {root} does not exist or is not a folder; expected {LAYOUT}")
    for split in ("train", "val"):
        if not os.path.isdir(os.path.join(root, split)):
            raise ConfigError(f"data.path {root} has no {split}/ folder; expected {LAYOUT}")
    try:
        train = LabelledImageFolder(os.path.join(root, "train"), train_transform, strict)
        val_classes = sorted({os.path.relpath(p, os.path.join(root, "val")).split(os.sep)[0]
                              for p in LabelledImageFolder(os.path.join(root, "val")).samples})
    except ValueError as e:
        raise ConfigError(f"data.path: {e}") from None
    if val_classes != train.classes:
        only_train = sorted(set(train.classes) - set(val_classes))
        only_val = sorted(set(val_classes) - set(train.classes))
        raise ConfigError(
            f"data.path {root}: train/ and val/ hold different classes (only in train: "
            f"{', '.join(only_train[:5]) or 'none'}; only in val: {', '.join(only_val[:5]) or 'none'}); "
            "give both splits the same class folders")
    val = LabelledImageFolder(os.path.join(root, "val"), val_transform, strict, classes=train.classes)
    return train, val


class SeededLabelledDataset(SeededDataset):
    """SeededDataset for (image, label) items whose augmentation also draws from Python's `random`
    and numpy (timm's RandAugment and RandomResizedCrop do): item (epoch, index) seeds all three
    from (seed, epoch, index), so it is the same whatever the worker, process count or resume."""

    def __getitem__(self, key: Tuple[int, int]):
        epoch, index = key
        s = sample_seed(self.seed, epoch, index)
        py_state, np_state = random.getstate(), np.random.get_state()
        try:
            random.seed(s)
            np.random.seed(s % (2 ** 32))
            with torch.random.fork_rng(devices=[]):
                torch.default_generator.manual_seed(s)  # not the CUDA generators
                return self.dataset[index]
        finally:
            random.setstate(py_state)
            np.random.set_state(np_state)
