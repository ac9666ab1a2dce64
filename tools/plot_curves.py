#!/usr/bin/env python
"""Training curves of GreenMIM runs in one PNG: pretraining, detection and classification logs.

    python tools/plot_curves.py output/demo/pretrain/log.jsonl output/demo/finetune/metrics.json --out curves.png
    python tools/plot_curves.py output/demo/pretrain output/demo/finetune output/demo/finetune_scratch --out c.png

Each LOG is a JSON-lines file, or a folder holding one (log.jsonl or metrics.json); its kind is
recognised by its keys:

    pretraining     greenmim's log.jsonl (step, loss, lr)                -> loss and learning rate per step
    detection       detectron2's metrics.json (iteration, total_loss,    -> losses per iteration, box / mask AP
                    loss_*, bbox/AP, segm/AP)
    classification  a classifier's log.jsonl (per epoch: epoch,          -> losses, top-1 / top-5 accuracy per epoch
                    train_loss, val_acc1, val_acc5; per step: loss)

Logs of one kind share their panels, each labelled by its folder. Lines that are not JSON (the last
line of a run killed while writing it) are skipped with a note; a step logged twice (a resumed run
logs the steps after its last checkpoint again) keeps the later value.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

LOG_NAMES = ("log.jsonl", "metrics.json")  # what a folder given as LOG is searched for
KINDS = ("pretrain", "detection", "classification")  # panel order
AP_KEYS = ("bbox/AP", "segm/AP")

Series = Tuple[List[float], List[float]]  # (x values, y values), sorted by x


class LogError(Exception):
    """A log that cannot be plotted; the message names the file and what to do."""


@dataclass
class Curves:
    """The plottable series of one log."""
    kind: str  # one of KINDS
    label: str  # legend name (the run's folder)
    path: str
    series: Dict[str, Series] = field(default_factory=dict)
    skipped_lines: int = 0  # lines that were not JSON objects


def read_records(path: str) -> Tuple[List[dict], int]:
    """JSON-lines file -> (the JSON objects, number of lines that were not). Blank lines are ignored."""
    records, bad = [], 0
    with open(path, "rb") as f:
        for raw in f:
            line = raw.decode("utf-8", "replace").strip()
            if not line:
                continue
            try:
                rec = json.loads(line)
            except ValueError:
                bad += 1
                continue
            if isinstance(rec, dict):
                records.append(rec)
            else:
                bad += 1
    return records, bad


def detect_kind(records: Sequence[dict]) -> Optional[str]:
    """The log's kind from its keys (None: not one of KINDS)."""
    keys = set().union(*records) if records else set()
    if keys & {"val_acc1", "val_acc5", "train_loss"}:
        return "classification"
    losses = "total_loss" in keys or any(k.startswith("loss_") for k in keys)
    if "iteration" in keys and (losses or keys & set(AP_KEYS)):
        return "detection"
    if "step" in keys and "loss" in keys:
        return "pretrain"
    return None


def _series(records: Sequence[dict], x_key: str, y_key: str) -> Series:
    """(x, y) of the records holding both keys as finite numbers; a repeated x keeps the later y."""
    points: Dict[float, float] = {}
    for rec in records:
        x, y = rec.get(x_key), rec.get(y_key)
        if _is_number(x) and _is_number(y):
            points[float(x)] = float(y)
    xs = sorted(points)
    return xs, [points[x] for x in xs]


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def extract(kind: str, records: Sequence[dict]) -> Dict[str, Series]:
    """key -> (x, y) for the keys the panels of `kind` draw (empty series left out)."""
    keys = sorted(set().union(*records)) if records else []
    if kind == "pretrain":
        wanted, x_key = ["loss", "lr"], "step"
    elif kind == "detection":
        losses = ["total_loss"] + [k for k in keys if k.startswith("loss_")]
        wanted, x_key = losses + list(AP_KEYS), "iteration"
    else:
        wanted, x_key = ["loss", "train_loss", "val_loss", "val_acc1", "val_acc5"], "epoch"
    out = {k: _series(records, x_key, k) for k in wanted}
    if kind == "classification":  # per-step records (fractional epochs) next to the per-epoch means
        out["step_loss"] = out.pop("loss")
    if kind == "classification":  # accuracies as fractions (0-1) are drawn in percent like the rest
        for k in ("val_acc1", "val_acc5"):
            xs, ys = out[k]
            if ys and max(ys) <= 1.0:
                out[k] = (xs, [100.0 * y for y in ys])
    return {k: v for k, v in out.items() if v[0]}


