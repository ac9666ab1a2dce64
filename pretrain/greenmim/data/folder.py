"""Unlabelled image folders for pretraining.

Accepted layouts (labels, if any, are ignored — MIM needs pixels only):

    root/train/<class>/<img>    ImageNet style: when root/train exists, only it is used
    root/<class>/<img>          class folders
    root/<img>                  flat (e.g. the synthetic dataset's train/ folder)

The scan is recursive, follows symlinked folders (once each), skips hidden entries, and sorts
paths, so sample i is the same file on every machine and in every worker.
"""
from __future__ import annotations

import os
import warnings
from typing import Callable, List, Optional, Set

import numpy as np
from PIL import Image
from torch.utils.data import Dataset

from ..config import UserError

IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
_LAYOUTS = "image files (flat, <class>/<img>, or train/<class>/<img>)"


def find_images(root: str) -> List[str]:
    """Sorted absolute paths of the image files under root (see module docstring).

    Raises:
        ValueError: root is not a folder, or holds no image files.
    """
    root = os.path.abspath(os.path.expanduser(str(root)))
    if not os.path.isdir(root):
        raise ValueError(f"image folder {root} does not exist or is not a folder; "
                         f"expected a folder of {_LAYOUTS}")
    top = os.path.join(root, "train") if os.path.isdir(os.path.join(root, "train")) else root
    paths, seen = [], set()
    for dirpath, dirnames, filenames in os.walk(top, followlinks=True):
        real = os.path.realpath(dirpath)
        if real in seen:  # a symlink loop or a folder linked twice
            dirnames[:] = []
            continue
        seen.add(real)
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        paths += [os.path.join(dirpath, f) for f in filenames
                  if not f.startswith(".") and f.lower().endswith(IMG_EXTENSIONS)]
    if not paths:
        raise ValueError(f"no images ({', '.join(IMG_EXTENSIONS)}) found under {top}; "
                         f"expected {_LAYOUTS}")
    return sorted(paths)


class UnreadableImageError(UserError, ValueError):
    """An image file that cannot be decoded (strict mode, or no readable image at all)."""


UNREADABLE = (OSError, ValueError, SyntaxError, Image.DecompressionBombError)
"""What PIL raises for corrupt, truncated, non-image or oversized (decompression bomb) files."""


def load_rgb(path: str) -> Image.Image:
    """Opens an image as 8-bit RGB, whatever its mode (see to_rgb).

    Raises:
        OSError / ValueError / SyntaxError / Image.DecompressionBombError (UNREADABLE): a
        missing, corrupt, truncated or non-image file, or one above PIL's pixel limit.
    """
    with Image.open(path) as img:
        img.load()  # decode now, inside the caller's error handling, not lazily later
        return to_rgb(img, path)


def to_rgb(img: Image.Image, name: str = "image") -> Image.Image:
    """8-bit RGB from any PIL mode.

    Grayscale, palette, CMYK and YCbCr go through PIL's converters; alpha is dropped (as
    torchvision's loader does); 16/32-bit integer and float images are rescaled to 0..255 rather
    than clipped, which would turn most of a 16-bit image white.
    """
    if img.mode in ("I", "F") or img.mode.startswith("I;"):
        arr = np.asarray(img, dtype=np.float64)
        if not np.isfinite(arr).all():
            raise ValueError(f"non-finite pixel values in {name}")
        # 16-bit data uses the full 0..65535 range; only data in 0..255 is kept as is
        peak = arr.max() if arr.size else 0.0
        if img.mode == "F" and 0.0 <= arr.min() and peak <= 1.0:
            arr = arr * 255.0
        elif peak > 255:
            arr = arr * (255.0 / (65535.0 if peak <= 65535 else peak))
        gray = Image.fromarray(np.clip(np.round(arr), 0, 255).astype(np.uint8), "L")
        return gray.convert("RGB")
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")  # PIL warns when converting such palettes straight to RGB
    return img.convert("RGB")


class ImageFolderDataset(Dataset):
    """Images of a folder, for self-supervised pretraining.

    Args:
        root: folder in one of the layouts of the module docstring.
        transform: callable PIL RGB image -> tensor (e.g. build_pretrain_transform()); None
            returns the PIL image itself.
        strict: if True, an unreadable image raises UnreadableImageError (a ValueError) naming
            it; if False (default) it is skipped with one warning per file and replaced by the
            next readable image (index+1, index+2, ... wrapping around), so the result stays
            deterministic.

    Items are the transformed image alone (e.g. float tensor [3, H, W]); there are no labels.

    `num_skipped` counts the distinct unreadable files met so far IN THIS PROCESS: with
    DataLoader workers each worker has its own copy of the dataset and its own count.

    Raises:
        ValueError: root missing or without images (at construction).
    """

    def __init__(self, root: str, transform: Optional[Callable] = None, strict: bool = False):
        self.root = os.path.abspath(os.path.expanduser(str(root)))
        self.samples = find_images(self.root)
        self.transform = transform
        self.strict = bool(strict)
        self._bad: Set[int] = set()

    @property
    def num_skipped(self) -> int:
        return len(self._bad)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int):
        n = len(self.samples)
        for k in range(n):
            i = (index + k) % n
            if i in self._bad:
                continue
            path = self.samples[i]
            reads_files = getattr(self.transform, "reads_files", False)
            try:
                if reads_files:  # the transform decodes (e.g. at a reduced DCT scale)
                    return self._item(i, path)
                img = load_rgb(path)
            except UNREADABLE as e:
                self.mark_unreadable(i, e)
                continue
            return self._item(i, img)
        raise UnreadableImageError(f"none of the {n} image files under {self.root} could be read; "
                                   "check the folder (data.path)")

    def mark_unreadable(self, index: int, error: BaseException) -> None:
        """Records that file `index` cannot be read (later items skip it) and warns once per file;
        in strict mode raises UnreadableImageError naming it instead. Also called by a reader that
        finds out later, e.g. when decoding on the training device fails (device_decode.py)."""
        path = self.samples[index]
        why = f"{type(error).__name__}: {' '.join(str(error).split())}"
        if self.strict:
            raise UnreadableImageError(
                f"unreadable image {path} ({why}); fix or remove it, or set data.strict=false "
                "to skip unreadable images") from None
        if index not in self._bad:
            self._bad.add(index)
            warnings.warn(f"skipping unreadable image {path} ({why}); skipped so far in this "
                          f"process: {len(self._bad)}")

    def _item(self, index: int, img: Image.Image):
        """The item of readable sample `index` (subclasses add e.g. its label)."""
        return self.transform(img) if self.transform is not None else img

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(root={self.root!r}, num_images={len(self)}, "
                f"strict={self.strict}, transform={self.transform})")
