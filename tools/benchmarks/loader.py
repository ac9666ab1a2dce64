#!/usr/bin/env python
"""Images per second that the pretraining data loader delivers on its own (no model).

The loader is the one the training engine builds (greenmim.engine.data: seeded dataset, step
batch sampler, RandomResizedCrop + flip + normalise, `--masks`: masks drawn in the workers) over
an image folder: by default a temporary folder of ImageNet-like JPEGs (500x375, quality 90, about
100 KB each, written once from the synthetic renderer with a photo-like grain), so JPEG decoding
is paid as on real data; `--data synthetic` renders images in the workers instead. Compare its
img/s with a training step's img/s: if the loader is slower, the accelerator waits for data. The
first batches (worker start-up, first renders) are not timed.

`--decode` picks the path as data.decode does: pil / draft decode in the workers; gpu reads bytes
in the workers and decodes whole batches on `--device` (nvJPEG on CUDA). Reported: img/s, the CPU
cores the loader kept busy (main process + workers, from /proc), img/s per busy core, and for the
gpu path the milliseconds per batch spent decoding on the device (CUDA events; wall time on the
CPU).

    python tools/benchmarks/loader.py --img-size 224 --batch-size 8 --workers 2
    python tools/benchmarks/loader.py --decode gpu --device cuda --batch-size 128 --workers 4 --plan swin_base
    python tools/benchmarks/loader.py --make-folder /tmp/imagenet_like --num-images 26000
    python tools/benchmarks/loader.py --stages --data /tmp/imagenet_like --num-images 512
    python tools/benchmarks/loader.py --data /datasets/imagenet/train --batch-size 128 --workers 8
"""
from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import tempfile
import time
from typing import Optional

import numpy as np
from PIL import Image

from greenmim.config import DEFAULTS
from greenmim.engine.data import build_dataset, build_loader

SIZE = (500, 375)


def _grain(rng: np.random.Generator, h: int, w: int, amp: float, channels: int) -> np.ndarray:
    """float [h, w, channels]: noise with a photo-like spectrum (power falling with frequency)."""
    f = np.fft.rfft2(rng.normal(size=(channels, h, w)))
    fy, fx = np.fft.fftfreq(h)[:, None], np.fft.rfftfreq(w)[None]
    f /= np.maximum(np.hypot(fy, fx), 1.0 / max(h, w)) ** 0.8
    x = np.fft.irfft2(f, s=(h, w))
    return (amp * x / x.std()).transpose(1, 2, 0)


