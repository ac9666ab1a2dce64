"""RandomResizedCrop that decodes a JPEG at the smallest DCT scale the crop still allows.

A JPEG can be decoded at 1/2, 1/4 or 1/8 of its size for a fraction of the cost (libjpeg scales
in the DCT; PIL exposes it as `Image.draft`). RandomResizedCrop throws most pixels away: the crop
is drawn first, from the file's header size, and the image is then decoded at the largest
reduction that keeps the crop at least as large as the output, so the resize that follows sees
at least as many pixels as it writes (no upsampling that the full decode would not also do).
Other formats decode in full. The crop box and the flip come from crop.draw_crop, as on every
other path, so a seeded sample gets the same box and flip.
"""
from __future__ import annotations

from typing import Sequence

import torch
from PIL import Image
from torchvision import transforms as T

from .crop import RATIO, SCALE, draw_crop
from .folder import UNREADABLE, to_rgb


class DraftRandomResizedCrop:
    """file path -> RGB PIL image [size, size]: a random resized crop (bicubic) and a random
    horizontal flip, drawn by crop.draw_crop.

    reads_files: the dataset hands this transform the file path, and decoding happens here.
    """

    reads_files = True

    def __init__(self, size: int, scale: Sequence[float] = SCALE, ratio: Sequence[float] = RATIO):
        self.size, self.scale, self.ratio = int(size), tuple(scale), tuple(ratio)

    def __call__(self, path: str) -> Image.Image:
        with Image.open(path) as img:
            width, height = img.size
            rng = torch.get_rng_state()
            top, left, h, w, flip = draw_crop(width, height, self.scale, self.ratio)  # header size only
            reduce = 1
            while reduce < 8 and min(h, w) // (2 * reduce) >= self.size:
                reduce *= 2
            if reduce > 1 and img.format == "JPEG":
                img.draft("RGB", (-(-width // reduce), -(-height // reduce)))
            try:
                img.load()
                rgb = to_rgb(img, path)
            except UNREADABLE:
                # undo the draw: the file that replaces this one gets the draw the PIL path gives it
                torch.set_rng_state(rng)
                raise
            fx, fy = img.size[0] / width, img.size[1] / height
        box = (left * fx, top * fy, (left + w) * fx, (top + h) * fy)
        out = rgb.resize((self.size, self.size), Image.BICUBIC, box=box)
        return out.transpose(Image.Transpose.FLIP_LEFT_RIGHT) if flip else out


class FileTransform(T.Compose):
    """T.Compose whose first transform reads the file itself (see DraftRandomResizedCrop)."""

    reads_files = True
