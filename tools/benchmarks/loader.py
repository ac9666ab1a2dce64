#!/usr/bin/env python
"""Images per second that the pretraining data loader delivers on its own (no model).

The loader is the one the training engine builds (greenmim.engine.data: seeded dataset, step
batch sampler, RandomResizedCrop + flip + normalise) over an image folder: by default a temporary
folder of JPEGs of ImageNet's typical size (500x375, written once from the synthetic renderer), so
JPEG decoding is paid as on real data; `--data synthetic` renders images in the workers instead. Compare its img/s with a training step's img/s: if the loader is slower, the
accelerator waits for data. The first batches (worker start-up, first renders) are not timed.

    python tools/benchmarks/loader.py --img-size 224 --batch-size 8 --workers 2
    python tools/benchmarks/loader.py --data /datasets/imagenet/train --batch-size 128 --workers 8
"""
from __future__ import annotations

import argparse
import json
import os
import tempfile
import time

import numpy as np
from PIL import Image

from greenmim.config import DEFAULTS
from greenmim.data.synthetic import render_image
from greenmim.engine.data import build_dataset, build_loader


def jpeg_folder(num_images: int = 64, size=(500, 375), root: str = None) -> str:
    """A folder of `num_images` JPEGs (quality 90) of `size` (W, H); reused when it exists."""
    root = root or os.path.join(tempfile.gettempdir(), f"greenmim_bench_jpeg_{num_images}_{size[0]}x{size[1]}")
    os.makedirs(root, exist_ok=True)
    for i in range(num_images):
        path = os.path.join(root, f"{i:05d}.jpg")
        if not os.path.exists(path):
            img = render_image(np.random.default_rng([3, i]), max(size))[0]
            Image.fromarray(img).resize(size).save(path + ".tmp", "JPEG", quality=90)
            os.replace(path + ".tmp", path)
    return root


def loader_images_per_s(img_size: int, batch_size: int, workers: int, batches: int = 20,
                        data: str = "jpeg", num_images: int = 64, skip: int = 2) -> dict:
    """Times `batches` batches after `skip` untimed ones -> {"img_per_s", "batches", ...}.
    data: "jpeg" (temporary JPEG folder), "synthetic" or an image folder."""
    if data == "jpeg":
        data = jpeg_folder(num_images)
    cfg = {"seed": 0, "data": {**DEFAULTS["data"], "path": data, "img_size": img_size,
                               "synthetic_size": max(num_images, batch_size)}}
    loader = build_loader(build_dataset(cfg), batch_size, 1, 0, 1, seed=0, num_workers=workers)
    batches_iter = _endless(loader)
    for _ in range(skip):
        next(batches_iter)
    t0 = time.perf_counter()
    seen = 0
    for _ in range(batches):
        seen += next(batches_iter).shape[0]
    dt = time.perf_counter() - t0
    return {"img_per_s": seen / dt, "batches": batches, "batch_size": batch_size,
            "workers": workers, "img_size": img_size, "data": data}


def _endless(loader):
    """Batches of epoch 0, 1, ... (a small folder holds only a few batches per epoch)."""
    epoch = 0
    while True:
        loader.batch_sampler.set_epoch(epoch)
        yield from loader
        epoch += 1


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--img-size", type=int, default=224)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--batches", type=int, default=20)
    p.add_argument("--data", default="jpeg", help="'jpeg' (temporary JPEG folder), 'synthetic' "
                   "or an image folder")
    args = p.parse_args(argv)
    print(json.dumps(loader_images_per_s(args.img_size, args.batch_size, args.workers,
                                         args.batches, args.data), indent=2))


if __name__ == "__main__":
    main()
