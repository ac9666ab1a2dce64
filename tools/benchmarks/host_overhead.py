#!/usr/bin/env python
"""What an eager GPU step costs the host, measured on a CPU: the ops it dispatches (each a kernel
launch on a GPU), the bytes its copies write, and the planning it needs (done in the loader's
workers, or in the step).

The step (forward, loss, backward) runs on PyTorch's `meta` device, which computes shapes only,
so the aten ops counted there are exactly the ones a GPU step launches, for the real batch and
size, in seconds. Attention runs as CUDA's memory-efficient SDPA does (an attention bias that is
not laid out as the kernel reads it is first padded into a copy: counted as `padded_mask_mb`).
Planning is timed on one host thread for fresh masks.

    python tools/benchmarks/host_overhead.py                       # Swin-B and Twins-SVT-B, 224 px, batch 128
    python tools/benchmarks/host_overhead.py --json out.json

(Wall time on `meta` is not a proxy of a GPU step's host time: many meta kernels are Python.)
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

import greenmim
from greenmim.data.masking import MaskGenerator
from greenmim.models.mim import GreenMIM
from greenmim.models import window_plans
from greenmim.models.attention_kernel import BIAS_ALIGNMENT, is_aligned
from greenmim.models.simmim import SimMIM
from greenmim.models.tensor_tree import plans_to


class OpCounter(TorchDispatchMode):
    """Counts the aten ops that reach a backend (views included), the kernels among them (ops
    that write memory) and the bytes that copies write."""

    COPIES = {"aten.copy_", "aten.clone", "aten._to_copy", "aten.constant_pad_nd"}

    def __init__(self):
        super().__init__()
        self.ops = self.kernels = self.copy_bytes = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops += 1
        out = func(*args, **(kwargs or {}))
        if not func.is_view and func._schema.name not in ("aten::detach", "aten::lift_fresh"):
            self.kernels += 1
            if str(func.overloadpacket) in self.COPIES:
                self.copy_bytes += sum(t.numel() * t.element_size() for t in torch.utils._pytree.tree_leaves(out)
                                       if isinstance(t, torch.Tensor))
        return out


class _MemEfficientAttention(torch.autograd.Function):
    """Shapes and copies of CUDA's memory-efficient SDPA, on `meta`: an attention mask that is not
    aligned (every stride but the last a multiple of 8) is padded into a copy first, and the mask's
    gradient comes out at the full broadcast shape, as the kernel writes it."""

    padded_bytes = 0  # written by the padded copies of unaligned masks since the last reset

    @staticmethod
    def forward(ctx, q, k, v, mask):
        ctx.shapes = (q.shape, k.shape, v.shape)
        ctx.mask_shape = None if mask is None else mask.shape
        if mask is not None and not is_aligned(mask):
            padded = F.pad(mask, (0, -mask.shape[-1] % BIAS_ALIGNMENT))
            _MemEfficientAttention.padded_bytes += padded.numel() * padded.element_size()
        return q.new_empty(q.shape)

    @staticmethod
    def backward(ctx, grad):
        full = None if ctx.mask_shape is None else grad.new_empty(ctx.mask_shape)
        return (*(grad.new_empty(shape) for shape in ctx.shapes), full)


def sdpa_as_on_cuda(q, k, v, attn_mask=None, **kwargs):
    return _MemEfficientAttention.apply(q, k, v, attn_mask)


def measure(arch: str, kind: str, shared: bool, batch: int, img: int, iters: int) -> dict:
    """Ops of one step traced on `meta` with plans made ahead, and the median planning time of
    `iters` fresh masks on one host thread."""
    torch.manual_seed(0)
    enc = greenmim.build_encoder(arch, img_size=img, **({"static_shapes": True} if kind == "green" else {}))
    model = GreenMIM(enc, img_size=img) if kind == "green" else SimMIM(enc)
    meta = torch.device("meta")
    model = model.to(meta)
    gen = MaskGenerator(img, 0.75, shared=shared, seed=0)
    images = torch.empty(batch, 3, img, img, device=meta)
    masks = [gen.draw(batch) for _ in range(iters + 1)]
    planner = enc.planner() if kind == "green" else None
    plans = [plans_to(planner(m), meta) if planner else None for m in masks]

    def step(i):
        mask, p = masks[i].to(meta), plans[i]  # with the batch on the device, as the engine does
        out = model(images, mask) if p is None else model(images, mask, p)
        out["loss"].backward()
        model.zero_grad(set_to_none=True)

    real_sdpa = F.scaled_dot_product_attention
    F.scaled_dot_product_attention = sdpa_as_on_cuda  # attention as the GPU runs it
    window_plans.set_attention_kernel("sdpa")
    try:
        step(0)  # warm-up: caches, static-shape tables
        counter = OpCounter()
        _MemEfficientAttention.padded_bytes = 0
        with counter:
            step(1)
    finally:
        F.scaled_dot_product_attention = real_sdpa
        window_plans.set_attention_kernel("auto")
    plan_ms = []
    for m in masks[1:]:
        t0 = time.perf_counter()
        if planner is not None:
            planner(m)
        plan_ms.append(1000 * (time.perf_counter() - t0))
    return {"arch": arch, "model": kind, "masks": "shared" if shared else "per-sample",
            "ops_per_step": counter.ops, "kernels_per_step": counter.kernels,
            "copy_mb_per_step": round(counter.copy_bytes / 2 ** 20, 1),
            "padded_mask_mb": round(_MemEfficientAttention.padded_bytes / 2 ** 20, 1), "plan_ms_per_step": statistics.median(plan_ms)}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--archs", default="swin_base,twins_svt_base")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--img-size", type=int, default=224)
    p.add_argument("--iters", type=int, default=5)
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    rows = []
    for arch in args.archs.split(","):
        for kind, shared in (("simmim", True), ("green", True), ("green", False)):
            row = measure(arch, kind, shared, args.batch_size, args.img_size, args.iters)
            rows.append(row)
            print(f"{row['arch']:15s} {row['model']:7s} {row['masks']:10s} "
                  f"{row['ops_per_step']:6d} ops/step  {row['kernels_per_step']:5d} kernels  "
                  f"copies {row['copy_mb_per_step']:8.1f} MB (padded masks {row['padded_mask_mb']:6.1f})  planning {row['plan_ms_per_step']:7.1f} ms/step", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
