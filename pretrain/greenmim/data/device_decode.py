"""Decoding on the training device: loader workers read files, the device decodes whole batches.

PIL decodes ~70 ImageNet JPEGs per second per core, while a green Swin-B step on one GPU eats
thousands: the CPUs of a GPU node cannot keep up. On this path (data.decode=gpu):
  * a loader worker reads the file's bytes and its header only, and draws the crop box and flip
    from the header's size with crop.draw_crop under the sample's seed, exactly as the CPU paths
    do, so every path gives a sample the same box and flip (and a resumed run the same ones);
  * the main process decodes the batch with torchvision.io.decode_jpeg(list, device=...) (nvJPEG
    on CUDA, libjpeg on the CPU), then crops, resizes (bilinear, antialiased), flips and
    normalises on that device.
Files that are not baseline RGB/grey JPEGs (PNG, CMYK JPEG, ...) are decoded by PIL in the worker
(they are rare in photo datasets, and refusing them would break folders the CPU path reads) and
travel as the crop's pixels; the resize, flip and normalisation still happen on the device.
Unreadable files are skipped and counted (or refused with data.strict=true) as on the CPU path:
a bad header or truncated JPEG in the worker, a decode that fails on the device in the main
process (the image is then decoded by PIL on the CPU; only if that fails too is it skipped).
"""
from __future__ import annotations

import io
import time
import warnings
import dataclasses
from dataclasses import dataclass
from typing import Callable, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as Fn
from PIL import Image

from .crop import RATIO, SCALE, CropDraw, draw_crop
from .folder import UNREADABLE, to_rgb


@dataclass
class EncodedImage:
    """One sample as a worker hands it over.

    data: uint8 [n_bytes], the JPEG file (None when `pixels` is given).
    pixels: uint8 [3, h, w], the crop already decoded by PIL (files the device does not decode).
    crop: box and flip in the coordinates of the image that `data` decodes to, or of `pixels`.
    path: the file (for messages and for skipping it if it cannot be decoded).
    key: (epoch, index) of the sample (set by EncodedView; needed to draw a replacement).
    """
    data: Optional[torch.Tensor]
    pixels: Optional[torch.Tensor]
    crop: CropDraw
    path: str
    key: Optional[Tuple[int, int]] = None


class EncodedBatch:
    """The EncodedImage items of a batch: what the loader yields before the device decodes it.

    The JPEG bytes of all items travel as ONE uint8 tensor `blob` [total_bytes] (items hold views
    into it once unpacked): a worker hands a batch over through one shared-memory segment
    instead of one per image, which would cost a file descriptor each (thousands in flight).
    """

    def __init__(self, items: Sequence[EncodedImage]):
        self.lengths = [0 if it.data is None else int(it.data.numel()) for it in items]
        chunks = [it.data for it in items if it.data is not None]
        self.blob = torch.cat(chunks) if chunks else torch.empty(0, dtype=torch.uint8)
        self.meta = [dataclasses.replace(it, data=None) for it in items]

    @property
    def items(self) -> List[EncodedImage]:
        out, start = [], 0
        for meta, n in zip(self.meta, self.lengths):
            out.append(dataclasses.replace(meta, data=self.blob[start:start + n] if n else None))
            start += n
        return out

    def __len__(self) -> int:
        return len(self.meta)

    def __iter__(self):
        return iter(self.items)

    def pin_memory(self) -> "EncodedBatch":
        # page-locked bytes let the device copy them asynchronously (the loader's pin thread)
        self.blob = self.blob.pin_memory()
        return self


def stack_images(items: list):
    """collate of images: float tensors -> [B, 3, H, W]; EncodedImage -> EncodedBatch."""
    if items and isinstance(items[0], EncodedImage):
        return EncodedBatch(items)
    return torch.stack(items)