def resolve_log(path: str) -> str:
    """A LOG argument -> the JSON-lines file (a folder: its log.jsonl or metrics.json)."""
    if os.path.isdir(path):
        for name in LOG_NAMES:
            if os.path.isfile(os.path.join(path, name)):
                return os.path.join(path, name)
        raise LogError(f"{path}: folder holds no {' or '.join(LOG_NAMES)}; give the log file itself")
    if not os.path.isfile(path):
        raise LogError(f"{path}: no such file")
    return path


def load_log(path: str, label: Optional[str] = None) -> Curves:
    """One log file -> its Curves. Raises LogError for an unknown or empty log."""
    path = resolve_log(path)
    try:
        records, bad = read_records(path)
    except OSError as e:
        raise LogError(f"{path}: cannot read ({e.strerror})") from None
    kind = detect_kind(records)
    if kind is None:
        seen = sorted(set().union(*records))[:8] if records else []
        raise LogError(f"{path}: not a pretraining, detection or classification log (keys seen: "
                       f"{', '.join(seen) or 'none'}); give greenmim's log.jsonl, detectron2's metrics.json "
                       "or a classifier's log.jsonl")
    curves = Curves(kind, label or os.path.basename(os.path.dirname(os.path.abspath(path))), path,
                    extract(kind, records), bad)
    if not curves.series:
        raise LogError(f"{path}: a {kind} log without a single complete record to plot")
    return curves


# --------------------------------------------------------------------------------------- drawing

# (title, x label, y label, series keys, log-scale y) of each kind's two panels
PANELS = {
    "pretrain": [("pretraining: reconstruction loss", "optimizer step", "loss (MSE)", ["loss"], False),
                 ("pretraining: learning rate", "optimizer step", "learning rate", ["lr"], False)],
    "detection": [("detection fine-tuning: losses", "iteration", "loss (log scale)", None, True),
                  ("detection: COCO AP on val", "iteration", "AP (%)", list(AP_KEYS), False)],
    "classification": [("classification fine-tuning: loss", "epoch", "loss (cross-entropy)",
                        ["step_loss", "train_loss", "val_loss"], False),
                       ("classification: val accuracy", "epoch", "accuracy (%)", ["val_acc1", "val_acc5"], False)],
}
NAMES = {"loss": "loss", "lr": "lr", "total_loss": "total", "bbox/AP": "box AP", "segm/AP": "mask AP",
         "step_loss": "train loss per step", "train_loss": "train loss (epoch mean)", "val_loss": "val loss",
         "val_acc1": "top-1", "val_acc5": "top-5"}


