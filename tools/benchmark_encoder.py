#!/usr/bin/env python
"""Forward+backward time and peak memory of the green (sparse) path against the dense path of the
same encoder, side by side in one run.

Timing alternates the two variants in one process and reports medians, so the ratio holds on a
noisy machine. Peak memory is what a training step adds on top of a warmed-up process (model,
gradients, inputs and libraries resident), see tools/step_memory.py; on CPU each variant runs in
its own subprocess.

    python tools/benchmark_encoder.py --arch swin_base --img-size 224 --batch-size 8 \
        --mask-ratio 0.75 --json out.json
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys

import torch

import greenmim
from benchmark_timing import interleave, sync  # noqa: F401  (sync: used by callers of step)
from step_memory import run_in_subprocess, step_peak_mb
from greenmim.data.masking import MaskGenerator


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arch", default="swin_base")
    p.add_argument("--img-size", type=int, default=224)
    p.add_argument("--window-size", type=int, default=7)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--mask-ratio", type=float, default=0.75)
    p.add_argument("--per-sample-mask", action="store_true", help="independent mask per sample")
    p.add_argument("--iters", type=int, default=5, help="timed iterations per variant")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--amp", action="store_true", help="bf16 autocast (CUDA)")
    p.add_argument("--attn-mode", default="auto", choices=["auto", "group", "ragged"])
    p.add_argument("--encoder-kwargs", default="{}", help="extra build_encoder overrides as JSON "
                   "(e.g. '{\"embed_dim\": 32, \"depths\": [1,1,1,1]}' for a quick check)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    p.add_argument("--compile", nargs="?", const="inductor", default=None, metavar="BACKEND",
                   help="torch.compile the encoder (backend: inductor, or e.g. eager to check tracing only)")
    p.add_argument("--json", default=None, help="write the results here")
    p.add_argument("--memory-only", choices=["dense", "green"], help=argparse.SUPPRESS)
    return p.parse_args(argv)


def build(args):
    device = torch.device(args.device)
    overrides = dict(img_size=args.img_size, attn_mode=args.attn_mode, **json.loads(args.encoder_kwargs))
    if args.arch.startswith("swin"):
        overrides.setdefault("window_size", args.window_size)
    enc = greenmim.build_encoder(args.arch, **overrides).to(device)
    if args.compile:
        enc = torch.compile(enc, backend=args.compile)
    images = torch.randn(args.batch_size, 3, args.img_size, args.img_size, device=device)
    masks = MaskGenerator(args.img_size, args.mask_ratio, shared=not args.per_sample_mask, seed=0)
    return enc, images, masks


def step(enc, images, mask, amp: bool):
    """One forward + backward; loss = sum of stage means, so every stage gets a gradient.
    Gradients are freed afterwards (set_to_none, as the engine does): zeroing them in place
    would add one kernel per parameter to both variants."""
    with torch.autocast(images.device.type, dtype=torch.bfloat16, enabled=amp):
        outs = enc(images) if mask is None else enc(images, mask)
        loss = sum(o.float().mean() for o in outs)
    loss.backward()
    enc.zero_grad(set_to_none=True)


def time_both(args, enc, images, masks):
    """Median seconds of dense and green steps, alternated (benchmark_timing.interleave).
    The green step draws a fresh mask every time, so its planning is timed too."""
    steps = {"dense": lambda: step(enc, images, None, args.amp),
             "green": lambda: step(enc, images, masks(args.batch_size), args.amp)}
    t = interleave(steps, args.iters, args.warmup, images.device)
    return {k: v["s"] for k, v in t.items()}


def peak_memory_mb(args, variant: str) -> float:
    """Peak memory of one variant's step in MB (subprocess on CPU, allocator stats on CUDA)."""
    if args.device.startswith("cuda"):
        return memory_child(args, variant)
    cmd = [sys.executable, os.path.abspath(__file__), "--memory-only", variant,
           "--arch", args.arch, "--img-size", str(args.img_size), "--window-size", str(args.window_size),
           "--batch-size", str(args.batch_size), "--mask-ratio", str(args.mask_ratio), "--device", "cpu",
           "--attn-mode", args.attn_mode, "--encoder-kwargs", args.encoder_kwargs]
    if args.threads:
        cmd += ["--threads", str(args.threads)]
    if args.compile:
        cmd += ["--compile", args.compile]
    if args.amp:
        cmd.append("--amp")
    if args.per_sample_mask:
        cmd.append("--per-sample-mask")
    return run_in_subprocess(cmd)


def memory_child(args, variant: str) -> float:
    enc, images, masks = build(args)
    mask = None if variant == "dense" else masks(args.batch_size)
    return step_peak_mb(lambda: step(enc, images, mask, args.amp), images.device)


def main(argv=None):
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.memory_only:
        return print(memory_child(args, args.memory_only))
    torch.manual_seed(0)
    enc, images, masks = build(args)
    times = time_both(args, enc, images, masks)
    del enc, images
    dense_mb, green_mb = peak_memory_mb(args, "dense"), peak_memory_mb(args, "green")
    result = {
        "arch": args.arch, "img_size": args.img_size, "window_size": args.window_size,
        "batch_size": args.batch_size, "mask_ratio": args.mask_ratio,
        "per_sample_mask": args.per_sample_mask, "device": args.device,
        "device_name": torch.cuda.get_device_name() if args.device.startswith("cuda") else platform.processor() or platform.machine(),
        "threads": torch.get_num_threads(), "amp": args.amp, "attn_mode": args.attn_mode,
        "dense_s": times["dense"], "green_s": times["green"],
        "speedup": times["dense"] / times["green"],
        "dense_peak_mb": dense_mb, "green_peak_mb": green_mb,
        "mem_reduction": 1.0 - green_mb / dense_mb,
    }
    print(json.dumps(result, indent=2))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()
