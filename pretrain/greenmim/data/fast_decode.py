"""RandomResizedCrop that decodes a JPEG at the smallest DCT scale the crop still allows.

A JPEG can be decoded at 1/2, 1/4 or 1/8 of its size for a fraction of the cost (libjpeg scales
in the DCT; PIL exposes it as `Image.draft`). RandomResizedCrop throws most pixels away: the crop
is drawn first, from the file's header size, and the image is then decoded at the largest
reduction that keeps the crop at least as large as the output, so the resize that follows sees
at least as many pixels as it writes (no upsampling that the full decode would not also do).
Other formats decode in full. The crop parameters come from torchvision's own
RandomResizedCrop.get_params with the same RNG draws, so a seeded sample gets the same crop box.
"""
from __future__ import annotations

from typing import Sequence, Tuple

from PIL import Image
from torchvision import transforms as T

from .folder import to_rgb


class DraftRandomResizedCrop:
    """file path -> RGB PIL image [size, size], a random resized crop (bicubic) as T.RandomResizedCrop.

    reads_files: the dataset hands this transform the file path, and decoding happens here.
    """

    reads_files = True

    def __init__(self, size: int, scale: Sequence[float] = (0.2, 1.0),
                 ratio: Sequence[float] = (3 / 4, 4 / 3)):
        self.size, self.scale, self.ratio = int(size), tuple(scale), tuple(ratio)

    def __call__(self, path: str) -> Image.Image:
        with Image.open(path) as img:
            width, height = img.size
            # get_params reads only the size of the (still undecoded) image
            top, left, h, w = T.RandomResizedCrop.get_params(img, list(self.scale), list(self.ratio))
            reduce = 1
            while reduce < 8 and min(h, w) // (2 * reduce) >= self.size:
                reduce *= 2
            if reduce > 1 and img.format == "JPEG":
                img.draft("RGB", (-(-width // reduce), -(-height // reduce)))
            img.load()
            fx, fy = img.size[0] / width, img.size[1] / height
            rgb = to_rgb(img, path)
        box = (left * fx, top * fy, (left + w) * fx, (top + h) * fy)
        return rgb.resize((self.size, self.size), Image.BICUBIC, box=box)


class FileTransform(T.Compose):
    """T.Compose whose first transform reads the file itself (see DraftRandomResizedCrop)."""

    reads_files = True
