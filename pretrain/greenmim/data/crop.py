"""The RandomResizedCrop + flip draw that every decoding path makes, from the image size alone.

The crop box and the flip are drawn from torch's global RNG, which SeededDataset seeds per sample
(seeds.sample_seed), before any pixel is decoded: the PIL path, the reduced-DCT path
(fast_decode.py) and the device path (device_decode.py, decoding on the training device) all call
draw_crop with the size from the file, so the same sample gets the same box and flip on every
path, and a resumed run draws them again.
"""
from __future__ import annotations

from typing import NamedTuple, Sequence

import torch
from PIL import Image
from torchvision import transforms as T
from torchvision.transforms import functional as F

SCALE = (0.2, 1.0)
RATIO = (3 / 4, 4 / 3)


class CropDraw(NamedTuple):
    """A crop box in pixels of the full image (rows top..top+height, columns left..left+width)
    and whether the crop is mirrored left-right."""
    top: int
    left: int
    height: int
    width: int
    flip: bool


def draw_crop(width: int, height: int, scale: Sequence[float] = SCALE,
              ratio: Sequence[float] = RATIO) -> CropDraw:
    """torchvision's RandomResizedCrop box for a width x height image, then the flip (p = 0.5).

    The draws are torchvision's own (RandomResizedCrop.get_params, then one torch.rand as
    RandomHorizontalFlip makes), in that order, so seeds drawn with the earlier transforms
    give the same boxes and flips.
    """
    # get_params reads only the size: a broadcast view stands in for the undecoded image
    shape_only = torch.empty(1, 1, 1).expand(1, int(height), int(width))
    top, left, h, w = T.RandomResizedCrop.get_params(shape_only, list(scale), list(ratio))
    flip = bool(torch.rand(1) < 0.5)
    return CropDraw(int(top), int(left), int(h), int(w), flip)


class RandomResizedCropFlip:
    """PIL RGB image -> PIL RGB image [size, size]: RandomResizedCrop (bicubic, antialiased) then a
    random horizontal flip, drawn by draw_crop (same pixels as T.RandomResizedCrop followed by
    T.RandomHorizontalFlip under the same seed)."""

    def __init__(self, size: int, scale: Sequence[float] = SCALE, ratio: Sequence[float] = RATIO):
        self.size, self.scale, self.ratio = int(size), tuple(scale), tuple(ratio)

    def __call__(self, img: Image.Image) -> Image.Image:
        d = draw_crop(img.size[0], img.size[1], self.scale, self.ratio)
        out = F.resized_crop(img, d.top, d.left, d.height, d.width, [self.size, self.size],
                             T.InterpolationMode.BICUBIC, antialias=True)
        return F.hflip(out) if d.flip else out

    def __repr__(self) -> str:
        return f"{type(self).__name__}(size={self.size}, scale={self.scale}, ratio={self.ratio})"
