#!/usr/bin/env python
"""What pretraining buys a classifier, on the demo's shapes: configs/finetune/demo_shapes.yaml from
random init, from a GreenMIM-pretrained and from a dense SimMIM-pretrained encoder (same epochs,
both wall times reported), with 100% and 10% of the labels.

    python tools/demo_classify.py --out output/demo_classify
    python tools/demo_classify.py --out output/demo_classify --encoder output/demo/pretrain/encoder.pth

The data is a classification split of the demo's five shapes (one shape per image, its class the
label): by default their silhouettes, white on black, of 30-80% of the side and inside the frame
(2500 train / 300 val images, ~27 min on 2 cores); with --clutter the demo's textured shapes on its
cluttered backgrounds, at the demo's sizes but at least --min-size of the side. On clutter a small
Swin from scratch stays at chance at CPU scale, so pretraining has nothing to speed up (see
docs/finetune.md); outlines are learnt, and there pretraining shows its gain. Both pretrainings
run configs/demo/pretrain_swin_demo.yaml (SimMIM with model.type=simmim) at the fine-tuning
config's size and window, for --pretrain-epochs on the split's training images, labels unused:
the semi-supervised setting, where all images are seen unlabelled and 10% of them labelled.
--encoder replaces the green pretraining by a given encoder.

Every stage runs as its own program with OMP_WAIT_POLICY=PASSIVE (idle OpenMP threads sleep
instead of spinning, which matters on a busy machine) and --threads torch threads. Finished
stages are reused with their recorded wall times (OUT/times.json), only under the same settings:
a folder holding a run with other settings is refused. Prints a Markdown table and writes it to
OUT/results.md.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FT_CFG = os.path.join(ROOT, "configs", "finetune", "demo_shapes.yaml")
PRE_CFG = os.path.join(ROOT, "configs", "demo", "pretrain_swin_demo.yaml")


class Stages:
    """Runs stage programs with the demo's thread settings; remembers finished stages' seconds."""

    def __init__(self, out: str, threads: int):
        self.log = os.path.join(out, "stages.log")
        self.times_path = os.path.join(out, "times.json")
        self.times = {}
        if os.path.isfile(self.times_path):
            with open(self.times_path) as f:
                self.times = json.load(f)
        self.env = dict(os.environ, OMP_WAIT_POLICY="PASSIVE", OMP_NUM_THREADS=str(threads),
                        MKL_NUM_THREADS=str(threads))
        self.env["PYTHONPATH"] = os.pathsep.join(
            p for p in (os.path.join(ROOT, "pretrain"), self.env.get("PYTHONPATH")) if p)

    def run(self, name: str, cmd, done: bool = False) -> float:
        """Runs `cmd` (a script and its arguments) unless `done` and timed before; -> seconds."""
        if done and name in self.times:
            return self.times[name]
        print(f"[{time.strftime('%H:%M:%S')}] {name} ...", flush=True)
        t = time.time()
        with open(self.log, "a") as log:
            res = subprocess.run([sys.executable, *cmd], env=self.env, stdout=log, stderr=subprocess.STDOUT)
        if res.returncode:
            sys.exit(f"error: stage {name} failed (exit {res.returncode}), see {self.log}")
        self.times[name] = time.time() - t
        self.save()
        return self.times[name]

    def save(self) -> None:
        with open(self.times_path + ".tmp", "w") as f:
            json.dump(self.times, f, indent=1)
        os.replace(self.times_path + ".tmp", self.times_path)


def _epochs(out_dir: str) -> list:
    path = os.path.join(out_dir, "log.jsonl")
    if not os.path.isfile(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if '"val_acc1"' in line]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", default="output/demo_classify")
    p.add_argument("--encoder", default=None, help="a green-pretrained encoder (default: pretrain one here)")
    p.add_argument("--no-simmim", action="store_true", help="skip the dense SimMIM baseline")
    p.add_argument("--pretrain-epochs", type=int, default=10)
    p.add_argument("--train-per-class", type=int, default=500)
    p.add_argument("--val-per-class", type=int, default=60)
    p.add_argument("--clutter", action="store_true",
                   help="the demo's textured shapes on clutter instead of white silhouettes on black")
    p.add_argument("--min-size", type=float, default=0.25,
                   help="with --sizes demo: smallest shape, a fraction of the image side")
    p.add_argument("--max-strokes", type=int, default=None,
                   help="at most this many background distractor strokes (default: the demo's look, 3-12)")
    p.add_argument("--sizes", default=None, metavar="LO,HI",
                   help="shape sizes drawn in LO-HI of the side, inside the frame, or 'demo': the demo's sizes, "
                        "redrawn below --min-size (default: 0.3,0.8; with --clutter, demo)")
    p.add_argument("--epochs", type=int, default=4, help="fine-tuning epochs with 100%% of the labels")
    p.add_argument("--epochs-10pct", type=int, default=38,
                   help="fine-tuning epochs with 10%% of the labels (about as many steps as --epochs at 100%%)")
    p.add_argument("--threads", type=int, default=min(2, len(os.sched_getaffinity(0))),
                   help="torch / OpenMP threads of every stage")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="more demo_shapes.yaml overrides")
    a = p.parse_args(argv)
    from greenmim.config import ConfigError
    from greenmim.engine.finetune_config import load_finetune_config
    try:
        cfg = load_finetune_config(FT_CFG, a.overrides)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    img, window = cfg["data"]["img_size"], cfg["model"]["encoder"]["window_size"]
    if a.sizes is None:
        a.sizes = "demo" if a.clutter else "0.3,0.8"
    out = os.path.abspath(a.out)
    os.makedirs(out, exist_ok=True)
    st = Stages(out, a.threads)
    # what the stages' results depend on: reusing them under other settings would mix two runs
    settings = {k: v for k, v in sorted(vars(a).items()) if k not in ("out", "threads", "no_simmim")}
    old = st.times.get("settings", None if os.listdir(out) else settings)
    if old != settings and (old is None or len(st.times) > 1):  # refused only with finished stages
        diff = ("none recorded" if old is None else  # a folder of an earlier version, or not ours
                ", ".join(f"{k}: {old.get(k)} -> {v}" for k, v in settings.items() if old.get(k) != v))
        print(f"error: {out} holds a run with other settings ({diff}); choose another --out or delete it",
              file=sys.stderr)
        return 2
    st.times["settings"] = settings
    st.save()
    data = os.path.join(out, "data")
    st.run("data", [os.path.join(ROOT, "tools", "make_synthetic_classification.py"), "--out", data,
                    "--train-per-class", str(a.train_per_class), "--val-per-class", str(a.val_per_class),
                    "--img-size", str(img), "--min-size", str(a.min_size), "--inside",
                    *([] if a.max_strokes is None else ["--max-strokes", str(a.max_strokes)]),
                    *([] if a.sizes == "demo" else ["--sizes", a.sizes]),
                    *([] if a.clutter else ["--silhouette"])], done=os.path.isfile(os.path.join(data, "DONE")))

    starts = [("random init", "rand", "", None)]
    kinds = ([] if a.encoder else ["green"]) + ([] if a.no_simmim else ["simmim"])
    if a.encoder:
        starts.append(("green-pretrained (given)", "green", os.path.abspath(a.encoder), None))
    for kind in kinds:
        pre = os.path.join(out, f"pretrain_{kind}")
        encoder = os.path.join(pre, "encoder.pth")
        secs = st.run(f"pretrain_{kind}", [
            os.path.join(ROOT, "pretrain", "main_pretrain.py"), "--config", PRE_CFG, f"model.type={kind}",
            f"data.path={data}/train", f"output_dir={pre}", f"train.epochs={a.pretrain_epochs}",
            f"data.img_size={img}", f"model.encoder.window_size={window}", "log.progress_bar=false"],
            done=os.path.isfile(encoder))
        name = "GreenMIM-pretrained" if kind == "green" else "SimMIM-pretrained (dense)"
        starts.append((name, kind, encoder, secs))

    rows = []
    for frac, epochs in ((1.0, a.epochs), (0.1, a.epochs_10pct)):
        for name, tag, init, pre_s in starts:
            stage = f"ft_{tag}_{int(frac * 100)}pct"
            run_dir = os.path.join(out, stage)
            finished = any(r["epoch"] == epochs for r in _epochs(run_dir))
            secs = st.run(stage, [os.path.join(ROOT, "pretrain", "main_finetune.py"), "--config", FT_CFG,
                                  f"data.path={data}", f"output_dir={run_dir}", f"model.init={init}",
                                  f"data.train_fraction={frac}", f"train.epochs={epochs}",
                                  f"eval.every_epochs={max(1, epochs // 5)}", "log.progress_bar=false",
                                  *a.overrides], done=finished)
            r = _epochs(run_dir)
            last, best = r[-1]["val_acc1"], max(x["val_acc1"] for x in r)
            pre = "-" if pre_s is None else f"{a.pretrain_epochs} ep, {pre_s / 60:.1f} min"
            rows.append(f"| {name} | {pre} | {int(frac * 100)}% | {epochs} | {last:.1f} | {best:.1f} | "
                        f"{secs / 60:.1f} |")
    table = "\n".join([
        "| encoder | pretraining | labels | fine-tuning epochs | val top-1 (last) | best | minutes |",
        "|---|---|---|---|---|---|---|", *rows])
    load = ", ".join(f"{v:.2f}" for v in os.getloadavg())
    table += (f"\n\n{a.train_per_class * 5} train / {a.val_per_class * 5} val images at {img} px, chance 20%; "
              f"{a.threads} threads; load average at the end {load}.")
    with open(os.path.join(out, "results.md"), "w") as f:
        f.write(table + "\n")
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
