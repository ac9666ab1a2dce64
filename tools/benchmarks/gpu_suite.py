#!/usr/bin/env python
"""The GPU benchmark and test suite: GreenMIM against the dense SimMIM step on one accelerator,
written as gpu_results.json + gpu_results.md (the README's GPU table is made from them).

    python tools/benchmarks/gpu_suite.py --out $OUT                    # H100/H200: Swin-B 224, batch 128, bf16
    python tools/benchmarks/gpu_suite.py --device cpu --tiny --out /tmp/s  # the same code path in ~1 min on a CPU

(gpu_suite.sh beside this file runs it on a bare machine: the package from this checkout, no install.)

Measured, each case with dense and green steps alternated in one process (medians):
  * whole pretraining step (forward, loss, backward, fused AdamW, zero_grad) of GreenMIM vs SimMIM,
    Swin-B 224 / mask 0.75, shared and per-sample masks, in each execution mode: eager,
    torch.compile (dynamic=False) and CUDA graphs (forward + loss + backward replayed);
  * Twins-SVT-B (static shapes, plans made ahead, PyTorch sparse-conv backend), eager and captured;
  * Swin-L, window 14, captured;
  * the attention kernel: SDPA (memory-efficient, bias gradient) vs batched matmuls, and whether
    SDPA's bias gradient equals the matmul path's (a GPU test);
  * captured == eager: loss and gradients of the compiled and graphed steps against eager;
  * host planning time per step (what each DataLoader worker core spends), the largest batch that
    fits (green and dense), and with --official the authors' step beside ours;
  * the loader per decoding path and pretraining end to end from JPEG files (gpu_data_rows.py).
The masks' plans are made ahead on the host, as the training loader's workers make them, so the
timed step is what the GPU runs. Needs torch, timm, numpy, pyyaml (no detectron2, no fvcore).
Tasks run in priority order (tasks() below: Swin-B captured / eager shared, captured per-sample,
end to end and loader, Twins captured, the official code, ...) and are skipped (and listed) once
--budget-s is spent; the files are rewritten after every task, so a hard stop keeps what was done.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from typing import Dict, List

import torch
from gpu_data_rows import end_to_end, loader_rows
from gpu_suite_report import write_report
from memory import first_steps_peak_mb

import greenmim
from greenmim.data.masking import MaskGenerator
from greenmim.engine.cuda_graph import GraphedStep
from greenmim.engine.optim import build_optimizer
from greenmim.models import window_plans
from greenmim.models.mim import GreenMIM
from greenmim.models.simmim import SimMIM
from greenmim.models.swin import plans_to


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default=os.environ.get("OUT", "gpu_suite_out"))
    p.add_argument("--work", default=os.environ.get("GPU_SUITE_WORK", "/tmp/greenmim_gpu_suite"),
                   help="scratch folder (JPEGs, the end-to-end run's output)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--tiny", action="store_true", help="a small Swin at 64 px, batch 4 (CPU check)")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--iters", type=int, default=10)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--budget-s", type=float, default=420.0,
                   help="skip the remaining cases after this many seconds (the first case always runs)")
    p.add_argument("--compile-mode", default="default", help="torch.compile mode for the compiled cases")
    p.add_argument("--official", default=os.environ.get("OFFICIAL_GREENMIM"),
                   help="a checkout of the official GreenMIM code: also time its step beside ours "
                        "(official_side_by_side.py)")
    p.add_argument("--compile-backend", default=None,
                   help="torch.compile backend (default: inductor; the CPU check uses aot_eager)")
    return p.parse_args(argv)


def setting(args) -> dict:
    if args.tiny:
        enc = dict(embed_dim=16, depths=(1, 1, 2, 1), num_heads=(1, 2, 2, 4), window_size=2)
        return dict(arch="swin_tiny", img=64, batch=4, enc=enc, dec=dict(decoder_dim=32, decoder_num_heads=2),
                    twins=dict(embed_dim=16, depths=(1, 1, 1, 1), num_heads=(1, 1, 2, 2)),
                    arch_large="swin_tiny", enc_large=dict(enc, window_size=4))
    return dict(arch="swin_base", img=224, batch=args.batch_size, enc=dict(window_size=7), dec={},
                twins={}, arch_large="swin_large", enc_large=dict(window_size=14))


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class Case:
    """One model variant ready to step: model, optimiser, inputs, a pool of pre-made plans."""

    def __init__(self, kind: str, arch: str, s: dict, device, per_sample: bool, mode: str, **enc_kw):
        torch.manual_seed(0)
        static = {"static_shapes": True} if kind == "green" else {}
        enc = greenmim.build_encoder(arch, img_size=s["img"], **enc_kw, **static)
        self.model = (GreenMIM(enc, img_size=s["img"], **s["dec"]) if kind == "green" else SimMIM(enc)).to(device)
        self.opt = build_optimizer(self.model, lr=1e-4)
        self.device, self.mode = device, mode
        self.amp = torch.bfloat16 if device.type == "cuda" else None
        self.images = torch.randn(s["batch"], 3, s["img"], s["img"], device=device)
        gen = MaskGenerator(s["img"], 0.75, shared=not per_sample, seed=1)
        planner = enc.planner() if kind == "green" else None
        self.pool, self.plan_s = [], []
        for _ in range(4):  # as the loader's workers make them: masks and plans on the host
            mask = gen.draw(s["batch"])  # a UnitMask: checked once, here, as in the loader's workers
            t0 = time.perf_counter()
            plans = planner(mask.plan_mask) if planner is not None else None  # dense: none needed
            self.plan_s.append(time.perf_counter() - t0)
            if plans is not None and plans.static_fallback:
                continue
            self.pool.append((mask, plans))
        self.fallback_masks = 4 - len(self.pool)
        self.i = 0
        fn = self.model
        if mode == "compiled":
            backend = s.get("compile_backend") or "inductor"
            mode = None if s.get("compile_mode") == "default" or backend != "inductor" else s.get("compile_mode")
            fn = torch.compile(self.model, dynamic=False, backend=backend, mode=mode)
        self.fn = fn
        self.graphed = GraphedStep(self.model, self.amp) if mode == "cuda_graphs" else None

    def forward_backward(self, mask, plans) -> torch.Tensor:
        plans = None if plans is None else plans_to(plans, self.device)
        if self.graphed is not None:
            return self.graphed(self.images, mask, plans)
        with torch.autocast(self.device.type, dtype=self.amp or torch.float32, enabled=self.amp is not None):
            loss = (self.fn(self.images, mask) if plans is None else self.fn(self.images, mask, plans))["loss"]
        loss.backward()
        return loss.detach()

    def step(self) -> None:
        mask, plans = self.pool[self.i % len(self.pool)]
        self.i += 1
        self.forward_backward(mask, plans)
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)


def interleave(cases: Dict[str, Case], iters: int, warmup: int) -> Dict[str, dict]:
    """Alternates the cases step by step; median seconds and peak memory of each."""
    times = {k: [] for k in cases}
    peak = {}
    for k, c in cases.items():  # warm-up (compilation, graph recording) outside the timing
        def warm(c=c):
            for _ in range(warmup):
                c.step()
        if c.device.type == "cuda":  # from before the first step: a captured step allocates there
            peak[k] = first_steps_peak_mb(warm, c.opt, c.device)
        else:
            warm()
        sync(c.device)
    for _ in range(iters):
        for k, c in cases.items():
            sync(c.device)
            t0 = time.perf_counter()
            c.step()
            sync(c.device)
            times[k].append(time.perf_counter() - t0)
    return {k: {"s_per_step": statistics.median(v), "peak_mb": peak.get(k)} for k, v in times.items()}


def profile_table(case: Case, steps: int = 3, rows: int = 20) -> str:
    """torch.profiler over `steps` whole steps: the top ops / kernels by self device time (self CPU
    time on a CPU), so every run shows where the time goes."""
    from torch.profiler import ProfilerActivity, profile
    cuda = case.device.type == "cuda"
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    sync(case.device)
    with profile(activities=activities) as prof:
        for _ in range(steps):
            case.step()
        sync(case.device)
    key = "self_cuda_time_total" if cuda else "self_cpu_time_total"
    return prof.key_averages().table(sort_by=key, row_limit=rows, max_name_column_width=60)


def largest_batch(kind: str, s: dict, device, start: int, limit: int = 16384) -> int:
    """The largest batch (doubling from `start`) whose eager step with a shared mask fits on the
    device; 0 when even `start` does not."""
    best, batch = 0, start
    while batch <= limit:
        case = None
        try:
            case = Case(kind, s["arch"], {**s, "batch": batch}, device, False, "eager", **s["enc"])
            case.step()
            case.step()
            sync(device)
            best, batch = batch, batch * 2
        except torch.OutOfMemoryError:
            break
        finally:
            case = None
            torch.cuda.empty_cache()
    return best


def equal_to_eager(case: Case, ref: Case) -> dict:
    """Loss and gradients of a captured case against eager on the same weights, mask and plans."""
    ref.model.load_state_dict(case.model.state_dict())
    mask, plans = case.pool[0]
    out = {}
    for name, c in (("captured", case), ("eager", ref)):
        c.opt.zero_grad(set_to_none=True)
        loss = c.forward_backward(mask, plans)
        out[name] = (float(loss), torch.cat([p.grad.float().flatten() for p in c.model.parameters()
                                            if p.grad is not None]))
    (la, ga), (lb, gb) = out["captured"], out["eager"]
    return {"loss_rel_diff": abs(la - lb) / max(abs(lb), 1e-12),
            "grad_rel_diff": float((ga - gb).norm() / gb.norm().clamp_min(1e-12))}


def sdpa_bias_grad_check(device) -> dict:
    """Does SDPA's bias gradient equal the batched-matmul path's (bf16 autocast off, fp32)?"""
    torch.manual_seed(0)
    q, k, v = (torch.randn(8, 4, 16, 49, 32, device=device, requires_grad=True) for _ in range(3))
    bias = torch.randn(4, 16, 49, 49, device=device, requires_grad=True)
    grads = {}
    for kernel in ("matmul", "sdpa"):
        window_plans.set_attention_kernel(kernel)
        out = window_plans.window_attention(q, k, v, bias)
        grads[kernel] = torch.autograd.grad(out.square().sum(), (q, bias))
    window_plans.set_attention_kernel("auto")
    return {"q_grad_rel_diff": float((grads["sdpa"][0] - grads["matmul"][0]).norm() / grads["matmul"][0].norm()),
            "bias_grad_rel_diff": float((grads["sdpa"][1] - grads["matmul"][1]).norm() / grads["matmul"][1].norm())}


def run_case(ctx: dict, name: str, arch: str, mode: str, per_sample: bool, enc_kw: dict) -> None:
    """One step case: dense and green alternated, captured == eager, a profile while time is left."""
    s, device, args = ctx["s"], ctx["device"], ctx["args"]
    t0 = time.perf_counter()
    cases = {kind: Case(kind, arch, s, device, per_sample, mode, **enc_kw) for kind in ("dense", "green")}
    timed = interleave(cases, args.iters, args.warmup)
    row = {"case": name, "arch": arch, "mode": mode, "per_sample": per_sample, "batch": s["batch"],
           "dense_s": timed["dense"]["s_per_step"], "green_s": timed["green"]["s_per_step"],
           "dense_peak_mb": timed["dense"]["peak_mb"], "green_peak_mb": timed["green"]["peak_mb"],
           "plan_ms_per_step": 1000 * statistics.median(cases["green"].plan_s),
           "fallback_masks": cases["green"].fallback_masks, "wall_s": None}
    row["speedup"] = row["dense_s"] / row["green_s"]
    row["green_img_per_s"] = s["batch"] / row["green_s"]
    row["dense_img_per_s"] = s["batch"] / row["dense_s"]
    if row["dense_peak_mb"]:
        row["mem_reduction"] = 1 - row["green_peak_mb"] / row["dense_peak_mb"]
    if mode != "eager":
        ref = Case("green", arch, s, device, per_sample, "eager", **enc_kw)
        row["green_vs_eager"] = equal_to_eager(cases["green"], ref)
        del ref
    if mode == "cuda_graphs":
        row["graphs_recorded"] = len(cases["green"].graphed.graphs)
    if not ctx["over_budget"]():
        ctx["profiles"].append(f"## {name}: green\n\n```\n{profile_table(cases['green'])}\n```\n")
        if mode == "eager":
            ctx["profiles"].append(f"## {name}: dense\n\n```\n{profile_table(cases['dense'])}\n```\n")
    row["wall_s"] = time.perf_counter() - t0
    ctx["results"]["cases"].append(row)
    print(json.dumps(row), flush=True)


def run_official(ctx: dict) -> None:
    from official_side_by_side import main as official_main
    args = ctx["args"]
    path = os.path.join(args.work, "official.json")
    official_main(["--official", args.official, "--device", str(ctx["device"]), "--batch-size", str(ctx["s"]["batch"]),
                   "--iters", str(args.iters), "--warmup", str(args.warmup), "--json", path])
    with open(path) as f:
        ctx["results"]["official"] = json.load(f)["rows"]


def run_end_to_end(ctx: dict) -> None:
    s, device, args, results = ctx["s"], ctx["device"], ctx["args"], ctx["results"]
    e2e = end_to_end(s["batch"], ctx["workers"], str(device), 4 if args.tiny else 250,
                     os.path.join(args.work, "end_to_end"), args.tiny)
    step = next((c for c in results["cases"] if c["case"] == f"swin {ctx['captured']} shared"), None)
    if step:  # the first case's figure: the step on images already on the device
        e2e["step_img_per_s"] = step["green_img_per_s"]
        e2e["fraction_of_step"] = e2e["img_per_s"] / step["green_img_per_s"]
    results["end_to_end"] = e2e


def tasks(ctx: dict) -> List[tuple]:
    """(name, callable) in priority order: what the open questions need first, the rest while the
    budget lasts. On a CPU "captured" is torch.compile, so the extra compiled rows are CUDA-only."""
    s, device, results = ctx["s"], ctx["device"], ctx["results"]
    cuda, cap = device.type == "cuda", ctx["captured"]
    swin, large = (s["arch"], s["enc"]), (s["arch_large"], s["enc_large"])
    twins = ("twins_svt_base", {**s["twins"], "conv_backend": "torch"})

    def case(name, model, mode, per_sample):
        return name, lambda: run_case(ctx, name, model[0], mode, per_sample, model[1])

    def put(key, fn):
        return lambda: results.__setitem__(key, fn())

    return [
        case(f"swin {cap} shared", swin, cap, False),
        case("swin eager shared", swin, "eager", False),
        case(f"swin {cap} per-sample", swin, cap, True),
        ("end to end", lambda: run_end_to_end(ctx)),
        ("loader", put("loader", lambda: loader_rows(s["img"], s["batch"], ctx["workers"], str(device),
                                                     s["arch"], ctx["args"].tiny))),
        case(f"twins {cap} shared", twins, cap, False),
        *([("official", lambda: run_official(ctx))] if ctx["args"].official else []),
        case("swin eager per-sample", swin, "eager", True),
        *([("largest batch", put("largest_batch", lambda: {k: largest_batch(k, s, device, s["batch"])
                                                            for k in ("dense", "green")}))] if cuda else []),
        case(f"swin-L w14 {cap} shared", large, cap, False),
        *([("sdpa check", lambda: results["checks"].__setitem__("sdpa_bias_grad", sdpa_bias_grad_check(device)))]
          if cuda else []),
        case("twins eager shared", twins, "eager", False),
        case(f"twins {cap} per-sample", twins, cap, True),
        *([case("swin compiled shared", swin, "compiled", False),
           case("swin compiled per-sample", swin, "compiled", True)] if cuda else []),
    ]


def save(results: dict, profiles: List[str], out: str, start: float) -> None:
    """The files as they stand: written after every task, so a hard stop keeps what was measured."""
    results["wall_s"] = time.perf_counter() - start
    tmp = os.path.join(out, "gpu_results.json.tmp")
    with open(tmp, "w") as f:
        json.dump(results, f, indent=2)
    os.replace(tmp, os.path.join(out, "gpu_results.json"))
    write_report(results, os.path.join(out, "gpu_results.md"))
    with open(os.path.join(out, "gpu_profiles.md"), "w") as f:  # one file: $OUT returns 8 at most
        f.write(f"# Top ops per step case ({results['device']}, 3 steps each)\n\n" + "\n".join(profiles))


def main(argv=None) -> int:
    args = parse_args(argv)
    device = torch.device(args.device)
    os.makedirs(args.out, exist_ok=True)
    os.makedirs(args.work, exist_ok=True)
    s = setting(args)
    s["compile_mode"] = args.compile_mode
    s["compile_backend"] = args.compile_backend or ("aot_eager" if device.type == "cpu" else None)
    start = time.perf_counter()
    results: dict = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
                     "torch": torch.__version__, "setting": {k: v for k, v in s.items() if k not in ("twins", "enc_large")},
                     "cases": [], "checks": {}, "skipped": [], "errors": []}
    ctx = {"args": args, "s": s, "device": device, "results": results, "profiles": [],
           "captured": "cuda_graphs" if device.type == "cuda" else "compiled",
           "workers": max(1, min(8, (os.cpu_count() or 2) - 1)),
           "over_budget": lambda: time.perf_counter() - start > args.budget_s}
    for i, (name, fn) in enumerate(tasks(ctx)):
        if i > 0 and ctx["over_budget"]():  # the first task always runs
            results["skipped"].append(name)
            continue
        print(f"[gpu_suite {time.perf_counter() - start:.0f} s] {name}", flush=True)
        try:
            fn()
        except Exception as e:  # noqa: BLE001 - one failing task must not lose the others' figures
            results["errors"].append(f"{name}: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}")
            print("error:", results["errors"][-1], flush=True)
        finally:
            if device.type == "cuda":
                torch.cuda.empty_cache()
            save(results, ctx["profiles"], args.out, start)
    save(results, ctx["profiles"], args.out, start)  # with the skipped list complete
    print(f"wrote {args.out}/gpu_results.json and gpu_results.md in {results['wall_s']:.0f} s", flush=True)
    return 1 if results["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
