#!/usr/bin/env python
"""The benchmark suite: GreenMIM vs the dense SimMIM baseline over a grid, written up as
benchmarks/RESULTS.md (tables) and benchmarks/results.png.

For every (arch, image size, mask ratio) of the grid and every benchmark mode
  - `step`:    a whole pretraining step (forward, loss, backward, AdamW, zero_grad) of GreenMIM
               against SimMIM (step.py),
  - `encoder`: encoder forward + backward, sparse against dense (encoder.py),
it reports median seconds per step (dense and green alternated step by step in one process, so
the ratio holds on a noisy machine), speed-up, step memory and its reduction (memory.py),
forward GMAC per image from fvcore (flops.py) and efficiency = speed-up / FLOP
ratio. Then, for the grid's first Swin case: per-sample masks against a shared mask, the host-side
planning time and the padding inside attention per stage, and the data loader's img/s alone
against the training step's (loader.py); the modules named sit beside this one.

    python tools/benchmarks/suite.py                # default grid (CPU: ~20 min on 2 quiet cores)
    python tools/benchmarks/suite.py --grid quick   # one Swin-T case, a few minutes
    python tools/benchmarks/suite.py --grid sizes   # Swin-T and Swin-B at 192/224/384, ratio 0.75
    python tools/benchmarks/suite.py --grid full    # 2-3 archs x 192/224/384 x 0.5/0.6/0.75/0.9 (hours on a CPU)
    python tools/benchmarks/suite.py --archs swin_base --img-sizes 224 --mask-ratios 0.75 --modes step
    python tools/benchmarks/suite.py --device cuda --batch-size 128 --compile  # GPU: bf16 AMP by default

Threads are set explicitly (--threads, default 2 on CPU) and OMP_WAIT_POLICY defaults to PASSIVE
(see below). The machine, device, precision, threads and load are written into RESULTS.md.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import sys
import time
from typing import Dict, List

# OpenMP threads that spin while waiting lose their time slice to other processes on a shared
# machine, and every small op then waits for a descheduled thread (measured: a toy step 3x slower
# under load). Passive waiting avoids that; set OMP_WAIT_POLICY=ACTIVE to measure the default.
# Must be set before torch loads its OpenMP runtime (so only when run as a script); memory
# subprocesses inherit it.
if __name__ == "__main__":
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402

import encoder  # noqa: E402  (the modules beside this script)
import report  # noqa: E402
import step  # noqa: E402
from flops import gmac_per_image  # noqa: E402
from loader import loader_images_per_s  # noqa: E402
from timing import interleave  # noqa: E402

import greenmim  # noqa: E402
from greenmim.data.masking import MaskGenerator  # noqa: E402

TWINS = "twins_svt_base"
MODES = ("step", "encoder")
HEADLINE = ("swin_base", 224, 0.75)  # the configuration the targets are checked on

GRIDS = {
    # (arch, img_size, mask_ratio) triples; every one runs every mode in --modes
    "quick": [("swin_tiny", 224, 0.75)],
    "default": [("swin_base", 224, 0.75)]
    + [("swin_tiny", 224, r) for r in (0.5, 0.6, 0.75, 0.9)]
    + [(TWINS, 224, 0.75)],
    "sizes": [(a, s, 0.75) for a in ("swin_tiny", "swin_base") for s in (192, 224, 384)],
    "full": [(a, s, r) for a in ("swin_tiny", "swin_base", TWINS) for s in (192, 224, 384)
             for r in (0.5, 0.6, 0.75, 0.9)],
}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--grid", default="default", choices=sorted(GRIDS))
    p.add_argument("--archs", nargs="+", help="replace the grid: these archs x --img-sizes x --mask-ratios")
    p.add_argument("--img-sizes", nargs="+", type=int, default=[224])
    p.add_argument("--mask-ratios", nargs="+", type=float, default=[0.75])
    p.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES)
    p.add_argument("--batch-size", type=int, default=None, help="default: 8 on CPU, 128 on CUDA")
    p.add_argument("--iters", type=int, default=5, help="timed steps per variant")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    p.add_argument("--amp", choices=["auto", "on", "off"], default="auto",
                   help="bf16 autocast; auto = on for CUDA, off on CPU")
    p.add_argument("--compile", nargs="?", const="inductor", default=None, metavar="BACKEND",
                   help="torch.compile the models (backend: inductor, or e.g. eager to check tracing only)")
    p.add_argument("--no-memory", action="store_true", help="skip the peak-memory subprocesses")
    p.add_argument("--no-extras", action="store_true",
                   help="skip the per-sample, planning and loader sections")
    p.add_argument("--plan-batch", type=int, default=128, help="batch of the large per-sample plan timing")
    p.add_argument("--loader-workers", type=int, default=2)
    p.add_argument("--loader-images", type=int, default=64, help="JPEGs in the loader's folder")
    p.add_argument("--encoder-kwargs", default="{}", help="build_encoder overrides as JSON, every arch "
                   "(e.g. a tiny model for a smoke test)")
    p.add_argument("--decoder-dim", type=int, default=512)
    p.add_argument("--note", default="", help="free text written under the machine line")
    p.add_argument("--render", metavar="RESULTS_JSON", help="only rewrite RESULTS.md and the PNG "
                   "from a results.json of an earlier run (no measuring), into --out")
    p.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "benchmarks"))
    return p.parse_args(argv)


def grid(args) -> List[tuple]:
    cases = ([(a, s, r) for a in args.archs for s in args.img_sizes for r in args.mask_ratios]
             if args.archs else list(GRIDS[args.grid]))
    known = set(greenmim.list_encoders())
    skipped = [c for c in cases if c[0] not in known]
    if skipped:
        print(f"[benchmark] not registered, skipped: {sorted({c[0] for c in skipped})}", flush=True)
    return [c for c in cases if c[0] in known]


def amp_on(args) -> bool:
    return args.amp == "on" or (args.amp == "auto" and args.device.startswith("cuda"))


def common_argv(args, arch: str, size: int, ratio: float) -> List[str]:
    argv = ["--arch", arch, "--img-size", str(size), "--batch-size", str(args.batch_size),
            "--mask-ratio", str(ratio), "--iters", str(args.iters), "--warmup", str(args.warmup),
            "--device", args.device, "--threads", str(args.threads), "--encoder-kwargs", args.encoder_kwargs]
    return argv + (["--compile", args.compile] if args.compile else [])


# ---- one grid case ------------------------------------------------------------------------------

def run_encoder_case(args, arch, size, ratio) -> dict:
    eargs = encoder.parse_args(common_argv(args, arch, size, ratio) + (["--amp"] if amp_on(args) else []))
    torch.manual_seed(0)
    enc, images, masks = encoder.build(eargs)
    t = encoder.time_both(eargs, enc, images, masks)
    enc_plain = getattr(enc, "_orig_mod", enc)  # fvcore traces the eager module
    mask1 = masks(1)
    dense_g = gmac_per_image(enc_plain, (images[:1],))
    green_g = gmac_per_image(enc_plain, (images[:1], mask1))
    del enc, images
    row = {"dense_s": t["dense"], "green_s": t["green"], "dense_gmac": dense_g, "green_gmac": green_g}
    if not args.no_memory:
        row["dense_mb"] = encoder.peak_memory_mb(eargs, "dense")
        row["green_mb"] = encoder.peak_memory_mb(eargs, "green")
    return row


class _LossOnly(torch.nn.Module):
    """model(images, mask)["loss"]: a tensor output, which fvcore's tracer needs."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, images, mask):
        return self.model(images, mask)["loss"]