def _draw_panel(ax, runs: List[Curves], title: str, xlabel: str, ylabel: str, keys: Optional[List[str]],
                log_y: bool) -> None:
    import matplotlib.ticker as mticker

    drawn = 0
    styles = ["-", "--", ":", "-."]
    for r_i, run in enumerate(runs):
        color = f"C{r_i}"
        run_keys = keys
        if run_keys is None:  # detection losses: every component of one run, only the totals of several
            run_keys = ["total_loss"] if len(runs) > 1 else [k for k in run.series if k.startswith(("total", "loss_"))]
        for k_i, key in enumerate(run_keys):
            if key not in run.series:
                continue
            xs, ys = run.series[key]
            name = NAMES.get(key, key.replace("loss_", ""))
            label = name if len(runs) == 1 else f"{run.label}: {name}"
            if len(runs) == 1 and len(run_keys) > 1:
                color = f"C{k_i}"
            few = len(xs) <= 3  # e.g. an AP evaluated once: a marker, its value in the legend
            if few and "%" in ylabel:
                label = f"{label}: {ys[-1]:.1f}"
            ax.plot(xs, ys, styles[k_i % len(styles)] if len(runs) > 1 else "-", color=color, label=label,
                    marker="o" if few else None, linewidth=2.0 if key == "total_loss" else 1.3,
                    alpha=0.5 if key == "step_loss" else 1.0)
            drawn += 1
    ax.set_title(title, fontsize=12)
    ax.set_xlabel(xlabel, fontsize=10)
    ax.set_ylabel(ylabel, fontsize=10)
    ax.grid(True, alpha=0.3)
    if drawn == 0:
        ax.text(0.5, 0.5, "not logged", ha="center", va="center", transform=ax.transAxes, color="gray")
        return
    ax.xaxis.set_major_locator(mticker.MaxNLocator(integer=True))  # steps, iterations, epochs
    if "%" in ylabel:  # from 0, with room above the top value for the legend
        top = max(max(r.series[k][1]) for r in runs for k in keys if k in r.series)
        ax.set_ylim(0, min(105.0, 1.25 * top) or 1.0)
    if log_y:
        ax.set_yscale("log")
    else:
        ax.yaxis.set_major_formatter(mticker.ScalarFormatter(useMathText=True))
        ax.ticklabel_format(axis="y", style="sci", scilimits=(-3, 4))
    ax.legend(fontsize=9, loc="best")


def plot(curves: Sequence[Curves], out_path: str, title: Optional[str] = None, dpi: int = 100) -> str:
    """Draws two panels per kind of log (rows in KINDS order) into out_path (PNG); returns it."""
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    kinds = [k for k in KINDS if any(c.kind == k for c in curves)]
    if not kinds:
        raise LogError("no logs to plot")
    fig, axes = plt.subplots(len(kinds), 2, figsize=(12, 3.6 * len(kinds) + (0.4 if title else 0)), squeeze=False)
    for row, kind in zip(axes, kinds):
        runs = [c for c in curves if c.kind == kind]
        for ax, spec in zip(row, PANELS[kind]):
            _draw_panel(ax, runs, *spec)
    if title:
        fig.suptitle(title, fontsize=13)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(out_path)), exist_ok=True)
    fig.savefig(out_path, dpi=dpi)
    plt.close(fig)
    return out_path


def _unique_labels(paths: Sequence[str]) -> List[str]:
    """Folder names, widened to parent/folder where two logs share a folder name."""
    labels = [os.path.basename(os.path.dirname(os.path.abspath(p))) for p in paths]
    if len(set(labels)) < len(labels):
        labels = [os.path.relpath(os.path.dirname(os.path.abspath(p))) for p in paths]
    return labels


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=__doc__.split("\n\n", 1)[1])
    p.add_argument("logs", nargs="+", metavar="LOG", help="log files, or folders holding log.jsonl / metrics.json")
    p.add_argument("--out", default="curves.png", help="PNG to write (default curves.png)")
    p.add_argument("--title", default=None, help="title above the panels")
    args = p.parse_args(argv)
    try:
        files = [resolve_log(path) for path in args.logs]
        curves = [load_log(f, label) for f, label in zip(files, _unique_labels(files))]
    except LogError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for c in curves:
        note = f" ({c.skipped_lines} unreadable line(s) skipped: a run cut while writing)" if c.skipped_lines else ""
        n = max(len(s[0]) for s in c.series.values())
        print(f"{c.path}: {c.kind} log, {n} points{note}")
    print(f"wrote {plot(curves, args.out, args.title)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
