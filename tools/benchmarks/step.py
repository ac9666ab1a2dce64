#!/usr/bin/env python
"""One full pretraining step of GreenMIM against the dense SimMIM baseline, side by side.

    python tools/benchmarks/step.py --arch swin_base --img-size 224 --batch-size 8 --json out.json
    python tools/benchmarks/step.py --arch swin_base --batch-size 128 --json gpu.json   # on a GPU

A step is forward + loss + backward + AdamW update (+ zero_grad) of the whole MIM model: green =
green encoder on the visible units + one-block decoder; dense = the same encoder on every token with
a mask token + linear pixel head (SimMIM). Both get the same images and masks.

Timing alternates the two variants in one process and reports medians (robust on a noisy machine):
`*_s` the whole step, `*_fwdbwd_s` forward + loss + backward alone.

Peak memory, per variant, the method of memory.py (shared with encoder.py): on CUDA
torch.cuda.max_memory_allocated during a step minus the memory allocated before it; on the CPU
each variant runs in its own subprocess and reports its peak RSS during a step minus its RSS
before it. The subprocess runs one step first, so model, gradient buffers (kept and zeroed in
place, as encoder.py does), optimiser state, inputs and libraries are all in the baseline
and only what the step's computation needs is counted. (On Linux the peak is
reset with /proc/self/clear_refs and glibc's mmap threshold is pinned, so that memory freed by
the first step is returned to the system and not hidden in the baseline.)

JSON keys: dense_s, green_s, speedup, dense_fwdbwd_s, green_fwdbwd_s, fwdbwd_speedup,
dense_peak_mb, green_peak_mb, mem_reduction (1 - green/dense), plus the setting.
AMP (bf16 autocast) is on by default on CUDA (--no-amp to disable); the CPU runs fp32.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

import torch
from memory import run_in_subprocess, step_peak_mb
from setting import add_setting_args, build_encoder, build_inputs, print_result, setting_argv, setting_result
from timing import interleave, sync

from greenmim.engine.optim import build_optimizer
from greenmim.models.mim import GreenMIM
from greenmim.models.simmim import SimMIM

VARIANTS = ("dense", "green")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_setting_args(p, VARIANTS)
    p.add_argument("--decoder-dim", type=int, default=512)
    p.add_argument("--decoder-depth", type=int, default=1)
    p.add_argument("--decoder-heads", type=int, default=16)
    p.add_argument("--no-amp", action="store_true", help="fp32 on CUDA too")
    return p.parse_args(argv)


def amp_enabled(args) -> bool:
    return args.device.startswith("cuda") and not args.no_amp


def build(args, variant: str):
    """Model, AdamW (paper's groups), images, mask generator of one variant, all seeded."""
    device = torch.device(args.device)
    torch.manual_seed(0)
    enc = build_encoder(args)
    if variant == "green":
        model = GreenMIM(enc, img_size=args.img_size, decoder_dim=args.decoder_dim,
                         decoder_depth=args.decoder_depth, decoder_num_heads=args.decoder_heads)
    else:
        model = SimMIM(enc)
    model.to(device)
    opt = build_optimizer(model, lr=1e-4, weight_decay=0.05, betas=(0.9, 0.95))
    if args.compile:
        model = torch.compile(model, backend=args.compile)  # the optimiser holds the same parameters
    images, masks = build_inputs(args, device)
    return model, opt, images, masks


def train_step(model, opt, images, mask, amp: bool, keep_grads: bool = False):
    """Returns (seconds for forward+loss+backward, seconds for the whole step). Gradients are
    freed after the update (as the engine does) unless keep_grads, which zeroes them in place."""
    device = images.device
    sync(device)
    t0 = time.perf_counter()
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
        loss = model(images, mask)["loss"]
    loss.backward()
    sync(device)
    t1 = time.perf_counter()
    opt.step()
    opt.zero_grad(set_to_none=not keep_grads)
    sync(device)
    return t1 - t0, time.perf_counter() - t0


def time_both(args):
    """Medians of whole steps (`*_s`) and of forward+loss+backward (`*_fwdbwd_s`), the two
    variants alternated (timing.interleave) on the same images and masks."""
    built = {v: build(args, v) for v in VARIANTS}
    current = {}

    def runner(v):
        def run():
            model, opt, images, masks = built[v]
            if v == VARIANTS[0]:  # a fresh mask each round, shared by both variants (on the CPU)
                current["mask"] = masks(args.batch_size)
            fb, total = train_step(model, opt, images, current["mask"], amp_enabled(args))
            return {"fwdbwd_s": fb, "step_s": total}
        return run

    device = torch.device(args.device)
    t = interleave({v: runner(v) for v in VARIANTS}, args.iters, args.warmup, device)
    return {f"{v}_{k}": t[v][src] for v in VARIANTS for k, src in (("s", "step_s"), ("fwdbwd_s", "fwdbwd_s"))}


# ---- memory ----------------------------------------------------------------------------------------

def memory_child(args) -> None:
    model, opt, images, masks = build(args, args.memory_only)
    mask = masks(args.batch_size)
    amp = amp_enabled(args) if args.device.startswith("cuda") else False
    # Gradient buffers stay allocated, like weights and AdamW state: the step is charged for what
    # its computation needs (activations, temporaries), the part masking can save. Freed
    # gradients would add the same fixed 4 bytes per parameter to both variants.
    print(step_peak_mb(lambda: train_step(model, opt, images, mask, amp, keep_grads=True), images.device))


def peak_memory_mb(args, variant: str) -> float:
    cmd = [sys.executable, os.path.abspath(__file__), "--memory-only", variant, *setting_argv(args),
           "--decoder-dim", str(args.decoder_dim), "--decoder-depth", str(args.decoder_depth),
           "--decoder-heads", str(args.decoder_heads), "--device", args.device]
    if args.no_amp:
        cmd.append("--no-amp")
    return run_in_subprocess(cmd)


def main(argv=None):
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.memory_only:
        return memory_child(args)
    t = time_both(args)
    dense_mb, green_mb = (peak_memory_mb(args, v) for v in VARIANTS)
    result = {
        **setting_result(args), "encoder_kwargs": json.loads(args.encoder_kwargs),
        "decoder": [args.decoder_dim, args.decoder_depth, args.decoder_heads],
        "amp": "bf16" if amp_enabled(args) else "fp32", "iters": args.iters,
        "dense_s": t["dense_s"], "green_s": t["green_s"], "speedup": t["dense_s"] / t["green_s"],
        "dense_fwdbwd_s": t["dense_fwdbwd_s"], "green_fwdbwd_s": t["green_fwdbwd_s"],
        "fwdbwd_speedup": t["dense_fwdbwd_s"] / t["green_fwdbwd_s"],
        "dense_peak_mb": dense_mb, "green_peak_mb": green_mb,
        "mem_reduction": 1.0 - green_mb / dense_mb,
    }
    if args.device.startswith("cuda"):
        result["img_per_s_dense"] = args.batch_size / t["dense_s"]
        result["img_per_s_green"] = args.batch_size / t["green_s"]
    print_result(result, args.json)


if __name__ == "__main__":
    main()