def run_step_case(args, arch, size, ratio) -> dict:
    pargv = common_argv(args, arch, size, ratio) + ["--decoder-dim", str(args.decoder_dim)]
    pargs = step.parse_args(pargv + ([] if amp_on(args) else ["--no-amp"]))
    t = step.time_both(pargs)
    row = {"dense_s": t["dense_s"], "green_s": t["green_s"], "dense_fwdbwd_s": t["dense_fwdbwd_s"],
           "green_fwdbwd_s": t["green_fwdbwd_s"],
           "fwdbwd_speedup": t["dense_fwdbwd_s"] / t["green_fwdbwd_s"]}
    flops_args = step.parse_args(pargv + ["--no-amp"])
    flops_args.compile = None
    for v in step.VARIANTS:
        model, _, images, masks = step.build(flops_args, v)
        row[f"{v}_gmac"] = gmac_per_image(_LossOnly(model), (images[:1], masks(1)))
        del model
    if not args.no_memory:
        for v in step.VARIANTS:
            row[f"{v}_mb"] = step.peak_memory_mb(pargs, v)
    return row


def finish_row(row: dict, batch: int) -> dict:
    row["speedup"] = row["dense_s"] / row["green_s"]
    row["green_img_per_s"] = batch / row["green_s"]
    row["dense_img_per_s"] = batch / row["dense_s"]
    if row.get("dense_mb"):
        row["mem_reduction"] = 1.0 - row["green_mb"] / row["dense_mb"]
    if row.get("green_gmac"):
        row["flop_ratio"] = row["dense_gmac"] / row["green_gmac"]
        row["efficiency"] = row["speedup"] / row["flop_ratio"]
    return row


