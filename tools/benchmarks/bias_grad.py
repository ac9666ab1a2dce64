#!/usr/bin/env python
"""Cost of the relative position bias of group attention (gather + its gradient), per-sample masks
against a shared mask, for autograd's indexing backward and for the matmul backward the encoder
uses (greenmim.models.group_bias). A CPU proxy of what made per-sample steps slow on a GPU: the
indexing backward accumulates every slot pair onto (2w-1)^2 table rows, serialised on CUDA.

    python tools/benchmarks/bias_grad.py            # Swin-B stage 1 (window 7, 4 heads), 224 px, batch 128
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time

import torch

from greenmim.data.masking import MaskGenerator
from greenmim.models.group_bias import group_bias
from greenmim.models.token_layout import stage_layouts
from greenmim.models.window_plans import GroupPlan


def timed(fn, iters: int) -> float:
    fn()
    times = []
    for _ in range(iters):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return 1000 * statistics.median(times)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--window", type=int, default=7)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--iters", type=int, default=5)
    args = p.parse_args(argv)
    w, heads = args.window, args.heads
    tables = torch.randn(1, (2 * w - 1) ** 2, heads, requires_grad=True)
    print(f"Swin stage 1, window {w}, {heads} heads, shifted windows, 224 px, mask 0.75, batch {args.batch_size}")
    results = {}
    for shared in (True, False):
        mask = MaskGenerator(224, 0.75, shared=shared, seed=0)(args.batch_size)
        lay = stage_layouts(mask[:1] if shared else mask, 1, 8)[0]
        plan = GroupPlan.build(lay.rows, lay.cols, lay.height, lay.width, w, w // 2)
        pairs = plan.num_groups * plan.capacity ** 2
        for name, fn in (("indexing", lambda: tables[:, plan.rel_index].permute(0, 4, 1, 2, 3)),
                         ("matmul", lambda: group_bias(tables, plan.slot_code, w, "matmul"))):
            def step(fn=fn):
                out = fn()
                out.backward(torch.ones_like(out))
                tables.grad = None
            results[shared, name] = timed(step, args.iters)
            print(f"  {'shared' if shared else 'per-sample':10s} {plan.num_groups:5d} groups x {plan.capacity} "
                  f"({pairs * heads / 1e6:6.1f} M pair entries)  {name:8s} {results[shared, name]:8.1f} ms", flush=True)
    for name in ("indexing", "matmul"):
        print(f"per-sample / shared, {name}: {results[False, name] / results[True, name]:.1f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
