#!/usr/bin/env python
"""The demo's report: <output>/summary.json from its stages, then <output>/report.md and
<output>/curves.png from summary.json and the stages' logs.

tools/demo.py writes all three as it goes; run this to redo the report and curves of a finished demo:

    python tools/demo_report.py output/demo
    python tools/demo_report.py output/demo --docs docs/images    # + the README's two pictures

report.md holds the AP table, the training curves, a few ground truth | prediction pictures, the
reconstruction figure, the stage times and the machine, every picture embedded by a path relative
to the output folder, so it renders in any Markdown viewer (and on GitHub, folder and all).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import re
import sys
import time
from typing import Dict, List, Optional, Sequence, Tuple
from urllib.parse import quote, unquote

import plot_curves  # beside this script

from greenmim.engine.stages import StageRunner, fmt_time
from greenmim.json_files import write_json

REPORT, CURVES = "report.md", "curves.png"
MAX_DETECTION_PICTURES = 3
AP_KEYS = ("AP", "AP50", "AP75", "APs", "APm", "APl")


def _mmss(seconds: Optional[float]) -> str:
    return "-" if seconds is None else fmt_time(seconds)


def ap_table(rows: Dict[str, Dict]) -> str:
    """rows: label -> COCO metrics {"bbox": {...}, "segm": {...}} -> a Markdown table."""
    head = "| model | task | " + " | ".join(AP_KEYS) + " |"
    lines = [head, "|" + "---|" * (len(AP_KEYS) + 2)]
    for label, metrics in rows.items():
        for task in ("bbox", "segm"):
            m = (metrics or {}).get(task) or {}
            vals = ["-" if m.get(k) is None else f"{m[k]:.1f}" for k in AP_KEYS]
            lines.append(f"| {label} | {'box' if task == 'bbox' else 'mask'} | " + " | ".join(vals) + " |")
    return "\n".join(lines)


def write_summary(runner: StageRunner, s: Dict, results: Dict[str, Dict], wall: float, compare: bool) -> Dict:
    """<out>/summary.json from the demo's settings `s`, its stages' results and times (runner) and
    this run's wall seconds; returns its content."""
    metrics = {}
    if "evaluate" in results:
        metrics["pretrained"] = results["evaluate"]["metrics"]
    if "scratch" in results:
        metrics["random_init"] = results["scratch"]["metrics"]
    pictures = []
    for name in ("detections", "reconstruction"):
        pictures += results.get(name, {}).get("pictures", [])
    stage_times = dict(runner.times)
    if "finetune" in results and results["finetune"].get("inference_seconds") is not None:
        stage_times["finetune"]["of_which_evaluation_seconds"] = round(results["finetune"]["inference_seconds"], 1)
    summary = {
        "output_dir": os.path.abspath(runner.out),
        "settings": {k: v for k, v in s.items() if not k.endswith("_overrides")},
        "machine": {"cpu_count": os.cpu_count(), "load_average_at_end": [round(x, 2) for x in os.getloadavg()]},
        "stages": stage_times,
        "total_seconds": round(sum(t["seconds"] for t in runner.times.values()), 1),
        "this_run_seconds": round(wall, 1),
        "metrics": metrics,
        "box_AP": (metrics.get("pretrained") or {}).get("bbox", {}).get("AP"),
        "mask_AP": (metrics.get("pretrained") or {}).get("segm", {}).get("AP"),
        "pictures": pictures,
        "files": {
            "data": "data",
            "pretrain_checkpoint": "pretrain/checkpoint-last.pth",
            "encoder": "encoder.pth",
            "detector": "finetune/model_final.pth",
            **({"detector_random_init": "finetune_scratch/model_final.pth"} if compare else {}),
            "logs": "logs",
        },
    }
    if compare and "random_init" in metrics:
        summary["random_init_box_AP"] = metrics["random_init"].get("bbox", {}).get("AP")
        summary["random_init_mask_AP"] = metrics["random_init"].get("segm", {}).get("AP")
    write_json(runner.path("summary.json"), summary)
    return summary


def find_logs(out_dir: str) -> List[str]:
    """The training logs of the demo's stages: log.jsonl or metrics.json one or two folders below
    out_dir (finetune/metrics.json, classify/pretrained/log.jsonl), not in the data."""
    logs = []
    for root, dirs, files in os.walk(out_dir):
        depth = os.path.relpath(root, out_dir).count(os.sep) + 1 if root != out_dir else 0
        dirs[:] = sorted(d for d in dirs if depth < 2 and not (depth == 0 and d in ("data", "logs", "stages")))
        if depth:
            logs += [os.path.join(root, name) for name in plot_curves.LOG_NAMES if name in files]
    return logs