# ---- extras: per-sample masks, planning, data loading ---------------------------------------------

def per_sample_overhead(args, arch, size, ratio) -> dict:
    """Green encoder steps with a shared mask and with per-sample masks, alternated."""
    eargs = encoder.parse_args(common_argv(args, arch, size, ratio) + (["--amp"] if amp_on(args) else []))
    torch.manual_seed(0)
    enc, images, shared = encoder.build(eargs)
    per_sample = MaskGenerator(size, ratio, shared=False, seed=1)
    b = args.batch_size
    t = interleave({"shared": lambda: encoder.step(enc, images, shared(b), eargs.amp),
                    "per_sample": lambda: encoder.step(enc, images, per_sample(b), eargs.amp)},
                   args.iters, args.warmup, images.device)
    return {"arch": arch, "img_size": size, "mask_ratio": ratio, "shared_s": t["shared"]["s"],
            "per_sample_s": t["per_sample"]["s"], "overhead": t["per_sample"]["s"] / t["shared"]["s"] - 1}


def planning(args, arch, size, ratio, shared: bool, batch: int, repeats: int = 5) -> dict:
    """Median plan_sparse time on one thread for fresh masks, and the padding per stage."""
    enc = greenmim.build_encoder(arch, img_size=size, **json.loads(args.encoder_kwargs))
    gen = MaskGenerator(size, ratio, shared=shared, seed=2)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    times = []
    try:
        for _ in range(repeats + 1):
            m = gen(batch)
            m = m[:1] if shared else m
            t0 = time.perf_counter()
            plans = enc.plan_sparse(m)
            times.append(time.perf_counter() - t0)
    finally:
        torch.set_num_threads(threads)
    padding, weights = [], []
    for stage, (regular, shifted) in zip(enc.layers, plans.attention):
        padding.append((regular.padded_fraction, shifted.padded_fraction))
        weights.append(regular.num_tokens * len(stage.blocks))
    weighted = sum(w * (a + b) / 2 for w, (a, b) in zip(weights, padding)) / sum(weights)
    return {"arch": arch, "img_size": size, "mask_ratio": ratio, "batch": batch,
            "masks": "shared" if shared else "per-sample", "plan_ms": 1e3 * statistics.median(times[1:]),
            "padding": padding, "weighted_padding": weighted}