def _shapes(rng: np.random.Generator, size) -> Image.Image:
    """A few filled shapes on a colour gradient, drawn with PIL (no OpenCV: GPU machines have none)."""
    from PIL import ImageDraw
    w, h = size
    top, bottom = rng.integers(0, 256, 3), rng.integers(0, 256, 3)
    ramp = np.linspace(0.0, 1.0, h)[:, None, None]
    img = Image.fromarray((top * (1 - ramp) + bottom * ramp).repeat(w, axis=1).astype(np.uint8))
    draw = ImageDraw.Draw(img)
    for _ in range(int(rng.integers(3, 7))):
        x0, y0 = int(rng.integers(0, w // 2 + 1)), int(rng.integers(0, h // 2 + 1))
        box = (x0, y0, x0 + int(rng.integers(w // 8, w // 2 + 2)), y0 + int(rng.integers(h // 8, h // 2 + 2)))
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        (draw.ellipse if rng.random() < 0.5 else draw.rectangle)(box, fill=colour)
    return img


def _write_one(args) -> int:
    """Writes picture i (W, H) as JPEG quality 90 to path; returns its size in bytes."""
    i, size, path = args
    rng = np.random.default_rng([3, i])
    img = _shapes(rng, size)
    # shapes on flat colour compress to ~50 KB; grain brings them to ImageNet's ~100 KB, whose
    # entropy decoding is what a JPEG decoder spends its time on
    w, h = size
    pixels = np.asarray(img, np.float32) + _grain(rng, h, w, 25, 1) + _grain(rng, h, w, 8, 3)
    Image.fromarray(pixels.clip(0, 255).astype(np.uint8)).save(path + ".tmp", "JPEG", quality=90)
    os.replace(path + ".tmp", path)
    return os.path.getsize(path)


def jpeg_folder(num_images: int = 64, size=SIZE, root: Optional[str] = None, unique: int = 1024,
                workers: Optional[int] = None) -> str:
    """A folder of `num_images` ImageNet-like JPEGs (quality 90) of `size` (W, H); files already
    there are kept. Only `unique` pictures are rendered; the other names are hard links to them
    (decoding costs the same, and a folder for 200 steps of batch 128 is written in seconds)."""
    name = f"greenmim_bench_jpeg_{num_images}_{size[0]}x{size[1]}_grain"
    root = root or os.path.join(tempfile.gettempdir(), name)
    os.makedirs(root, exist_ok=True)
    unique = max(1, min(unique, num_images))
    paths = [os.path.join(root, f"{i:06d}.jpg") for i in range(num_images)]
    todo = [(i, tuple(size), paths[i]) for i in range(unique) if not os.path.exists(paths[i])]
    if todo:
        procs = workers or (min(len(todo) // 16, os.cpu_count() or 1) if len(todo) >= 64 else 1)
        if procs > 1:
            with multiprocessing.get_context("spawn").Pool(procs) as pool:
                pool.map(_write_one, todo, chunksize=4)
        else:
            for job in todo:
                _write_one(job)
    for i in range(unique, num_images):
        if not os.path.exists(paths[i]):
            try:
                os.link(paths[i % unique], paths[i])
            except OSError:  # a file system without hard links
                with open(paths[i % unique], "rb") as src, open(paths[i], "wb") as dst:
                    dst.write(src.read())
    return root


def _cpu_seconds(pids) -> float:
    """User + system CPU seconds of the processes `pids` so far (Linux /proc; 0 if unreadable)."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / tick
        except (OSError, IndexError, ValueError):
            pass
    return total


def _children(pid: int):
    """Live child processes of `pid` (the DataLoader's workers)."""
    out = []
    for name in os.listdir("/proc") if os.path.isdir("/proc") else []:
        if name.isdigit():
            try:
                with open(f"/proc/{name}/stat") as f:
                    if int(f.read().rsplit(")", 1)[1].split()[1]) == pid:
                        out.append(int(name))
            except (OSError, IndexError, ValueError):
                pass
    return out


def loader_images_per_s(img_size: int, batch_size: int, workers: int, batches: int = 20,
                        data: str = "jpeg", num_images: int = 64, skip: int = 2, decode: str = "pil",
                        device: str = "cpu", prefetch: Optional[int] = None, masks: bool = False,
                        plan: Optional[str] = None, shared: bool = True) -> dict:
    """Times `batches` batches after `skip` untimed ones -> {"img_per_s", "cores_used",
    "img_per_s_per_core", "decode_ms_per_batch" (gpu path), ...}.
    data: "jpeg" (temporary JPEG folder), "synthetic" or an image folder.
    decode / device: as data.decode and the training device (gpu decodes on `device`).
    masks: masks (mask.ratio 0.75, `shared` as mask.shared) drawn in the workers; plan: an encoder
    arch (e.g. swin_base) whose sparse-path plans the workers also make, as training does."""
    import torch
    if data == "jpeg":
        data = jpeg_folder(num_images)
    cfg = {"seed": 0, "device": device, "data": {**DEFAULTS["data"], "path": data, "img_size": img_size,
                                                 "decode": decode,
                                                 "synthetic_size": max(num_images, batch_size)}}
    dataset = build_dataset(cfg, torch.device(device))
    collate = None
    if masks or plan:
        from greenmim.engine.mask_collate import MaskCollator
        planner = None
        if plan:
            import greenmim
            planner = greenmim.build_encoder(plan, img_size=img_size, static_shapes=True).planner()
        collate = MaskCollator(img_size, 0.75, shared=shared, seed=0, planner=planner)
    loader = build_loader(dataset, batch_size, 1, 0, 1, seed=0, num_workers=workers, collate=collate,
                          pin_memory=torch.device(device).type == "cuda", prefetch=prefetch)
    decoder = getattr(loader, "decoder", None)
    batches_iter = _endless(loader)
    for _ in range(skip):
        next(batches_iter)
    if decoder is not None:
        decoder.timing, decoder.times_ms = True, []
    sync = torch.cuda.synchronize if torch.device(device).type == "cuda" else (lambda: None)
    sync()
    pids = [os.getpid(), *_children(os.getpid())]
    cpu0, t0 = _cpu_seconds(pids), time.perf_counter()
    seen = 0
    for _ in range(batches):
        batch = next(batches_iter)
        seen += (batch[0] if isinstance(batch, (tuple, list)) else batch).shape[0]
    sync()
    dt = time.perf_counter() - t0
    batches_iter.close()  # stops a prefetching thread before the loader is iterated again
    cores = (_cpu_seconds(pids) - cpu0) / dt if os.path.isdir("/proc") else None
    out = {"img_per_s": seen / dt, "cores_used": cores,
           "img_per_s_per_core": seen / dt / cores if cores else None,
           "batches": batches, "batch_size": batch_size, "workers": workers, "img_size": img_size,
           "data": data, "decode": dataset.decode_plan.path, "device": str(device),
           "masks": ("shared" if shared else "per-sample") if (masks or plan) else None, "plan": plan,
           "note": dataset.decode_plan.note}
    if decoder is not None:
        times = decoder.collect_times()
        # with prefetching the first timed decodes may predate the window: use the last ones
        times = times[-batches:]
        out["decode_ms_per_batch"] = float(np.mean(times)) if times else None
        out["decode_ms_timer"] = "cuda events" if decoder.device.type == "cuda" else "wall"
        out["prefetch"] = loader.prefetch
        out["max_mean_abs_diff_vs_cpu_decode"] = _diff_from_cpu_decode(loader)
    return out


def _diff_from_cpu_decode(loader) -> float:
    """Largest per-image mean |difference| (normalised units) between the first batch as the
    device path delivers it (decoder, prefetch thread and streams included) and the same encoded
    batch decoded on the CPU: libjpeg vs nvJPEG differ by a grey level or two (< 0.03); a race
    between streams or a wrong crop shows as 0.3 or more."""
    import torch
    from greenmim.data.device_decode import DeviceDecoder, EncodedBatch
    loader.batch_sampler.set_epoch(0)
    got = next(iter(loader))
    got = (got[0] if isinstance(got, (tuple, list)) else got).float().cpu()
    loader.batch_sampler.set_epoch(0)
    encoded = next(iter(loader.loader))
    encoded = encoded if isinstance(encoded, EncodedBatch) else encoded[0]
    d = loader.decoder
    mean, std = (d.shift / 255).flatten().tolist(), (d.scale / 255).flatten().tolist()
    ref = DeviceDecoder("cpu", d.size, mean, std)(encoded)
    return float((got - ref).abs().flatten(1).mean(1).max())


def stage_costs(data: str, img_size: int = 224, num_images: int = 256, batch_size: int = 32) -> dict:
    """CPU milliseconds per image of each stage, in this process on one thread (process CPU time,
    so other load on the machine barely matters) -> {"pil", "draft", "gpu_worker",
    "gpu_decode_on_cpu": ms per image, "..._img_per_s_per_core": 1000 / ms}.

    pil / draft: a loader worker's whole work per sample on those paths. gpu_worker: a worker's
    work on the gpu path (read the file, parse the header, draw the crop). gpu_decode_on_cpu: the
    main process's batched decode + crop + resize + flip + normalise, run on the CPU here (on a
    GPU node that part runs on the GPU: see decode_ms_per_batch of the gpu mode)."""
    import torch
    from greenmim.data.device_decode import EncodedBatch, EncodeForDevice
    from greenmim.data.device_loader import EncodedView
    from greenmim.engine.data import build_loader as _build_loader
    torch.set_num_threads(1)
    if data == "jpeg":
        data = jpeg_folder(num_images)

    def dataset(decode):
        cfg = {"seed": 0, "device": "cpu", "data": {**DEFAULTS["data"], "path": data, "img_size": img_size,
                                                     "decode": decode}}
        return build_dataset(cfg, torch.device("cpu"))

    keys = [(0, i) for i in range(min(num_images, len(dataset("pil"))))]
    out = {}
    for name, decode in (("pil", "pil"), ("draft", "draft")):
        ds = dataset(decode)
        t = time.process_time()
        for k in keys:
            ds[k]
        out[name] = 1000 * (time.process_time() - t) / len(keys)
    gpu = dataset("gpu")
    view = EncodedView(gpu, EncodeForDevice())
    t = time.process_time()
    items = [view[k] for k in keys]
    out["gpu_worker"] = 1000 * (time.process_time() - t) / len(keys)
    decoder = _build_loader(gpu, batch_size, 1, 0, 1, seed=0, num_workers=0).decoder
    t = time.process_time()
    for b in range(0, len(items) - batch_size + 1, batch_size):
        decoder(EncodedBatch(items[b:b + batch_size]))
    out["gpu_decode_on_cpu"] = 1000 * (time.process_time() - t) / (len(items) // batch_size * batch_size)
    for name in list(out):
        out[name + "_img_per_s_per_core"] = 1000 / out[name]
    out.update(images=len(keys), img_size=img_size, data=data)
    return out


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
    p.add_argument("--num-images", type=int, default=64, help="JPEGs in the generated folder")
    p.add_argument("--decode", default="pil", choices=["pil", "cpu", "draft", "gpu", "auto"],
                   help="as data.decode")
    p.add_argument("--device", default="cpu", help="training device: where the gpu path decodes")
    p.add_argument("--prefetch", type=int, default=None,
                   help="gpu path: batches decoded ahead in a thread (default 2 on CUDA, 0 on the CPU)")
    p.add_argument("--masks", action="store_true", help="draw masks in the workers, as training does")
    p.add_argument("--per-sample-masks", action="store_true", help="with --masks: one mask per sample "
                   "(mask.shared=false)")
    p.add_argument("--plan", metavar="ARCH", help="the workers also plan the sparse path of this "
                   "encoder (e.g. swin_base), as training a green model does; implies --masks")
    p.add_argument("--make-folder", metavar="DIR", help="only write --num-images ImageNet-like JPEGs "
                   "into DIR (files already there are kept) and print its path")
    p.add_argument("--stages", action="store_true", help="only measure the CPU milliseconds per image "
                   "of each stage of each path, on one thread (stage_costs)")
    p.add_argument("--unique", type=int, default=1024, help="pictures rendered for --make-folder; "
                   "the other files are hard links to them")
    args = p.parse_args(argv)
    if args.make_folder:
        root = jpeg_folder(args.num_images, root=args.make_folder, unique=args.unique)
        sizes = [os.path.getsize(os.path.join(root, f)) for f in sorted(os.listdir(root))[:args.unique]]
        print(json.dumps({"folder": root, "images": args.num_images,
                          "mean_kb": round(float(np.mean(sizes)) / 1e3, 1)}))
        return
    if args.stages:
        print(json.dumps(stage_costs(args.data, args.img_size, args.num_images), indent=2))
        return
    print(json.dumps(loader_images_per_s(args.img_size, args.batch_size, args.workers, args.batches,
                                         args.data, args.num_images, decode=args.decode,
                                         device=args.device, prefetch=args.prefetch,
                                         masks=args.masks, plan=args.plan,
                                         shared=not args.per_sample_masks), indent=2))


if __name__ == "__main__":
    main()