def write_curves(out_dir: str, title: Optional[str] = None) -> Tuple[Optional[str], str]:
    """Plots every recognised log under out_dir into <out_dir>/curves.png.
    Returns (the PNG's path relative to out_dir or None, a note on what was plotted or why not)."""
    curves, skipped = [], []
    for path in find_logs(out_dir):
        try:
            curves.append(plot_curves.load_log(path, label=os.path.relpath(os.path.dirname(path), out_dir)))
        except plot_curves.LogError as e:
            skipped.append(str(e))
    if not curves:
        return None, "no training logs found" + (f" ({'; '.join(skipped)})" if skipped else "")
    try:
        plot_curves.plot(curves, os.path.join(out_dir, CURVES), title=title)
    except Exception as e:  # noqa: BLE001 - a failed plot must not fail a finished demo
        return None, f"plotting failed ({type(e).__name__}: {e})"
    note = ", ".join(f"`{os.path.relpath(c.path, out_dir)}` ({c.kind})" for c in curves)
    return CURVES, note


def machine(load_average: Optional[Sequence[float]] = None) -> Dict[str, str]:
    """What the demo ran on, in words (for people comparing times); load_average: the run's
    (summary.json records it at the end), else the current one."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    info = {"CPU": f"{cpu}, {os.cpu_count()} cores",
            "load average at the end (1 / 5 / 15 min)": " / ".join(f"{x:.1f}" for x in load_average or os.getloadavg())}
    try:
        info["memory"] = f"{os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 2**30:.0f} GiB"
    except (ValueError, OSError, AttributeError):
        pass
    info["OS"] = platform.platform()
    info["Python"] = platform.python_version()
    try:
        import torch

        info["torch"] = f"{torch.__version__}, {torch.get_num_threads()} threads"
        if torch.cuda.is_available():
            info["GPU"] = torch.cuda.get_device_name(0)
    except ImportError:
        pass
    return info


def _image(rel: str, alt: str) -> str:
    return f"![{alt}]({quote(rel)})"


def linked_files(markdown: str) -> List[str]:
    """The relative paths of the pictures a report embeds, in order."""
    return [unquote(m) for m in re.findall(r"!\[[^\]]*\]\(([^)]+)\)", markdown)]


def render(summary: Dict, curves: Optional[str], curves_note: str, info: Dict[str, str]) -> str:
    """summary.json's content (+ the curves' relative path) -> report.md's text."""
    s = summary.get("settings", {})
    metrics = summary.get("metrics", {})
    rows = {"GreenMIM-pretrained": metrics.get("pretrained")}
    if "random_init" in metrics:
        rows["random init"] = metrics["random_init"]
    kind = "quick (toy sizes)" if s.get("quick") else "full"
    out = [
        "# GreenMIM demo report",
        "",
        f"{kind} run, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}: "
        f"{_mmss(summary.get('total_seconds'))} (m:ss) "
        f"for all stages, {_mmss(summary.get('this_run_seconds'))} in this run; device {s.get('device', '?')}; "
        f"{s.get('num_train', '?')} train / {s.get('num_val', '?')} val images of {s.get('img_size', '?')} px, "
        f"{s.get('pretrain_epochs', '?')} pretraining epochs, {s.get('finetune_iters', '?')} Mask R-CNN iterations.",
        "",
        "## COCO evaluation on the synthetic val split",
        "",
        ap_table(rows),
    ]
    others = {k: v for k, v in metrics.items() if k not in ("pretrained", "random_init")}
    for name, value in others.items():
        out += ["", f"{name}: `{json.dumps(value)}`"]
    out += ["", "## Training curves", ""]
    out += [_image(curves, "training curves"), "", f"From {curves_note}."] if curves else [f"No curves: {curves_note}."]
    pictures = summary.get("pictures", [])
    detections = [p for p in pictures if p.startswith("detections/")]
    if detections:
        out += ["", "## Detections on val images: ground truth | prediction", ""]
        for p in detections[:MAX_DETECTION_PICTURES]:
            out += [_image(p, os.path.basename(p)), ""]
        if len(detections) > MAX_DETECTION_PICTURES:
            out += [f"{len(detections) - MAX_DETECTION_PICTURES} more in `detections/`."]
        else:
            out.pop()
    for p in (p for p in pictures if p not in detections):
        if p == "reconstruction.png":
            out += ["", "## What the pretrained model fills in", "",
                    "Columns: original | masked input | prediction | its masked units pasted into the original."]
        else:
            out += ["", f"## {os.path.splitext(os.path.basename(p))[0]}"]
        out += ["", _image(p, os.path.basename(p))]
    out += ["", "## Stage times", "", "| stage | wall time (m:ss) | CPU time of the tool (m:ss) | note |",
            "|---|---|---|---|"]
    for name, t in summary.get("stages", {}).items():
        extra = "reused from an earlier run" if t.get("reused") else ""
        if t.get("of_which_evaluation_seconds") is not None:
            extra = ", ".join(filter(None, [extra, f"evaluation {_mmss(t['of_which_evaluation_seconds'])}"]))
        out.append(f"| {name} | {_mmss(t.get('seconds'))} | {_mmss(t.get('cpu_seconds'))} | {extra} |")
    out += ["", "## Machine", ""] + [f"- {k}: {v}" for k, v in info.items()]
    out += ["", "## Files", "", "`summary.json` (everything above, as numbers), `logs/<stage>.log` (each tool's "
            "full output), `stages/<stage>.json` (what a re-run reuses)."]
    return "\n".join(out) + "\n"