def machine(args) -> dict:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    cuda = args.device.startswith("cuda")
    return {"cpu": cpu, "cores": os.cpu_count(), "platform": platform.platform(terse=True),
            "device": torch.cuda.get_device_name() if cuda else f"CPU ({args.threads} threads)",
            "torch": torch.__version__, "threads": torch.get_num_threads(),
            "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "default"),
            "precision": "bf16 autocast" if amp_on(args) else "fp32", "compile": args.compile or "off",
            "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "load_start": _load(), "note": args.note}


def _load() -> str:
    try:
        return f"{os.getloadavg()[0]:.2f}"
    except OSError:
        return "n/a"


def targets(res: dict) -> List[dict]:
    """The targets, checked on the headline case (Swin-B, 224, 0.75) when it ran."""
    out = []
    head = {c["mode"]: c for c in res["cases"] if (c["arch"], c["img_size"], c["mask_ratio"]) == HEADLINE
            and not c.get("error")}

    def add(name, value, ok, fmt="{:.2f}"):
        out.append({"name": name, "measured": fmt.format(value), "met": bool(ok)})

    for mode, what, goal in (("encoder", "encoder fwd+bwd", 4.0), ("step", "whole step (with AdamW)", 3.5)):
        if mode not in head:
            continue
        c = head[mode]
        add(f"{what} speed-up >= {goal}", c["speedup"], c["speedup"] >= goal, "{:.2f}x")
        if "efficiency" in c:
            add(f"{mode} efficiency >= 0.9", c["efficiency"], c["efficiency"] >= 0.9)
        if "mem_reduction" in c:
            add(f"{mode} memory reduction >= 0.75", c["mem_reduction"], c["mem_reduction"] >= 0.75, "{:.3f}")
    for p in res.get("per_sample", []):
        add("per-sample masks overhead <= 5%", 100 * p["overhead"], p["overhead"] <= 0.05, "{:+.1f}%")
    for p in res.get("planning", []):
        if p.get("step_fraction") is not None:
            add(f"plan time (1 thread) <= 1% of the step ({p['masks']}, batch {p['batch']}"
                + (", step time scaled from the measured batch)" if p.get("step_scaled") else ")"),
                100 * p["step_fraction"], p["step_fraction"] <= 0.01, "{:.2f}%")
        if p["batch"] == res["batch_size"]:
            worst = max(max(a, b) for a, b in p["padding"])
            add(f"padding / real tokens <= 0.05 ({p['masks']}; token-weighted, worst stage {worst:.3f})",
                p["weighted_padding"], p["weighted_padding"] <= 0.05, "{:.3f}")
    ld = res.get("loader")
    if ld and ld.get("step_img_per_s"):
        add("loader img/s >= green step img/s", ld["img_per_s"], ld["img_per_s"] >= ld["step_img_per_s"], "{:.1f}")
    return out


def extras(args, res: dict, first: tuple) -> None:
    """Per-sample masks, planning and data loading for case `first` (arch, size, ratio)."""
    res["per_sample"] = [per_sample_overhead(args, *first)]
    done = {c["mode"]: c for c in res["cases"] if (c["arch"], c["img_size"], c["mask_ratio"]) == first
            and not c.get("error")}
    step_case = done.get("step", done.get("encoder"))  # plan time is charged to the whole step
    res["planning"] = []
    for shared, batch in ((True, args.batch_size), (False, args.batch_size), (False, args.plan_batch)):
        p = planning(args, *first, shared=shared, batch=batch)
        if step_case:
            # a step's compute grows linearly with the batch: the measured step scaled to `batch`
            p["step_fraction"] = p["plan_ms"] / 1e3 / (step_case["green_s"] * batch / args.batch_size)
            p["step_scaled"] = batch != args.batch_size
        res["planning"].append(p)
    ld = loader_images_per_s(first[1], args.batch_size, args.loader_workers, num_images=args.loader_images)
    ld["data_desc"] = "500x375 JPEG folder, RandomResizedCrop + flip"
    if "step" in done:
        ld["step_img_per_s"] = done["step"]["green_img_per_s"]
        ld["verdict"] = ("the loader keeps up" if ld["img_per_s"] >= ld["step_img_per_s"]
                         else "the loader is the bottleneck")
    res["loader"] = ld


def save(res: dict, out: str) -> Dict[str, str]:
    """RESULTS.md, the PNG and results.json, as far as the run has got."""
    res["machine"]["load_end"] = _load()
    res["targets"] = targets(res)
    paths = report.write(res, out)
    with open(os.path.join(out, "results.json"), "w") as f:
        json.dump(res, f, indent=1)
    return paths


def main(argv=None) -> Dict:
    args = parse_args(argv)
    if args.render:
        with open(args.render) as f:
            res = json.load(f)
        res["targets"] = targets(res)
        report.write(res, args.out)
        return res
    if args.batch_size is None:
        args.batch_size = 128 if args.device.startswith("cuda") else 8
    if not args.device.startswith("cuda"):
        torch.set_num_threads(args.threads)
    res = {"command": "python tools/benchmarks/suite.py " + " ".join(argv if argv is not None else sys.argv[1:]),
           "machine": machine(args), "batch_size": args.batch_size, "iters": args.iters,
           "warmup": args.warmup, "cases": []}
    cases = grid(args)
    swin = [c for c in cases if c[0].startswith("swin")]
    first = (HEADLINE if HEADLINE in swin else swin[0]) if swin and not args.no_extras else None
    if first:  # the headline case and its extras come first: an interrupted run still has them
        cases = [first] + [c for c in cases if c != first]
    for arch, size, ratio in cases:
        for mode in args.modes:
            t0 = time.perf_counter()
            row = {"arch": arch, "img_size": size, "mask_ratio": ratio, "mode": mode, "batch": args.batch_size}
            try:
                run = run_step_case if mode == "step" else run_encoder_case
                row.update(finish_row(run(args, arch, size, ratio), args.batch_size))
            except Exception as e:  # one failing case (e.g. an arch without a dense path) is reported
                row["error"] = f"{type(e).__name__}: {e}"[:200]
            print(f"[benchmark] {arch} {size} r{ratio} {mode}: "
                  + (row.get("error") or f"{row['speedup']:.2f}x") + f" ({time.perf_counter() - t0:.0f} s)",
                  flush=True)
            res["cases"].append(row)
            save(res, args.out)  # a partial report survives an interrupted run
        if (arch, size, ratio) == first:
            t0 = time.perf_counter()
            extras(args, res, first)
            print(f"[benchmark] per-sample / planning / loader ({time.perf_counter() - t0:.0f} s)", flush=True)
            save(res, args.out)
    paths = save(res, args.out)
    print(f"[benchmark] wrote {paths['markdown']} and {paths['png']}", flush=True)
    return res


if __name__ == "__main__":
    main()
