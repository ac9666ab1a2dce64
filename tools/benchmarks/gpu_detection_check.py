#!/usr/bin/env python
"""The real detection program on a GPU: one `tools/train_net.py` Mask R-CNN run with the Green
Swin-T backbone (configs/detection/mask_rcnn_green_swin_t_fpn_1x.py) on generated COCO-format
shapes, a few iterations then COCO evaluation; one line in $OUT/gpu_detection.jsonl and a
Markdown table in $OUT/gpu_detection.md, pass or fail, plus the end of the run's log.

    python tools/benchmarks/gpu_detection_check.py --out $OUT                 # CUDA, Swin-T at 800 px
    python tools/benchmarks/gpu_detection_check.py --out /tmp/d --device cpu  # tiny model, 128 px

tools/benchmarks/gpu_detection_check.sh installs detectron2 first where it is absent and then
runs this; it calls `--setup-error MSG` to write the failure row when that install fails. This
file needs only the standard library, numpy and PIL (the data are drawn with PIL, not OpenCV,
which a GPU machine may lack); detectron2 runs in the train_net subprocess alone.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time
from typing import Dict, List, Optional

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CONFIG = os.path.join("configs", "detection", "mask_rcnn_green_swin_t_fpn_1x.py")
CLASSES = ("rectangle", "ellipse", "triangle")
DATASET = "greenmim_gpu_check"

# Swin-T itself on CUDA; on a CPU the layout of tests/test_detection.py's tiny model, so that the
# dry run of this script takes seconds (the CPU tests cover that model's training in depth).
CPU_TINY = [
    "model.backbone.bottom_up.embed_dim=16",
    "model.backbone.bottom_up.depths=[1,1,1,1]",
    "model.backbone.bottom_up.num_heads=[1,1,1,1]",
    "model.backbone.out_channels=32",
    "model.roi_heads.box_head.fc_dims=[64,64]",
    "model.roi_heads.box_predictor.input_shape.channels=64",
    "model.roi_heads.mask_head.conv_dims=[32,32]",
    "model.roi_heads.batch_size_per_image=64",
    "model.proposal_generator.pre_nms_topk=[400,200]",
    "model.proposal_generator.post_nms_topk=[200,100]",
]
CPU_SIDE = 128


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default=os.environ.get("OUT", "gpu_detection_out"))
    p.add_argument("--device", default="cuda", help="cuda (Swin-T, 640x480 images) or cpu (tiny model, 128 px)")
    p.add_argument("--work-dir", default=os.path.join(os.environ.get("TMPDIR", "/tmp"), "greenmim_gpu_detection"),
                   help="generated data and the run's output_dir (nothing of it is kept)")
    p.add_argument("--tiny", action=argparse.BooleanOptionalAction, default=None,
                   help="the tiny model at 128 px instead of Swin-T at 800 px (default: on a CPU only)")
    p.add_argument("--iters", type=int, default=None, help="training iterations (cuda 30, cpu 4)")
    p.add_argument("--batch-size", type=int, default=None, help="total batch (cuda 8, cpu 2)")
    p.add_argument("--num-train", type=int, default=None, help="generated training images (cuda 48, cpu 8)")
    p.add_argument("--num-val", type=int, default=None, help="generated evaluation images (cuda 16, cpu 4)")
    p.add_argument("--workers", type=int, default=None, help="loader workers (cuda 4, cpu 0)")
    p.add_argument("--timeout-s", type=int, default=240, help="the train_net run's wall-clock limit")
    p.add_argument("--setup-s", type=float, default=None, help="seconds the detectron2 install took (reported)")
    p.add_argument("--setup", default="", help="how detectron2 got here (reported)")
    p.add_argument("--setup-log", default=None, help="the install's output: its end goes first in the log")
    p.add_argument("--setup-error", default=None, help="write the failure row for a failed install and stop")
    return p.parse_args(argv)


def defaults(args) -> argparse.Namespace:
    cuda = args.device.startswith("cuda")
    if args.tiny is None:
        args.tiny = not cuda
    for name, on_cuda, on_cpu in (("iters", 30, 4), ("batch_size", 8, 2), ("num_train", 48, 8),
                                  ("num_val", 16, 4), ("workers", 4, 0)):
        if getattr(args, name) is None:
            setattr(args, name, on_cuda if cuda else on_cpu)
    return args


# ------------------------------------------------------------------------------------- data

def _shape_polygon(kind: str, cx: float, cy: float, rx: float, ry: float, angle: float) -> List[float]:
    if kind == "rectangle":
        corners = [(-rx, -ry), (rx, -ry), (rx, ry), (-rx, ry)]
    elif kind == "triangle":
        corners = [(0.0, -ry), (rx, ry), (-rx, ry)]
    else:  # ellipse as a 24-gon: COCO segmentations are polygons
        corners = [(rx * math.cos(2 * math.pi * k / 24), ry * math.sin(2 * math.pi * k / 24)) for k in range(24)]
    c, s = math.cos(angle), math.sin(angle)
    flat: List[float] = []
    for x, y in corners:
        flat += [round(cx + c * x - s * y, 2), round(cy + s * x + c * y, 2)]
    return flat


def _polygon_area(flat: List[float]) -> float:
    xs, ys = flat[0::2], flat[1::2]
    return abs(sum(xs[i] * ys[i - 1] - xs[i - 1] * ys[i] for i in range(len(xs)))) / 2


def make_coco(root: str, num_train: int, num_val: int, width: int, height: int, seed: int = 0) -> Dict[str, str]:
    """COCO instance-segmentation json + JPEGs of 1-4 filled shapes per image, one per grid cell
    (no occlusion, so every polygon is its object's true mask). Returns the paths train_net needs."""
    import numpy as np
    from PIL import Image, ImageDraw

    rng = random.Random(seed)
    paths = {}
    categories = [{"id": i + 1, "name": n, "supercategory": "shape"} for i, n in enumerate(CLASSES)]
    for split, count in (("train", num_train), ("val", num_val)):
        image_dir = os.path.join(root, split)
        os.makedirs(image_dir, exist_ok=True)
        images, annotations = [], []
        cols, rows = 2, 2
        cell_w, cell_h = width / cols, height / rows
        for i in range(count):
            noise = np.random.default_rng(seed * 100003 + i + (0 if split == "train" else 50000))
            base = noise.integers(40, 200, (height // 8 + 1, width // 8 + 1, 3)).astype(np.uint8)
            img = Image.fromarray(np.kron(base, np.ones((8, 8, 1), np.uint8))[:height, :width])
            draw = ImageDraw.Draw(img)
            cells = rng.sample(range(cols * rows), rng.randint(1, cols * rows))
            for cell in cells:
                kind = rng.randrange(len(CLASSES))
                rx = rng.uniform(0.18, 0.42) * cell_w
                ry = rng.uniform(0.18, 0.42) * cell_h
                cx = (cell % cols + 0.5) * cell_w + rng.uniform(-0.05, 0.05) * cell_w
                cy = (cell // cols + 0.5) * cell_h + rng.uniform(-0.05, 0.05) * cell_h
                poly = _shape_polygon(CLASSES[kind], cx, cy, rx, ry, rng.uniform(0, math.pi / 6))
                # the class's own colour channel lit: a cue a few iterations can start to learn
                colour = tuple(255 if k == kind else rng.randint(0, 90) for k in range(3))
                draw.polygon(list(zip(poly[0::2], poly[1::2])), fill=colour)
                xs, ys = poly[0::2], poly[1::2]
                x0, y0 = max(0.0, min(xs)), max(0.0, min(ys))
                x1, y1 = min(float(width), max(xs)), min(float(height), max(ys))
                annotations.append({"id": len(annotations) + 1, "image_id": i + 1, "category_id": kind + 1,
                                    "segmentation": [poly], "area": round(_polygon_area(poly), 2),
                                    "bbox": [round(x0, 2), round(y0, 2), round(x1 - x0, 2), round(y1 - y0, 2)],
                                    "iscrowd": 0})
            name = f"{split}_{i:04d}.jpg"
            img.save(os.path.join(image_dir, name), quality=92)
            images.append({"id": i + 1, "file_name": name, "width": width, "height": height})
        json_file = os.path.join(root, "annotations", f"instances_{split}.json")
        os.makedirs(os.path.dirname(json_file), exist_ok=True)
        with open(json_file, "w") as f:
            json.dump({"images": images, "annotations": annotations, "categories": categories}, f)
        paths[f"{split}_json"], paths[f"{split}_images"] = json_file, image_dir
    return paths


# ---------------------------------------------------------------------------- command line

def train_net_command(args, data: Dict[str, str], output_dir: str, python: str = sys.executable) -> List[str]:
    """tools/train_net.py with the Swin-T config, pointed at `data` (what configs/detection's
    dataset docstring documents for any COCO-format set)."""
    opts = [
        f"model.roi_heads.num_classes={len(CLASSES)}",
        f"dataloader.train.dataset.names={DATASET}_train",
        f"dataloader.train.dataset.json_file={data['train_json']}",
        f"dataloader.train.dataset.image_root={data['train_images']}",
        f"dataloader.test.dataset.names={DATASET}_val",
        f"dataloader.test.dataset.json_file={data['val_json']}",
        f"dataloader.test.dataset.image_root={data['val_images']}",
        f"dataloader.train.total_batch_size={args.batch_size}",
        f"dataloader.train.num_workers={args.workers}",
        f"dataloader.test.num_workers={args.workers}",
        # a barely trained model still returns detections, so AP is a number
        "model.roi_heads.box_predictor.test_score_thresh=0.0",
        f"train.max_iter={args.iters}",
        "train.eval_period=0",  # evaluated once, after the last iteration
        f"train.log_period={max(1, args.iters // 6)}",
        "train.seed=0",
        "train.checkpointer.period=100000",
        f"train.output_dir={output_dir}",
        f"train.device={args.device}",
    ]
    if args.tiny:
        opts += CPU_TINY + [
            f"dataloader.train.mapper.augmentations.0.short_edge_length={CPU_SIDE}",
            f"dataloader.train.mapper.augmentations.0.max_size={CPU_SIDE}",
            f"dataloader.test.mapper.augmentations.0.short_edge_length={CPU_SIDE}",
            f"dataloader.test.mapper.augmentations.0.max_size={CPU_SIDE}",
        ]
    return [python, os.path.join(ROOT, "tools", "train_net.py"), "--config-file", os.path.join(ROOT, CONFIG)] + opts


# -------------------------------------------------------------------------------- results

def _error_line(text: str, rc: Optional[int]) -> str:
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    for ln in reversed(lines):
        if ln.startswith("error:"):
            return ln
    for ln in reversed(lines):
        if re.match(r"^[\w.]*(Error|Exception|Interrupt)\b", ln):
            return ln
    return f"train_net exited with status {rc}" if rc is not None else "train_net did not finish"


def read_run(output_dir: str, text: str, rc: Optional[int], max_iter: int) -> dict:
    """What the run left: losses from metrics.json, speed and memory from the log, AP from the
    evaluator's coco_metrics.json; `problems` lists every reason it does not pass."""
    row: dict = {"rc": rc, "problems": []}
    losses = []
    iterations = 0
    metrics_path = os.path.join(output_dir, "metrics.json")
    if os.path.exists(metrics_path):
        with open(metrics_path) as f:
            for line in f:
                try:
                    m = json.loads(line)
                except ValueError:
                    continue
                if "total_loss" in m:
                    losses.append(m["total_loss"])
                    iterations = max(iterations, int(m.get("iteration", -1)) + 1)
    row["iterations"] = iterations
    if losses:
        row["first_loss"], row["last_loss"] = round(losses[0], 4), round(losses[-1], 4)
    speed = re.findall(r"Overall training speed: (\d+) iterations in \S+ \(([\d.]+) s / it\)", text)
    if speed:
        row["s_per_iter"] = float(speed[-1][1])
    mem = re.findall(r"max_mem: (\d+)M", text)
    if mem:
        row["max_mem_mb"] = max(int(m) for m in mem)
    coco_path = os.path.join(output_dir, "inference", "coco_metrics.json")
    if os.path.exists(coco_path):
        with open(coco_path) as f:
            coco = json.load(f)
        row["eval_backend"] = coco.get("backend")
        for task, key in (("bbox", "box"), ("segm", "mask")):
            for metric in ("AP", "AP50"):
                value = coco.get("metrics", {}).get(task, {}).get(metric)
                if value is not None:
                    row[f"{key}_{metric}"] = round(float(value), 2)

    if rc != 0:
        row["problems"].append(_error_line(text, rc))
    if iterations != max_iter:
        row["problems"].append(f"{iterations} of {max_iter} iterations logged")
    if not losses or not all(math.isfinite(v) for v in losses):
        row["problems"].append("no finite total_loss logged" if not losses else "a non-finite total_loss")
    for key in ("box_AP", "mask_AP"):
        if not (isinstance(row.get(key), float) and math.isfinite(row[key])):
            row["problems"].append(f"no {key.replace('_', ' ')} from the evaluation")
    return row


def environment(device: str) -> dict:
    env = {"device": device, "python": sys.version.split()[0]}
    try:
        import torch
        env["torch"] = torch.__version__
        if device.startswith("cuda") and torch.cuda.is_available():
            env["gpu"] = torch.cuda.get_device_name(0)
    except Exception as e:  # the row is written whatever state the machine's torch is in
        env["torch"] = f"unusable: {type(e).__name__}"
    return env


def write_report(out: str, row: dict) -> None:
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "gpu_detection.jsonl"), "w") as f:
        f.write(json.dumps(row) + "\n")
    def cell(key, fmt="{}"):
        return fmt.format(row[key]) if row.get(key) is not None else ""
    notes = "; ".join(row["problems"]) or ""
    lines = [f"# tools/train_net.py, Mask R-CNN + Green Swin-T, on {row.get('gpu', row['device'])}", "",
             f"torch {row.get('torch', '?')}; detectron2: {row.get('setup') or '?'}; generated COCO-format "
             f"shapes ({row.get('num_train', '?')} training / {row.get('num_val', '?')} evaluation images).", "",
             "| run | status | device | iterations | batch | s/iter | first loss | last loss | box AP | box AP50 "
             "| mask AP | mask AP50 | eval backend | max mem MB | setup s | wall s | notes |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
             f"| {row['run']} | {row['status']} | {row['device']} | {cell('iterations')} | {cell('batch_size')} | "
             f"{cell('s_per_iter', '{:.3f}')} | {cell('first_loss')} | {cell('last_loss')} | {cell('box_AP')} | "
             f"{cell('box_AP50')} | {cell('mask_AP')} | {cell('mask_AP50')} | {cell('eval_backend')} | "
             f"{cell('max_mem_mb')} | {cell('setup_s', '{:.0f}')} | {cell('wall_s', '{:.0f}')} | {notes} |"]
    with open(os.path.join(out, "gpu_detection.md"), "w") as f:
        f.write("\n".join(lines) + "\n")


def main(argv=None) -> int:
    args = defaults(parse_args(argv))
    start = time.perf_counter()
    row = {"run": "train_net mask_rcnn green swin_t" + (" (tiny)" if args.tiny else ""), "status": "FAIL",
           **environment(args.device),
           "setup": args.setup, "setup_s": args.setup_s, "max_iter": args.iters, "batch_size": args.batch_size,
           "amp": args.device.startswith("cuda"),  # the config's train.amp, which train_net keeps for CUDA only
           "num_train": args.num_train, "num_val": args.num_val, "problems": []}
    if args.setup_error is not None:
        row["problems"].append(args.setup_error)
        write_report(args.out, row)
        print(json.dumps(row), flush=True)
        return 1

    shutil.rmtree(args.work_dir, ignore_errors=True)
    data = make_coco(os.path.join(args.work_dir, "data"), args.num_train, args.num_val,
                     *((CPU_SIDE, CPU_SIDE) if args.tiny else (640, 480)))
    output_dir = os.path.join(args.work_dir, "train")
    cmd = train_net_command(args, data, output_dir)
    row["command"] = " ".join(cmd[1:]).replace(ROOT + os.sep, "")
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    # the checkout's two packages, as the GPU machine runs the project (no install)
    env["PYTHONPATH"] = os.pathsep.join([os.path.join(ROOT, "pretrain"), os.path.join(ROOT, "projects", "GreenMIM")]
                                        + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    print(f"[detection check] {row['command']}", flush=True)
    # its own process group: on a timeout its loader workers go too, and with them the pipe
    proc = subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, errors="replace", start_new_session=True)
    try:
        text, _ = proc.communicate(timeout=args.timeout_s)
        rc = proc.returncode
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        text, _ = proc.communicate()
        text += f"\nerror: train_net ran past {args.timeout_s} s\n"
        rc = None
    row["wall_s"] = round(time.perf_counter() - start, 1)
    text = re.sub(r"\x1b\[[0-9;]*m", "", text)  # detectron2 prints the config in colour
    row.update(read_run(output_dir, text, rc, args.iters))
    row["status"] = "pass" if not row["problems"] else "FAIL"
    os.makedirs(args.out, exist_ok=True)
    head = []
    if args.setup_log and os.path.exists(args.setup_log):
        with open(args.setup_log, errors="replace") as f:
            head = f.read().splitlines()[-40:] + ["", f"$ {row['command']}"]
    with open(os.path.join(args.out, "gpu_detection.log"), "w") as f:
        f.write("\n".join(head + text.splitlines()[-300:]) + "\n")
    write_report(args.out, row)
    print(json.dumps(row), flush=True)
    print(f"[detection check] {row['status']}" + (f": {'; '.join(row['problems'])}" if row["problems"] else ""),
          flush=True)
    return 0 if row["status"] == "pass" else 1


if __name__ == "__main__":
    sys.exit(main())
