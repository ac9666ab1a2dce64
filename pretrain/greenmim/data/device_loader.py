"""Choosing the decoding path (data.decode) and the loader that decodes batches on the device.

    pil (= cpu)  PIL decodes in the loader workers (the default; no GPU needed)
    draft        as pil, JPEGs decoded at the smallest DCT scale the crop allows (fast_decode.py)
    gpu          workers read bytes, the training device decodes whole batches (device_decode.py)
    auto         gpu when the device is CUDA and torchvision decodes JPEGs there, else pil
    dali         refused: no DALI pipeline is built (gpu is torchvision's nvJPEG path)
"""
from __future__ import annotations

import contextlib
import copy
import functools
import io
import queue
import threading
from dataclasses import dataclass
from typing import Optional, Sequence, Tuple

import torch
from torch.utils.data import Dataset

from ..config import DALI_REFUSAL, ConfigError
from .device_decode import DeviceDecoder, EncodedBatch, EncodedImage, EncodeForDevice
from .seeds import SeededDataset

DECODE_VALUES = ("pil", "cpu", "draft", "gpu", "auto", "dali")


@dataclass(frozen=True)
class DecodePlan:
    """The resolved decoding path: "pil", "draft" or "gpu", the device a gpu path decodes on,
    and the line the run logs first."""
    path: str
    device: torch.device
    note: str


@functools.lru_cache(maxsize=None)
def device_decode_error(device: str) -> Optional[str]:
    """None when torchvision decodes a JPEG on `device`, else why not (one line)."""
    from torchvision.io import decode_jpeg
    from PIL import Image
    buf = io.BytesIO()
    Image.new("RGB", (16, 16), (200, 30, 90)).save(buf, "JPEG")
    try:
        img = decode_jpeg(torch.frombuffer(bytearray(buf.getvalue()), dtype=torch.uint8), device=device)
        if tuple(img.shape) != (3, 16, 16):
            return f"decode_jpeg returned shape {tuple(img.shape)}"
    except (RuntimeError, ValueError, NotImplementedError) as e:
        return " ".join(str(e).split())[:200]
    return None


def resolve_decode(decode: str, device: torch.device) -> DecodePlan:
    """data.decode -> DecodePlan for a run on `device`. Raises ConfigError (one line) for an
    unknown value, for dali, and for gpu on a CUDA device where torchvision cannot decode."""
    device = torch.device(device)
    if decode not in DECODE_VALUES:
        raise ConfigError(f"data.decode must be one of {', '.join(DECODE_VALUES)}, got {decode!r}")
    if decode == "dali":
        raise ConfigError(DALI_REFUSAL)
    if decode == "auto":
        usable = device.type == "cuda" and device_decode_error(str(device)) is None
        decode = "gpu" if usable else "pil"
        why = "data.decode=auto: " + ("torchvision decodes JPEGs on this CUDA device" if usable
                                      else "no CUDA JPEG decoder here")
    else:
        why = f"data.decode={decode}"
    if decode == "gpu":
        if device.type == "cuda":
            err = device_decode_error(str(device))
            if err is not None:
                raise ConfigError(f"data.decode=gpu: torchvision cannot decode JPEGs on {device} ({err}); "
                                  "use data.decode=auto or pil")
            how = "nvJPEG"
        else:
            how = "libjpeg in the main process; pil or draft use the workers and are faster here"
        return DecodePlan("gpu", device, f"data: JPEG batches decoded on {device} ({how}), files read "
                                         f"and crops drawn in the loader workers ({why})")
    if decode == "draft":
        return DecodePlan("draft", device, f"data: JPEGs decoded by PIL at reduced DCT scale in the "
                                           f"loader workers ({why})")
    return DecodePlan("pil", device, f"data: images decoded by PIL in the loader workers ({why})")


class EncodedView(Dataset):
    """dataset[(epoch, index)] -> EncodedImage (with its key), for a SeededDataset over an
    ImageFolderDataset: the same files, skip rule and seeds, with EncodeForDevice as transform.

    The folder is copied shallowly, so in one process both share the record of unreadable files.
    """

    def __init__(self, seeded: SeededDataset, encode: EncodeForDevice):
        folder = copy.copy(seeded.dataset)
        folder.transform = encode
        self.seeded = SeededDataset(folder, seeded.seed)

    def __len__(self) -> int:
        return len(self.seeded)

    def __getitem__(self, key: Tuple[int, int]) -> EncodedImage:
        item = self.seeded[key]
        item.key = (int(key[0]), int(key[1]))
        return item

    def replace(self, item: EncodedImage, error: BaseException) -> EncodedImage:
        """The item that replaces `item` once its file proved unreadable in this process (the
        next readable file, drawn under the sample's seed); strict mode raises instead."""
        folder = self.seeded.dataset
        folder.mark_unreadable(folder.samples.index(item.path), error)
        return self[item.key]


_END = object()


class DeviceDecodingLoader:
    """Iterates a DataLoader of EncodedBatch (alone, or first in a tuple such as (batch, mask,
    plans)) and yields the same with the batch decoded: float [B, 3, size, size] on the device.

    prefetch > 0: a thread decodes up to `prefetch` batches ahead (on CUDA on a side stream), so
    decoding overlaps the training step; 0 decodes in the caller's thread.
    """

    def __init__(self, loader, decoder: DeviceDecoder, prefetch: int = 0):
        self.loader, self.decoder, self.prefetch = loader, decoder, int(prefetch)

    @property
    def batch_sampler(self):
        return self.loader.batch_sampler

    @property
    def dataset(self):
        return self.loader.dataset

    def __len__(self) -> int:
        return len(self.loader)

    def _decode(self, batch):
        if isinstance(batch, EncodedBatch):
            return self.decoder(batch)
        images, *rest = batch
        return (self.decoder(images), *rest)

    def __iter__(self):
        if self.prefetch <= 0:
            for batch in self.loader:
                yield self._decode(batch)
            return
        yield from self._prefetched()

    def _prefetched(self):
        device = self.decoder.device
        cuda = device.type == "cuda"
        stream = torch.cuda.Stream(device) if cuda else None
        ready: "queue.Queue" = queue.Queue(maxsize=self.prefetch)
        stop = threading.Event()

        def put(item) -> bool:
            while not stop.is_set():
                try:
                    ready.put(item, timeout=0.1)
                    return True
                except queue.Full:
                    continue
            return False

        def work():
            try:
                with (torch.cuda.device(device) if cuda else contextlib.nullcontext()), \
                        (torch.cuda.stream(stream) if cuda else contextlib.nullcontext()):
                    for batch in self.loader:
                        out = self._decode(batch)
                        done = torch.cuda.Event() if cuda else None
                        if cuda:
                            done.record(stream)
                        if not put((out, done)):
                            return
                put(_END)
            except BaseException as e:  # noqa: BLE001 - handed to the consumer, raised there
                put(e)

        thread = threading.Thread(target=work, name="greenmim-device-decode", daemon=True)
        thread.start()
        try:
            while True:
                item = ready.get()
                if item is _END:
                    return
                if isinstance(item, BaseException):
                    raise item
                out, done = item
                if cuda:
                    current = torch.cuda.current_stream(device)
                    current.wait_event(done)
                    # memory made on the side stream is now used on this one: tell the allocator
                    for t in _tensors(out):
                        t.record_stream(current)
                yield out
        finally:
            stop.set()
            thread.join()


def _tensors(out) -> Sequence[torch.Tensor]:
    items = out if isinstance(out, tuple) else (out,)
    return [t for t in items if isinstance(t, torch.Tensor) and t.is_cuda]