def write_report(out_dir: str, summary: Optional[Dict] = None) -> str:
    """Writes <out_dir>/curves.png and <out_dir>/report.md (summary: summary.json's content, read
    from out_dir when None). Returns report.md's path."""
    if summary is None:
        with open(os.path.join(out_dir, "summary.json")) as f:
            summary = json.load(f)
    curves, note = write_curves(out_dir, title="GreenMIM demo: training curves")
    path = os.path.join(out_dir, REPORT)
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(render(summary, curves, note, machine(summary.get("machine", {}).get("load_average_at_end"))))
    os.replace(tmp, path)
    return path


DOCS_MAX_BYTES = 300_000  # pictures committed to the repository stay small


def write_docs_pictures(out_dir: str, docs_dir: str, summary: Dict, picture: str = "") -> List[str]:
    """Copies curves.png and one detection picture (`picture`, default the first) of a finished
    demo into docs_dir as curves.png / detections.png, each under DOCS_MAX_BYTES (a 256-colour
    palette where the full-colour PNG is larger). Returns the paths written."""
    from PIL import Image

    detections = [p for p in summary.get("pictures", []) if p.startswith("detections/")]
    if picture and picture not in detections:
        raise ValueError(f"{picture} is not one of the demo's pictures ({', '.join(detections)})")
    sources = {"curves.png": CURVES, "detections.png": picture or (detections[0] if detections else None)}
    os.makedirs(docs_dir, exist_ok=True)
    written = []
    for name, rel in sources.items():
        if rel is None or not os.path.isfile(os.path.join(out_dir, rel)):
            raise ValueError(f"{out_dir} has no {rel or 'detection picture'}")
        image = Image.open(os.path.join(out_dir, rel)).convert("RGB")
        dst = os.path.join(docs_dir, name)
        image.save(dst, optimize=True)
        if os.path.getsize(dst) > DOCS_MAX_BYTES:
            image.quantize(colors=256).save(dst, optimize=True)
        written.append(dst)
    return written


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("output", nargs="?", default=os.path.join("output", "demo"), help="a demo's output folder")
    p.add_argument("--docs", default="", metavar="DIR",
                   help="also copy curves.png and one detection picture into DIR (the README's docs/images)")
    p.add_argument("--docs-picture", default="", help="which detection picture, e.g. detections/000003.png")
    args = p.parse_args(argv)
    summary_path = os.path.join(args.output, "summary.json")
    try:
        with open(summary_path) as f:
            summary = json.load(f)
    except (OSError, ValueError) as e:
        reason = e.strerror if isinstance(e, OSError) else f"not JSON: {e}"
        print(f"error: cannot read {summary_path} ({reason}); run tools/demo.py --output {args.output} first",
              file=sys.stderr)
        return 2
    print(f"wrote {write_report(args.output, summary)}")
    if args.docs:
        try:
            for path in write_docs_pictures(args.output, args.docs, summary, args.docs_picture):
                print(f"wrote {path} ({os.path.getsize(path) // 1000} KB)")
        except ValueError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
