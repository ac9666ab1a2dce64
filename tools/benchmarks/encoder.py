#!/usr/bin/env python
"""Forward+backward time and peak memory of the green (sparse) path against the dense path of the
same encoder, side by side in one run.

Timing alternates the two variants in one process and reports medians, so the ratio holds on a
noisy machine. Peak memory is what a training step adds on top of a warmed-up process (model,
gradients, inputs and libraries resident), see memory.py beside this file; on CPU each variant runs in
its own subprocess.

    python tools/benchmarks/encoder.py --arch swin_base --img-size 224 --batch-size 8 \
        --mask-ratio 0.75 --json out.json
"""
from __future__ import annotations

import argparse
import os
import sys

import torch
from memory import run_in_subprocess, step_peak_mb
from setting import add_setting_args, build_encoder, build_inputs, print_result, setting_argv, setting_result
from timing import interleave


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_setting_args(p, ("dense", "green"))
    p.add_argument("--amp", action="store_true", help="bf16 autocast (CUDA)")
    p.add_argument("--attn-mode", default="auto", choices=["auto", "group", "ragged"])
    return p.parse_args(argv)


def build(args):
    device = torch.device(args.device)
    enc = build_encoder(args, attn_mode=args.attn_mode).to(device)
    if args.compile:
        enc = torch.compile(enc, backend=args.compile)
    images, masks = build_inputs(args, device)
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
    """Median seconds of dense and green steps, alternated (timing.interleave).
    The green step draws a fresh mask every time, so its planning is timed too."""
    steps = {"dense": lambda: step(enc, images, None, args.amp),
             "green": lambda: step(enc, images, masks(args.batch_size), args.amp)}
    t = interleave(steps, args.iters, args.warmup, images.device)
    return {k: v["s"] for k, v in t.items()}


def peak_memory_mb(args, variant: str) -> float:
    """Peak memory of one variant's step in MB (subprocess on CPU, allocator stats on CUDA)."""
    if args.device.startswith("cuda"):
        return memory_child(args, variant)
    cmd = [sys.executable, os.path.abspath(__file__), "--memory-only", variant, *setting_argv(args),
           "--device", "cpu", "--attn-mode", args.attn_mode]
    if args.amp:
        cmd.append("--amp")
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
    print_result({
        **setting_result(args), "amp": args.amp, "attn_mode": args.attn_mode,
        "dense_s": times["dense"], "green_s": times["green"],
        "speedup": times["dense"] / times["green"],
        "dense_peak_mb": dense_mb, "green_peak_mb": green_mb,
        "mem_reduction": 1.0 - green_mb / dense_mb,
    }, args.json)


if __name__ == "__main__":
    main()