def jpeg_is_complete(data: bytes) -> bool:
    """True when the last scan (SOS marker FFDA) is followed by an end-of-image marker (FFD9).

    A truncated download loses its end; PIL refuses such files, while some decoders fill the
    missing rows with grey, so the check makes every path skip them alike. Scan data stuffs each
    0xFF byte, so neither marker appears inside it; markers in an EXIF thumbnail come earlier.
    """
    sos = data.rfind(b"\xff\xda")
    return sos >= 0 and data.rfind(b"\xff\xd9") > sos


class EncodeForDevice:
    """file path -> EncodedImage: the worker's half of the device path (see module docstring).

    reads_files: ImageFolderDataset hands over the path and treats UNREADABLE exceptions raised
    here as unreadable files (skipped, or refused in strict mode).
    """

    reads_files = True

    def __init__(self, scale: Sequence[float] = SCALE, ratio: Sequence[float] = RATIO):
        self.scale, self.ratio = tuple(scale), tuple(ratio)

    def __call__(self, path: str) -> EncodedImage:
        with open(path, "rb") as f:
            raw = f.read()
        # every check comes before the draw: a file that fails must not consume the sample's RNG,
        # so its replacement gets the draw the CPU path gives it
        with Image.open(io.BytesIO(raw)) as img:
            width, height = img.size
            if img.format == "JPEG" and img.mode in ("RGB", "L"):
                if not jpeg_is_complete(raw):
                    raise OSError("JPEG data ends before its end-of-image marker (truncated file)")
                crop = draw_crop(width, height, self.scale, self.ratio)
                return EncodedImage(torch.frombuffer(bytearray(raw), dtype=torch.uint8), None, crop, path)
            img.load()
            rgb = to_rgb(img, path)
        d = draw_crop(width, height, self.scale, self.ratio)
        region = rgb.crop((d.left, d.top, d.left + d.width, d.top + d.height))
        pixels = torch.from_numpy(np.array(region, dtype=np.uint8)).permute(2, 0, 1).contiguous()
        return EncodedImage(None, pixels, d._replace(top=0, left=0), path)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(scale={self.scale}, ratio={self.ratio})"


def decode_on_cpu(item: EncodedImage) -> torch.Tensor:
    """uint8 [3, H, W]: the item's JPEG decoded by PIL (the CPU path's decoder).
    Raises UNREADABLE exceptions for files PIL cannot decode either."""
    with Image.open(io.BytesIO(item.data.numpy().tobytes())) as img:
        img.load()
        rgb = to_rgb(img, item.path)
    return torch.from_numpy(np.array(rgb, dtype=np.uint8)).permute(2, 0, 1)


