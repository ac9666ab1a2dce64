#!/usr/bin/env python
"""What pretraining buys a classifier, on the demo's shapes: configs/finetune/tiny_cpu.yaml from
random init and from a green-pretrained encoder, with 100% and 10% of the labels.

    python tools/demo_classify.py --out output/demo_classify
    python tools/demo_classify.py --out output/demo_classify --encoder output/demo/pretrain/encoder.pth

Without --encoder it first pretrains configs/demo/pretrain_swin_demo.yaml (--pretrain-epochs) on the
split's training images (labels unused). Every stage runs as its own program with
OMP_WAIT_POLICY=PASSIVE (idle OpenMP threads sleep instead of spinning, which matters on a busy
machine); finished stages are reused (their output folders resume). Prints a Markdown table and
writes it to OUT/results.md.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _stage(cmd, log_path: str) -> float:
    env = dict(os.environ, OMP_WAIT_POLICY="PASSIVE")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (os.path.join(ROOT, "pretrain"), env.get("PYTHONPATH")) if p)
    t = time.time()
    with open(log_path, "a") as log:
        res = subprocess.run([sys.executable, *cmd], env=env, stdout=log, stderr=subprocess.STDOUT)
    if res.returncode:
        sys.exit(f"error: stage failed ({' '.join(cmd[:3])} ...), see {log_path}")
    return time.time() - t


def _final(out_dir: str) -> dict:
    with open(os.path.join(out_dir, "log.jsonl")) as f:
        rows = [json.loads(line) for line in f if '"val_acc1"' in line]
    return rows[-1] if rows else {}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", default="output/demo_classify")
    p.add_argument("--encoder", default=None, help="pretrained encoder (default: pretrain one here)")
    p.add_argument("--pretrain-epochs", type=int, default=16)
    p.add_argument("--train-per-class", type=int, default=40)
    p.add_argument("--val-per-class", type=int, default=20)
    p.add_argument("--epochs", type=int, default=10, help="fine-tuning epochs with 100%% of the labels")
    p.add_argument("--epochs-10pct", type=int, default=50, help="fine-tuning epochs with 10%% of the labels")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("overrides", nargs="*", metavar="key=value", help="more tiny_cpu.yaml overrides")
    a = p.parse_args(argv)
    out = os.path.abspath(a.out)
    os.makedirs(out, exist_ok=True)
    log = os.path.join(out, "stages.log")
    data = os.path.join(out, "data")
    _stage([os.path.join(ROOT, "tools", "make_synthetic_classification.py"), "--out", data,
            "--train-per-class", str(a.train_per_class), "--val-per-class", str(a.val_per_class)], log)
    encoder, pre_s = a.encoder, None
    if encoder is None:
        pre = os.path.join(out, "pretrain")
        pre_s = _stage([os.path.join(ROOT, "pretrain", "main_pretrain.py"), "--config",
                        os.path.join(ROOT, "configs", "demo", "pretrain_swin_demo.yaml"),
                        f"data.path={data}/train", f"output_dir={pre}", f"train.epochs={a.pretrain_epochs}"], log)
        encoder = os.path.join(pre, "encoder.pth")
    rows = []
    for frac, epochs in ((1.0, a.epochs), (0.1, a.epochs_10pct)):
        for name, init in (("random init", ""), ("green-pretrained", encoder)):
            run_dir = os.path.join(out, f"ft_{'pre' if init else 'rand'}_{int(frac * 100)}pct")
            secs = _stage([os.path.join(ROOT, "pretrain", "main_finetune.py"), "--config",
                           os.path.join(ROOT, "configs", "finetune", "tiny_cpu.yaml"), f"data.path={data}",
                           f"output_dir={run_dir}", f"model.init={init}", f"data.train_fraction={frac}",
                           f"train.epochs={epochs}", f"train.batch_size={a.batch_size}",
                           f"eval.every_epochs={max(1, epochs // 10)}",
                           "log.progress_bar=false", *a.overrides], log)
            r = _final(run_dir)
            rows.append(f"| {name} | {int(frac * 100)}% | {epochs} | {r.get('val_acc1', float('nan')):.1f} | "
                        f"{r.get('val_acc5', float('nan')):.1f} | {secs / 60:.1f} |")
    table = "\n".join(["| encoder | labels | epochs | val top-1 | val top-5 | minutes |",
                       "|---|---|---|---|---|---|", *rows])
    if pre_s is not None:
        table += f"\n\nPretraining ({a.pretrain_epochs} epochs): {pre_s / 60:.1f} min."
    with open(os.path.join(out, "results.md"), "w") as f:
        f.write(table + "\n")
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
