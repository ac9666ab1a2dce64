#!/usr/bin/env python
"""The real pretraining program on a GPU, in every mode the README offers: one line per run in
$OUT/gpu_programs.json and gpu_programs.md, pass or fail.

    python tools/benchmarks/gpu_programs.py --out $OUT                   # H100/H200, <= 7 min
    python tools/benchmarks/gpu_programs.py --tiny --device cpu --out /tmp/p --modes eager   # CPU dry run

What runs (`pretrain/main_pretrain.py`, its loader, engine, checkpoints and resume, not a harness):
  * {Swin-B, Twins-SVT-B} x {shared, per-sample masks} x {eager, cuda_graphs, compile}, bf16,
    on a folder of generated JPEGs, 20 steps over two epochs, plus Swin-B shared eager in fp32 and
    Swin-B shared with CUDA graphs and data.decode=auto (the JPEGs decoded on the GPU);
    each must log finite losses, write checkpoint-last.pth and export the encoder, and the first
    step's loss must agree across the modes of an (arch, mask) pair within bf16 tolerance;
  * kill and resume: Swin-B shared with CUDA graphs killed (SIGKILL) at step 15, rerun: it must
    resume from the step-10 checkpoint and log steps 11..20 with the uninterrupted run's losses;
  * two torchrun processes sharing the one GPU (gloo), per-sample masks, CUDA graphs: the same
    losses as one process with the same global batch.
Runs go in parallel (--jobs), compiled ones first. Needs torch, timm, numpy, pyyaml, pillow.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Dict, List, Optional

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BF16_RTOL = 3e-2  # losses of the same batch computed by differently fused bf16 kernels
# The first step after a resume sees the restored weights and the same batch: only the order of
# floating-point reductions may differ. Later steps drift apart by at most the bf16 tolerance.
FIRST_STEP_RTOL = 2e-3
CROSS_MODE_RTOL = 1e-2  # one batch and weights, kernels fused differently (compile) in bf16


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default=os.environ.get("OUT", "gpu_programs_out"))
    p.add_argument("--device", default="cuda")
    p.add_argument("--tiny", action="store_true", help="the tiny CPU configs at 128 px (dry run of this script)")
    p.add_argument("--modes", default="eager,cuda_graphs,compile")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--jobs", type=int, default=6, help="runs at a time (they share the GPU; the compiled "
                   "runs spend minutes compiling on the host)")
    p.add_argument("--workers", type=int, default=3, help="loader workers per run")
    p.add_argument("--timeout-s", type=int, default=360, help="per run")
    p.add_argument("--budget-s", type=float, default=420, help="runs still waiting after this many seconds "
                   "are skipped (and listed), and running ones stopped, so the report is always written")
    return p.parse_args(argv)


def make_jpegs(folder: str, count: int, size=(320, 240)) -> None:
    """`count` JPEGs of smooth random colour fields with a few rectangles (numpy + PIL only)."""
    import numpy as np
    from PIL import Image
    os.makedirs(folder, exist_ok=True)
    rng = np.random.default_rng(0)
    w, h = size
    for i in range(count):
        path = os.path.join(folder, f"img_{i:05d}.jpg")
        if os.path.exists(path):
            continue
        base = rng.random((h // 16 + 1, w // 16 + 1, 3)) * 255
        img = np.kron(base, np.ones((16, 16, 1)))[:h, :w]
        for _ in range(3):
            x0, y0 = rng.integers(0, w - 40), rng.integers(0, h - 40)
            img[y0:y0 + rng.integers(20, 120), x0:x0 + rng.integers(20, 160)] = rng.random(3) * 255
        Image.fromarray(img.astype("uint8")).save(path, quality=90)


def run_spec(name: str, arch: str, shared: bool, mode: str, amp: str, args, data: str,
             extra_env: Optional[dict] = None, nproc: int = 1, out_name: Optional[str] = None,
             extra_overrides: Optional[List[str]] = None) -> dict:
    base = {"swin": "greenmim_swin_base_w7.yaml", "twins": "greenmim_twins_svt_base.yaml"}[arch]
    if args.tiny:
        base = {"swin": "tiny_cpu.yaml", "twins": "twins_tiny_cpu.yaml"}[arch]
    out_dir = os.path.join(args.work, out_name or name.replace(" ", "_"))
    overrides = [f"data.path={data}", f"data.num_workers={args.workers}", "data.pin_memory=true",
                 f"train.batch_size={args.batch_size}", "train.epochs=2", "train.warmup_epochs=0.5",
                 f"train.amp={amp}", f"mask.shared={str(shared).lower()}",
                 "model.static_shapes=true", "mask.in_workers=true", "checkpoint.every_steps=10",
                 "checkpoint.every_epochs=0", "log.every_steps=1", "log.tensorboard=false",
                 "log.progress_bar=false", "log.vis_every_epochs=0", f"device={args.device}",
                 f"output_dir={out_dir}", "resume=auto"]
    overrides += extra_overrides or []
    if mode == "cuda_graphs":
        overrides.append("train.cuda_graphs=true")
    elif mode == "compile":
        overrides.append("train.compile=default")
    launcher = [sys.executable] if nproc == 1 else [sys.executable, "-m", "torch.distributed.run",
                                                    "--standalone", f"--nproc_per_node={nproc}"]
    cmd = launcher + [os.path.join(ROOT, "pretrain", "main_pretrain.py"), "--config",
                      os.path.join(ROOT, "configs", "pretrain", base), *overrides]
    return {"name": name, "arch": arch, "shared": shared, "mode": mode, "amp": amp, "cmd": cmd,
            "out_dir": out_dir, "env": extra_env or {}, "nproc": nproc}


def execute(spec: dict, timeout_s: float) -> dict:
    if timeout_s < 10:
        return {**spec, "rc": "skipped", "tail": "skipped: the time budget was spent", "wall_s": 0.0}
    env = dict(os.environ, PYTHONPATH=os.path.join(ROOT, "pretrain") + os.pathsep + os.environ.get("PYTHONPATH", ""),
               PYTHONUNBUFFERED="1", **spec["env"])
    t0 = time.perf_counter()
    # A session of its own, so a timeout stops torchrun's workers and loader workers too.
    proc = subprocess.Popen(spec["cmd"], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=timeout_s)
        rc = proc.returncode
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        rc = 124
    return {**spec, "rc": rc, "tail": (out or "")[-4000:], "wall_s": time.perf_counter() - t0}


def losses(out_dir: str) -> Dict[int, dict]:
    """step -> the last record logged for it (a resumed run logs its steps again)."""
    path = os.path.join(out_dir, "log.jsonl")
    recs: Dict[int, dict] = {}
    if os.path.exists(path):
        with open(path) as f:
            for line in f:
                r = json.loads(line)
                if "loss" in r:
                    recs[int(r["step"])] = r
    return recs


def close(a: float, b: float, rtol: float) -> bool:
    return abs(a - b) <= rtol * max(abs(a), abs(b), 1e-6)


def judge(r: dict) -> dict:
    """The row of one run: pass when it exited 0 with 20 finite losses, a checkpoint and an export."""
    import math
    recs = losses(r["out_dir"])
    row = {"run": r["name"], "rc": r["rc"], "steps": len(recs), "wall_s": round(r["wall_s"], 1)}
    problems = []
    if r["rc"] == "skipped":
        problems.append("skipped: the time budget was spent")
    elif r["rc"] != 0:
        errs = [ln for ln in r["tail"].splitlines() if ln.startswith("error:") or "Error" in ln]
        problems.append(f"exit {r['rc']}: {(errs or r['tail'].splitlines() or [''])[-1][:300]}")
    if recs:
        row["first_loss"], row["last_loss"] = recs[min(recs)]["loss"], recs[max(recs)]["loss"]
        rates = sorted(v.get("img_per_s", 0.0) for k, v in recs.items() if k > 3)
        row["img_per_s"] = round(rates[len(rates) // 2], 1) if rates else None
        if not all(math.isfinite(v["loss"]) for v in recs.values()):
            problems.append("non-finite loss")
    if len(recs) < 20:
        problems.append(f"{len(recs)} of 20 steps logged")
    row["checkpoint"] = os.path.exists(os.path.join(r["out_dir"], "checkpoint-last.pth"))
    row["encoder"] = os.path.exists(os.path.join(r["out_dir"], "encoder.pth"))
    if not (row["checkpoint"] and row["encoder"]):
        problems.append("no checkpoint-last.pth / encoder.pth")
    row["problems"] = problems
    return row


def compare_first_losses(rows: List[dict], runs: List[dict]) -> None:
    """The first step sees the same images, mask and weights in every mode of an (arch, mask) pair."""
    groups: Dict[tuple, List[dict]] = {}
    for row, r in zip(rows, runs):
        # the resume run repeats a mode; decode=auto decodes the same crops with another decoder
        if (r["nproc"] == 1 and r["amp"] == "bf16" and "first_loss" in row and not r["name"].startswith("resume")
                and "decode" not in r["name"]):
            groups.setdefault((r["arch"], r["shared"]), []).append(row)
    for group in groups.values():
        ref = next((g for g in group if g["run"].endswith("eager")), group[0])
        for g in group:
            g["first_loss_vs_eager"] = round(abs(g["first_loss"] - ref["first_loss"]) / max(abs(ref["first_loss"]), 1e-6), 5)
            if not close(g["first_loss"], ref["first_loss"], CROSS_MODE_RTOL):
                g["problems"].append(f"first loss {g['first_loss']:.5f} differs from eager's {ref['first_loss']:.5f}")


def compare_steps(row: dict, out_dir: str, ref_dir: str, steps, what: str) -> None:
    """The losses of `steps` equal the reference run's: the first within FIRST_STEP_RTOL (a wrong
    batch, mask or weight differs by far more), the rest within the bf16 tolerance."""
    got, ref = losses(out_dir), losses(ref_dir)
    steps = list(steps)

    def ok(s: int) -> bool:
        return s in got and s in ref and close(got[s]["loss"], ref[s]["loss"],
                                               FIRST_STEP_RTOL if s == steps[0] else BF16_RTOL)
    bad = [s for s in steps if not ok(s)]
    row[what] = "equal" if not bad else f"differs at steps {bad[:5]}"
    if bad:
        row["problems"].append(f"{what}: losses differ at steps {bad[:5]}")


def main(argv=None) -> int:
    args = parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    args.work = os.environ.get("GPU_PROGRAMS_WORK", "/tmp/greenmim_gpu_programs")
    start = time.perf_counter()
    data = os.path.join(args.work, "jpegs")
    make_jpegs(data, args.batch_size * 10)  # 10 steps an epoch
    modes = args.modes.split(",")
    specs = []
    for mode in sorted(modes, key=lambda m: m != "compile"):  # compiled runs take longest: first
        for arch in ("swin", "twins"):
            for shared in (True, False):
                specs.append(run_spec(f"{arch} {'shared' if shared else 'per-sample'} {mode}", arch, shared,
                                      mode, "bf16", args, data))
    specs.append(run_spec("swin shared eager fp32", "swin", True, "eager", "none", args, data))
    specs.append(run_spec(f"swin shared {modes[-1] if args.tiny else 'cuda_graphs'} decode=auto", "swin", True,
                          modes[-1] if args.tiny else "cuda_graphs", "bf16", args, data,
                          extra_overrides=["data.decode=auto"], out_name="decode_auto"))
    captured = "cuda_graphs" if "cuda_graphs" in modes else modes[-1]
    specs.append(run_spec(f"resume swin shared {captured}", "swin", True, captured, "bf16", args, data,
                          {"GREENMIM_FAULT": "kill_at_step:15"}, out_name="resume"))
    specs.append(run_spec(f"torchrun x2 swin per-sample {captured}", "swin", False, captured, "bf16", args,
                          data, nproc=2, out_name="torchrun"))
    deadline = start + args.budget_s
    for spec in specs:  # every run starts afresh: an earlier run's logs must not count
        shutil.rmtree(spec["out_dir"], ignore_errors=True)

    def left() -> float:
        return min(args.timeout_s, deadline - time.perf_counter())

    with ThreadPoolExecutor(args.jobs) as pool:
        results = list(pool.map(lambda s: execute(s, left()), specs))
    # The killed run resumes from its step-10 checkpoint.
    resume = next(r for r in results if r["out_dir"].endswith("resume"))
    killed_rc = resume["rc"]
    resumed = execute({**resume, "env": {}}, left())
    results[results.index(resume)] = resumed
    rows = [judge(r) for r in results]
    compare_first_losses(rows, results)
    by_name = {r["name"]: r for r in results}
    resume_row = rows[results.index(resumed)]
    resume_row["killed_rc"] = killed_rc
    if killed_rc != -9:
        resume_row["problems"].append(f"the run was not killed at step 15 (exit {killed_rc})")
    if f"resumed from" not in resumed["tail"] or "at step 10" not in resumed["tail"]:
        resume_row["problems"].append("did not resume from the step-10 checkpoint")
    compare_steps(resume_row, resumed["out_dir"], by_name[f"swin shared {captured}"]["out_dir"],
                  range(11, 21), "resumed_vs_uninterrupted")
    torchrun_row = next(row for row in rows if row["run"].startswith("torchrun"))
    compare_steps(torchrun_row, by_name[torchrun_row["run"]]["out_dir"],
                  by_name[f"swin per-sample {captured}"]["out_dir"], range(1, 21), "two_processes_vs_one")
    for row in rows:
        row["status"] = "pass" if not row["problems"] else "FAIL"
    report = {"device": args.device, "tiny": args.tiny, "batch_size": args.batch_size, "rows": rows,
              "wall_s": round(time.perf_counter() - start, 1)}
    try:
        import torch
        report["torch"] = torch.__version__
        if args.device == "cuda" and torch.cuda.is_available():
            report["gpu"] = torch.cuda.get_device_name(0)
    except ImportError:
        pass
    with open(os.path.join(args.out, "gpu_programs.json"), "w") as f:
        json.dump(report, f, indent=2)
    write_markdown(report, os.path.join(args.out, "gpu_programs.md"))
    for row in rows:
        print(json.dumps(row), flush=True)
    failed = [row["run"] for row in rows if row["problems"]]
    print(f"{len(rows) - len(failed)} of {len(rows)} runs pass in {report['wall_s']:.0f} s"
          + (f"; failed: {', '.join(failed)}" if failed else ""), flush=True)
    return 1 if failed else 0


def write_markdown(report: dict, path: str) -> None:
    lines = [f"# pretrain/main_pretrain.py on {report.get('gpu', report['device'])}", "",
             f"torch {report.get('torch', '?')}; batch {report['batch_size']}, 20 steps over 2 epochs on "
             "generated JPEGs; wall {:.0f} s.".format(report["wall_s"]), "",
             "| run | status | steps | first loss | vs eager | last loss | img/s | checkpoint | encoder | wall s | notes |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in report["rows"]:
        notes = "; ".join(r["problems"]) or r.get("resumed_vs_uninterrupted") or r.get("two_processes_vs_one") or ""
        lines.append(f"| {r['run']} | {r['status']} | {r['steps']} | {r.get('first_loss', float('nan')):.4f} | "
                     f"{r.get('first_loss_vs_eager', '')} | {r.get('last_loss', float('nan')):.4f} | "
                     f"{r.get('img_per_s') or ''} | {r['checkpoint']} | {r['encoder']} | {r['wall_s']} | {notes} |")
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    sys.exit(main())