class DeviceDecoder:
    """EncodedBatch -> float [B, 3, size, size] on `device`, normalised: the main process's half.

    Args:
        device: where to decode and transform (CUDA: nvJPEG; the CPU works too, e.g. for tests).
        size: output side in px.
        mean, std: per-channel normalisation of images in [0, 1].
        replace: called as replace(item, error) for an item no decoder can read; returns the
            EncodedImage to use instead (strict mode: raises). None: the error propagates.
    Counters: `cpu_fallbacks` (images the device failed on and PIL decoded) and, with
    `timing=True`, `times_ms` (per batch: CUDA-event milliseconds on CUDA, wall time otherwise).
    """

    def __init__(self, device, size: int, mean: Sequence[float], std: Sequence[float],
                 replace: Optional[Callable[[EncodedImage, BaseException], EncodedImage]] = None):
        self.device, self.size, self.replace = torch.device(device), int(size), replace
        self.scale = (255.0 * torch.tensor(std, dtype=torch.float32)).view(1, 3, 1, 1).to(self.device)
        self.shift = (255.0 * torch.tensor(mean, dtype=torch.float32)).view(1, 3, 1, 1).to(self.device)
        self.cpu_fallbacks = 0
        self.timing, self.times_ms, self._pending = False, [], []

    def __call__(self, batch: Sequence[EncodedImage]) -> torch.Tensor:
        cuda = self.device.type == "cuda"
        timing = self.timing  # read once: a prefetching thread may be mid-call when it is switched
        if timing:
            if cuda:
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
            else:
                t0 = time.perf_counter()
        items = list(batch)  # a copy: replaced samples change it
        images = self._decode(items)
        out = torch.empty(len(items), 3, self.size, self.size, device=self.device)
        for k, (item, img) in enumerate(zip(items, images)):
            d = item.crop
            region = img[None, :, d.top:d.top + d.height, d.left:d.left + d.width].float()
            resized = Fn.interpolate(region, size=(self.size, self.size), mode="bilinear",
                                     align_corners=False, antialias=True)
            out[k] = resized[0].flip(-1) if d.flip else resized[0]
        out = out.sub_(self.shift).div_(self.scale)
        if timing:
            if cuda:
                end.record()
                self._pending.append((start, end))
            else:
                self.times_ms.append(1000 * (time.perf_counter() - t0))
        return out

    def collect_times(self) -> List[float]:
        """times_ms after waiting for the recorded CUDA events (no-op on the CPU)."""
        for start, end in self._pending:
            end.synchronize()
            self.times_ms.append(start.elapsed_time(end))
        self._pending = []
        return self.times_ms

    def _decode(self, items: List[EncodedImage]) -> List[torch.Tensor]:
        """uint8 [3, H_k, W_k] on the device per item (the replaced items' crops updated in place)."""
        from torchvision.io import ImageReadMode, decode_jpeg
        out: List[Optional[torch.Tensor]] = [None] * len(items)
        jpegs = [k for k, it in enumerate(items) if it.data is not None]
        if jpegs:
            try:  # one batched call: nvJPEG decodes the whole batch at once
                self._drain()
                for k, img in zip(jpegs, decode_jpeg([items[k].data for k in jpegs],
                                                     mode=ImageReadMode.RGB, device=self.device)):
                    out[k] = img
            except RuntimeError:  # one bad image fails the batch: find it, decode the rest
                for k in jpegs:
                    try:
                        self._drain()
                        out[k] = decode_jpeg(items[k].data, mode=ImageReadMode.RGB, device=self.device)
                    except RuntimeError as e:
                        out[k] = self._on_cpu(items, k, e)
        for k, it in enumerate(items):
            if it.pixels is not None:
                out[k] = it.pixels.to(self.device, non_blocking=True)
        return out

    def _drain(self) -> None:
        """Waits for the work queued on this thread's stream. torchvision's CUDA decode allocates
        its outputs on the current stream but writes them from nvJPEG's own stream, which does not
        wait for that queue: memory the previous batch's crops still read could be overwritten."""
        if self.device.type == "cuda":
            torch.cuda.current_stream(self.device).synchronize()

    def _on_cpu(self, items: List[EncodedImage], k: int, error: BaseException) -> torch.Tensor:
        """Item k decoded by PIL after the device failed on it; replaced if PIL fails too."""
        item = items[k]
        try:
            img = decode_on_cpu(item)
        except UNREADABLE as e:
            if self.replace is None:
                raise
            return self._replacement(items, k, e)
        self.cpu_fallbacks += 1
        why = " ".join(str(error).split())[:200]
        warnings.warn(f"decoding {item.path} on {self.device} failed ({why}); decoded it on the CPU "
                      f"instead; CPU fallbacks so far in this process: {self.cpu_fallbacks}")
        return img.to(self.device)

    def _replacement(self, items: List[EncodedImage], k: int, error: BaseException) -> torch.Tensor:
        """The sample that the CPU path would give in item k's place (self.replace skips the
        file, or refuses it in strict mode), decoded by PIL; items[k] becomes that sample."""
        while True:
            items[k] = self.replace(items[k], error)
            if items[k].pixels is not None:
                return items[k].pixels.to(self.device)
            try:
                return decode_on_cpu(items[k]).to(self.device)
            except UNREADABLE as e:
                error = e
