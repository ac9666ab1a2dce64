#!/usr/bin/env python
"""The GreenMIM demo: the whole job, end to end, on generated data and a CPU, in about 20 minutes.

    make demo                        # = .venv/bin/python tools/demo.py  (output/demo)
    make demo-compare                # also fine-tunes from random init, to show what pretraining buys
    python tools/demo.py --output /tmp/demo --restart     # another folder; redo every stage
    python tools/demo.py --quick     # a tiny version of every stage in about a minute (tests)

Stages (each runs one of the repository's command-line tools; the command is printed and its
full output goes to <output>/logs/<stage>.log):

    1 data            tools/make_synthetic_coco.py      COCO-format shapes, 300 train / 60 val, 192 px
    2 pretrain        pretrain/main_pretrain.py         green MIM of a small Swin on the train images
    3 export          tools/export_encoder.py           encoder weights in the Swin layout
    4 finetune        tools/train_net.py                Mask R-CNN from that encoder (evaluates at the end)
    5 evaluate        (reads the COCO metrics)          box and mask AP table
    6 detections      tools/visualize_detections.py     ground truth | prediction PNGs of val images
    7 reconstruction  tools/visualize_reconstruction.py what the pretrained model fills in
    8 scratch         tools/train_net.py                (--compare) the same fine-tuning, random init

Everything lands in the output folder, with summary.json (metrics, stage times, pictures) and
report.md (the AP table, curves.png of the training logs, pictures, times, the machine). A stage
that finished writes <output>/stages/<stage>.json; a re-run reuses it when its settings (arguments
and config files) and the stages it depends on are unchanged, so an interrupted demo continues
where it stopped (pretraining resumes from its last checkpoint). --restart redoes everything.
The demo only ever deletes the folders it creates inside the output folder.
One demo at a time per output folder: a second one on a folder in use stops with one line.
"""
from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import re
import resource
import shutil
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PRETRAIN_CONFIG = os.path.join(ROOT, "configs", "demo", "pretrain_swin_demo.yaml")
DETECTION_CONFIG = os.path.join(ROOT, "configs", "demo", "mask_rcnn_green_swin_demo.py")
TRAIN_NAME, VAL_NAME = "greenmim_demo_train", "greenmim_demo_val"

# The demo's default sizes. --quick swaps in QUICK: the same pipeline on a toy model and toy data.
FULL = dict(num_train=300, num_val=60, img_size=192, pretrain_epochs=16, finetune_iters=1000,
            batch_size=4, vis_images=8, rec_images=6, pretrain_overrides=[], detection_overrides=[])
QUICK = dict(
    num_train=16, num_val=4, img_size=128, pretrain_epochs=1, finetune_iters=8, batch_size=2,
    vis_images=2, rec_images=2,
    pretrain_overrides=["model.encoder.embed_dim=16", "model.encoder.depths=[1,1,1,1]",
                        "model.encoder.num_heads=[1,1,1,1]", "model.encoder.window_size=4",
                        "model.decoder_dim=32", "model.decoder_num_heads=2", "train.batch_size=8",
                        "data.num_workers=0"],
    detection_overrides=["model.backbone.out_channels=32", "model.roi_heads.box_head.conv_dims=[32]",
                         "model.roi_heads.box_head.fc_dims=[64]",
                         "model.roi_heads.box_predictor.input_shape.channels=64",
                         "model.roi_heads.mask_head.conv_dims=[32]",
                         "model.roi_heads.batch_size_per_image=32",
                         "model.proposal_generator.pre_nms_topk=[200,100]",
                         "model.proposal_generator.post_nms_topk=[100,50]",
                         "dataloader.train.num_workers=0"],
)

# Stage -> the stages whose outputs it reads (a re-run of one of them re-runs it).
DEPENDS = {
    "data": [],
    "pretrain": ["data"],
    "export": ["pretrain"],
    "finetune": ["data", "export"],
    "evaluate": ["finetune"],
    "detections": ["finetune"],
    "reconstruction": ["pretrain"],
    "scratch": ["data"],
}
# What each stage owns inside the output folder (deleted when the stage is redone).
OWNS = {
    "data": ["data"],
    "pretrain": ["pretrain"],
    "export": ["encoder.pth"],
    "finetune": ["finetune"],
    "evaluate": [],
    "detections": ["detections"],
    "reconstruction": ["reconstruction.png"],
    "scratch": ["finetune_scratch"],
}
AP_KEYS = ("AP", "AP50", "AP75", "APs", "APm", "APl")


class DemoError(Exception):
    """A stage failed; the message says which and where its log is."""


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="Stages: data, pretrain, export, finetune, evaluate, detections, "
                                       "reconstruction, scratch (--compare).")
    p.add_argument("--output", default=os.path.join("output", "demo"), help="output folder (default output/demo)")
    p.add_argument("--restart", action="store_true", help="redo every stage instead of reusing finished ones")
    p.add_argument("--compare", action="store_true",
                   help="also fine-tune from random init (same schedule) and report both APs")
    p.add_argument("--quick", action="store_true", help="toy sizes: every stage in about a minute (smoke test)")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"),
                   help="auto: the GPU if there is one, else the CPU")
    p.add_argument("--procs", type=int, default=1,
                   help="training processes (torchrun when > 1; default 1). On the 2-core demo machine 2 "
                        "one-thread processes measured slower than 1 two-thread process")
    p.add_argument("--verbose", action="store_true", help="show the tools' full output, not just progress")
    g = p.add_argument_group("sizes (default: the demo's, or the --quick ones)")
    g.add_argument("--num-train", type=int, help="training images (300)")
    g.add_argument("--num-val", type=int, help="validation images (60)")
    g.add_argument("--img-size", type=int, help="image side in px, multiple of 32 (192)")
    g.add_argument("--pretrain-epochs", type=int, help="pretraining epochs over the train images (16)")
    g.add_argument("--finetune-iters", type=int, help="Mask R-CNN iterations (1000)")
    g.add_argument("--batch-size", type=int, help="Mask R-CNN images per iteration (4)")
    g.add_argument("--seed", type=int, default=0, help="dataset and training seed")
    return p.parse_args(argv)


def resolve_settings(args: argparse.Namespace) -> Dict:
    s = dict(QUICK if args.quick else FULL)
    for key in ("num_train", "num_val", "img_size", "pretrain_epochs", "finetune_iters", "batch_size"):
        value = getattr(args, key)
        if value is not None:
            if value < 1:
                raise SystemExit(f"error: --{key.replace('_', '-')} must be positive, got {value}")
            s[key] = value
    if s["img_size"] % 32:
        raise SystemExit(f"error: --img-size must be a multiple of 32 (the mask unit), got {s['img_size']}")
    s["seed"] = args.seed
    s["quick"] = bool(args.quick)
    if args.device == "auto":
        import torch

        s["device"] = "cuda" if torch.cuda.is_available() else "cpu"
    else:
        s["device"] = args.device
    if args.procs < 1 or s["batch_size"] % args.procs:
        raise SystemExit(f"error: --procs must be positive and divide --batch-size ({s['batch_size']}), "
                         f"got {args.procs}")
    s["procs"] = args.procs
    return s


def _file_hash(path: str) -> str:
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()[:16]


# ------------------------------------------------------------------------------------- running


def _fmt_time(seconds: float) -> str:
    m, s = divmod(int(round(seconds)), 60)
    return f"{m}:{s:02d}"


# detectron2's output is long (config dump, model print); on the console keep the progress lines
_D2_PROGRESS = re.compile(
    r"(eta: |Evaluation results for|^\||Inference done|Total inference time|GreenCheckpointer|"
    r"detections >= |wrote |error|Error|Starting training)"
)


def run_tool(cmd: List[str], log_path: str, show: Optional[Callable[[str], bool]], verbose: bool,
             env_extra: Optional[Dict[str, str]] = None) -> None:
    """Runs cmd (from the repository root), copying its output to log_path and, filtered by
    `show` (None = everything), to the console. Raises DemoError on a non-zero exit."""
    printable = " ".join(os.path.relpath(c, ROOT) if os.path.isabs(c) and c.startswith(ROOT) else c for c in cmd)
    print(f"  $ {printable}", flush=True)
    env = dict(os.environ, PYTHONUNBUFFERED="1", PYTHONWARNINGS="ignore", **(env_extra or {}))
    os.makedirs(os.path.dirname(log_path), exist_ok=True)
    with open(log_path, "wb") as log:
        log.write(f"$ {printable}\n".encode())
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        pending = b""
        while True:
            chunk = os.read(proc.stdout.fileno(), 65536)
            if not chunk:
                break
            log.write(chunk)
            log.flush()
            if show is None or verbose:
                sys.stdout.buffer.write(chunk)
                sys.stdout.flush()
                continue
            pending += chunk
            *lines, pending = re.split(rb"[\r\n]", pending)
            for line in lines:
                text = line.decode("utf-8", "replace")
                if text.strip() and show(text):
                    print("    " + text.strip()[:160], flush=True)
        rc = proc.wait()
    if rc != 0:
        with open(log_path, "rb") as f:
            tail = f.read().decode("utf-8", "replace").splitlines()[-25:]
        print("\n".join("    | " + line for line in tail), file=sys.stderr)
        raise DemoError(f"`{printable}` failed with exit status {rc}; full output in {log_path}")


@dataclass
class Stage:
    name: str
    title: str
    settings: Dict
    run: Callable[[], Dict]  # returns the stage's results (stored in its marker)
    keep_partial: bool = False  # an unfinished run with the same settings continues (pretraining)


@dataclass
class Demo:
    out: str
    settings: Dict
    verbose: bool = False
    markers: Dict[str, Dict] = field(default_factory=dict)
    times: Dict[str, Dict] = field(default_factory=dict)

    # -- paths
    def path(self, *parts: str) -> str:
        return os.path.join(self.out, *parts)

    def marker_path(self, name: str, kind: str = "json") -> str:
        return self.path("stages", f"{name}.{kind}")

    def _read_json(self, path: str) -> Optional[Dict]:
        try:
            with open(path) as f:
                return json.load(f)
        except (OSError, ValueError):
            return None

    def _write_json(self, path: str, obj: Dict) -> None:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        tmp = f"{path}.tmp"
        with open(tmp, "w") as f:
            json.dump(obj, f, indent=2)
        os.replace(tmp, path)

    # -- stage bookkeeping
    def is_fresh(self, stage: Stage) -> bool:
        marker = self._read_json(self.marker_path(stage.name))
        if not marker or marker.get("settings") != stage.settings:
            return False
        for dep in DEPENDS[stage.name]:
            dep_marker = self.markers.get(dep) or self._read_json(self.marker_path(dep))
            if not dep_marker or marker.get("inputs", {}).get(dep) != dep_marker.get("run_id"):
                return False
        return all(os.path.exists(self.path(p)) for p in OWNS[stage.name])

    def clean(self, name: str) -> None:
        for rel in OWNS[name]:
            p = self.path(rel)
            if os.path.isdir(p):
                shutil.rmtree(p)
            elif os.path.exists(p):
                os.remove(p)
        for kind in ("json", "started.json"):
            if os.path.exists(self.marker_path(name, kind)):
                os.remove(self.marker_path(name, kind))

    def execute(self, index: int, total: int, stage: Stage) -> Dict:
        header = f"[{index}/{total}] {stage.title}"
        if self.is_fresh(stage):
            marker = self._read_json(self.marker_path(stage.name))
            print(f"{header}: done before ({_fmt_time(marker['seconds'])}), reusing it", flush=True)
            self.markers[stage.name] = marker
            self.times[stage.name] = {"seconds": marker["seconds"], "cpu_seconds": marker.get("cpu_seconds"),
                                      "reused": True}
            return marker["results"]
        started = self._read_json(self.marker_path(stage.name, "started.json"))
        if os.path.exists(self.marker_path(stage.name)) or not (
            stage.keep_partial and started and started.get("settings") == stage.settings
        ):
            self.clean(stage.name)
        else:
            print(f"{header}: continuing an unfinished run", flush=True)
        print(f"{header} ...", flush=True)
        self._write_json(self.marker_path(stage.name, "started.json"), {"settings": stage.settings})
        load0 = os.getloadavg()
        cpu0 = _children_cpu()
        t0 = time.monotonic()
        results = stage.run()
        seconds = time.monotonic() - t0
        cpu = _children_cpu() - cpu0
        marker = {
            "stage": stage.name,
            "run_id": uuid.uuid4().hex,
            "settings": stage.settings,
            "inputs": {dep: self.markers[dep]["run_id"] for dep in DEPENDS[stage.name]},
            "seconds": round(seconds, 1),
            "cpu_seconds": round(cpu, 1),
            "load_average": [round(x, 2) for x in (*load0, *os.getloadavg())],  # 1/5/15 min at start, end
            "finished": time.strftime("%Y-%m-%d %H:%M:%S"),
            "results": results,
        }
        self._write_json(self.marker_path(stage.name), marker)
        os.remove(self.marker_path(stage.name, "started.json"))
        self.markers[stage.name] = marker
        self.times[stage.name] = {"seconds": marker["seconds"], "cpu_seconds": marker["cpu_seconds"],
                                  "reused": False}
        print(f"    done in {_fmt_time(seconds)} (CPU time of the tool {_fmt_time(cpu)}, "
              f"load average {load0[0]:.1f} -> {os.getloadavg()[0]:.1f})", flush=True)
        return results


def _children_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


# --------------------------------------------------------------------------------------- stages


def _py() -> List[str]:
    return [sys.executable]


def _launcher(procs: int) -> List[str]:
    """The command prefix of a training tool: python, or torchrun with `procs` processes (torchrun
    gives each process one thread, OMP_NUM_THREADS=1)."""
    if procs == 1:
        return _py()
    return _py() + ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(procs)]


def _tool(name: str) -> str:
    return os.path.join(ROOT, "tools", name)


def detection_overrides(demo: Demo, encoder: Dict, output_dir: str, init_checkpoint: str) -> List[str]:
    """train_net.py / visualize_detections.py overrides: data paths, sizes, and the backbone shape
    of the pretraining config (one source of truth for the encoder)."""
    s = demo.settings
    data = demo.path("data")
    img = s["img_size"]
    opts = [
        f"model.backbone.bottom_up.embed_dim={encoder['embed_dim']}",
        f"model.backbone.bottom_up.depths={list(encoder['depths'])}".replace(" ", ""),
        f"model.backbone.bottom_up.num_heads={list(encoder['num_heads'])}".replace(" ", ""),
        f"model.backbone.bottom_up.window_size={encoder['window_size']}",
        f"dataloader.train.dataset.names={TRAIN_NAME}",
        f"dataloader.train.dataset.json_file={os.path.join(data, 'annotations', 'instances_train.json')}",
        f"dataloader.train.dataset.image_root={os.path.join(data, 'train')}",
        f"dataloader.test.dataset.names={VAL_NAME}",
        f"dataloader.test.dataset.json_file={os.path.join(data, 'annotations', 'instances_val.json')}",
        f"dataloader.test.dataset.image_root={os.path.join(data, 'val')}",
        f"dataloader.train.mapper.augmentations.0.short_edge_length={img}",
        f"dataloader.train.mapper.augmentations.0.max_size={img}",
        f"dataloader.test.mapper.augmentations.0.short_edge_length={img}",
        f"dataloader.test.mapper.augmentations.0.max_size={img}",
        f"dataloader.train.total_batch_size={s['batch_size']}",
        f"train.max_iter={s['finetune_iters']}",
        f"train.seed={s['seed']}",
        f"train.device={s['device']}",
        f"train.output_dir={output_dir}",
        f"train.init_checkpoint={init_checkpoint}",
    ]
    return opts + list(s["detection_overrides"])


def read_metrics(finetune_dir: str) -> Optional[Dict]:
    path = os.path.join(finetune_dir, "inference", "coco_metrics.json")
    try:
        with open(path) as f:
            return json.load(f)["metrics"]
    except (OSError, ValueError, KeyError):
        return None


def _inference_seconds(log_path: str) -> Optional[float]:
    """'Total inference time: 0:00:12.345678' of a detectron2 log, in seconds."""
    try:
        with open(log_path, errors="replace") as f:
            text = f.read()
    except OSError:
        return None
    m = re.findall(r"Total inference time: (\d+):(\d+):([\d.]+)", text)
    if not m:
        return None
    h, mi, se = m[-1]
    return int(h) * 3600 + int(mi) * 60 + float(se)


def build_stages(demo: Demo, compare: bool) -> List[Stage]:
    s = demo.settings
    out = demo.path
    logs = lambda name: out("logs", f"{name}.log")  # noqa: E731
    d2_show = _D2_PROGRESS.search

    # the pretraining config, resolved: its encoder is also the detector's backbone
    from greenmim.config import load_config

    pretrain_opts = [
        f"data.path={out('data', 'train')}",
        f"data.img_size={s['img_size']}",
        f"train.epochs={s['pretrain_epochs']}",
        f"seed={s['seed']}",
        f"device={s['device']}",
        f"output_dir={out('pretrain')}",
        "log.vis_every_epochs=0",
        *s["pretrain_overrides"],
    ]
    pcfg = load_config(PRETRAIN_CONFIG, pretrain_opts)
    if int(pcfg["train"]["batch_size"]) % s["procs"]:  # a total batch, split over the processes
        raise SystemExit(f"error: --procs {s['procs']} does not divide the pretraining batch "
                         f"{pcfg['train']['batch_size']} (train.batch_size in {PRETRAIN_CONFIG})")
    encoder = dict(pcfg["model"]["encoder"])
    enc_shape = {k: encoder.get(k) for k in ("embed_dim", "depths", "num_heads", "window_size")}
    if None in enc_shape.values():
        raise SystemExit(f"error: {PRETRAIN_CONFIG} must set model.encoder.embed_dim, depths, num_heads and "
                         "window_size (the demo's detector uses the same encoder)")
    det_hash = _file_hash(DETECTION_CONFIG)
    vis_dir, rec_png = out("detections"), out("reconstruction.png")
    last_ckpt = out("pretrain", "checkpoint-last.pth")

    def data():
        run_tool(_py() + [_tool("make_synthetic_coco.py"), "--out", out("data"), "--num-train", str(s["num_train"]),
                          "--num-val", str(s["num_val"]), "--img-size", str(s["img_size"]), "--seed", str(s["seed"])],
                 logs("data"), None, demo.verbose)
        return {"root": "data"}

    def pretrain():
        run_tool(_launcher(s["procs"]) + [os.path.join(ROOT, "pretrain", "main_pretrain.py"), "--config",
                                           PRETRAIN_CONFIG, *pretrain_opts], logs("pretrain"), None, demo.verbose)
        if not os.path.isfile(last_ckpt):
            raise DemoError(f"pretraining wrote no {last_ckpt}; see {logs('pretrain')}")
        losses, step = [], None
        with open(out("pretrain", "log.jsonl")) as f:
            for line in f:
                rec = json.loads(line)
                step = rec.get("step", step)
                if "loss" in rec:
                    losses.append(rec["loss"])
        return {"checkpoint": os.path.relpath(last_ckpt, demo.out), "steps": step,
                "first_loss": losses[0] if losses else None, "last_loss": losses[-1] if losses else None}

    def export():
        run_tool(_py() + [_tool("export_encoder.py"), last_ckpt, out("encoder.pth")], logs("export"), None, demo.verbose)
        return {"encoder": "encoder.pth"}

    def finetune(init: str, name: str) -> Callable[[], Dict]:
        def run():
            d = out(name)
            run_tool(_launcher(s["procs"]) + [_tool("train_net.py"), "--config-file", DETECTION_CONFIG,
                                              *detection_overrides(demo, enc_shape, d, init)],
                     logs(name), d2_show, demo.verbose)
            metrics = read_metrics(d)
            if metrics is None:
                raise DemoError(f"fine-tuning finished without COCO metrics in {d}/inference; see {logs(name)}")
            return {"model": os.path.relpath(os.path.join(d, "model_final.pth"), demo.out), "metrics": metrics,
                    "inference_seconds": _inference_seconds(logs(name))}
        return run

    def evaluate():
        metrics = read_metrics(out("finetune"))
        if metrics is None:  # e.g. metrics deleted: evaluate the final model again
            run_tool(_py() + [_tool("train_net.py"), "--config-file", DETECTION_CONFIG, "--eval-only",
                              *detection_overrides(demo, enc_shape, out("finetune"), out("finetune", "model_final.pth"))],
                     logs("evaluate"), d2_show, demo.verbose)
            metrics = read_metrics(out("finetune"))
        if metrics is None:
            raise DemoError(f"no COCO metrics in {out('finetune', 'inference')}")
        return {"metrics": metrics}

    def detections():
        opts = detection_overrides(demo, enc_shape, out("finetune"), "")
        opts = [o for o in opts if o.startswith(("model.", "dataloader.test.mapper"))]
        run_tool(_py() + [_tool("visualize_detections.py"), "--config-file", DETECTION_CONFIG,
                          "--checkpoint", out("finetune", "model_final.pth"), "--dataset", VAL_NAME,
                          "--json", out("data", "annotations", "instances_val.json"),
                          "--image-root", out("data", "val"), "--gt", "--max-images", str(s["vis_images"]),
                          "--output", vis_dir, "--device", s["device"], *opts],
                 logs("detections"), None, demo.verbose)
        pngs = sorted(f for f in os.listdir(vis_dir) if f.endswith(".png"))
        if not pngs:
            raise DemoError(f"no pictures in {vis_dir}; see {logs('detections')}")
        return {"pictures": [os.path.join("detections", f) for f in pngs]}

    def reconstruction():
        run_tool(_py() + [_tool("visualize_reconstruction.py"), last_ckpt, "--out", rec_png,
                          "--num", str(s["rec_images"]), "--data-path", out("data", "val"), "--device", s["device"]],
                 logs("reconstruction"), None, demo.verbose)
        return {"pictures": ["reconstruction.png"]}

    data_settings = {k: s[k] for k in ("num_train", "num_val", "img_size", "seed")}
    det_settings = {"config": det_hash, "encoder": enc_shape, "iters": s["finetune_iters"],
                    "batch_size": s["batch_size"], "procs": s["procs"], "img_size": s["img_size"], "seed": s["seed"],
                    "device": s["device"], "overrides": s["detection_overrides"]}
    stages = [
        Stage("data", "generate the synthetic COCO shapes dataset", data_settings, data),
        Stage("pretrain", "green MIM pretraining of a small Swin on the train images",
              {"config": _file_hash(PRETRAIN_CONFIG), "overrides": pretrain_opts[1:]}, pretrain, keep_partial=True),
        Stage("export", "export the pretrained encoder", {}, export),
        Stage("finetune", "Mask R-CNN fine-tuning from the pretrained encoder (+ COCO evaluation)", det_settings,
              finetune(out("encoder.pth"), "finetune")),
        Stage("evaluate", "COCO box and mask AP on the val split", {}, evaluate),
        Stage("detections", "draw detections on val images", {"images": s["vis_images"]}, detections),
        Stage("reconstruction", "reconstruction figure of the pretrained model", {"images": s["rec_images"]},
              reconstruction),
    ]
    if compare:
        stages.append(Stage("scratch", "the same fine-tuning from random init (--compare)", det_settings,
                            finetune("", "finetune_scratch")))
    return stages


# -------------------------------------------------------------------------------------- report


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


def write_summary(demo: Demo, results: Dict[str, Dict], wall: float, compare: bool) -> Dict:
    s = demo.settings
    metrics = {}
    if "evaluate" in results:
        metrics["pretrained"] = results["evaluate"]["metrics"]
    if "scratch" in results:
        metrics["random_init"] = results["scratch"]["metrics"]
    pictures = []
    for name in ("detections", "reconstruction"):
        pictures += results.get(name, {}).get("pictures", [])
    stage_times = dict(demo.times)
    if "finetune" in results and results["finetune"].get("inference_seconds") is not None:
        stage_times["finetune"]["of_which_evaluation_seconds"] = round(results["finetune"]["inference_seconds"], 1)
    summary = {
        "output_dir": os.path.abspath(demo.out),
        "settings": {k: v for k, v in s.items() if not k.endswith("_overrides")},
        "machine": {"cpu_count": os.cpu_count(), "load_average_at_end": [round(x, 2) for x in os.getloadavg()]},
        "stages": stage_times,
        "total_seconds": round(sum(t["seconds"] for t in demo.times.values()), 1),
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
    demo._write_json(demo.path("summary.json"), summary)
    return summary


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    settings = resolve_settings(args)
    out = os.path.abspath(args.output)
    from greenmim.config import UserError
    from greenmim.engine.run_lock import hold_output_dir

    with contextlib.ExitStack() as held:
        try:  # one demo per folder; its own lock name, as its stages lock their subfolders
            held.enter_context(hold_output_dir(out, option="--output", name=".demo.lock"))
        except UserError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        return _demo(args, settings, out)


def _demo(args: argparse.Namespace, settings: Dict, out: str) -> int:
    demo = Demo(out, settings, verbose=args.verbose)
    if args.restart and os.path.isdir(out):
        print(f"--restart: removing the demo's previous results in {out}")
        for name in OWNS:
            demo.clean(name)
        for rel in ("logs", "summary.json", "report.md", "curves.png"):
            p = demo.path(rel)
            if os.path.isdir(p):
                shutil.rmtree(p)
            elif os.path.exists(p):
                os.remove(p)
    os.makedirs(out, exist_ok=True)
    print(f"GreenMIM demo -> {out} ({'quick, toy sizes' if args.quick else 'full'}; device {settings['device']}; "
          f"{os.cpu_count()} CPU cores, load average {os.getloadavg()[0]:.1f})", flush=True)

    t0 = time.monotonic()
    stages = build_stages(demo, args.compare)
    results: Dict[str, Dict] = {}
    try:
        for i, stage in enumerate(stages, 1):
            results[stage.name] = demo.execute(i, len(stages), stage)
            write_summary(demo, results, time.monotonic() - t0, args.compare)
    except DemoError as e:
        print(f"error: {e}\nRe-run the same command to continue from this stage.", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\ninterrupted; re-run the same command to continue where it stopped", file=sys.stderr)
        return 130
    summary = write_summary(demo, results, time.monotonic() - t0, args.compare)

    rows = {"GreenMIM-pretrained": summary["metrics"].get("pretrained")}
    if "random_init" in summary["metrics"]:
        rows["random init"] = summary["metrics"]["random_init"]
    print("\nCOCO evaluation on the synthetic val split:")
    print(ap_table(rows))
    print("\nStage times (m:ss):  " + ", ".join(
        f"{n} {_fmt_time(t['seconds'])}{' (reused)' if t['reused'] else ''}" for n, t in demo.times.items()))
    print(f"Total {_fmt_time(summary['total_seconds'])} (this run {_fmt_time(summary['this_run_seconds'])})")
    print(f"Pictures: {', '.join(os.path.join(args.output, p) for p in summary['pictures'][:3])}"
          f"{' ...' if len(summary['pictures']) > 3 else ''}")
    print(f"Summary: {os.path.join(args.output, 'summary.json')}")
    from demo_report import write_report  # beside this script: the report and curves.png

    report = write_report(out, summary)
    print(f"Report (AP table, training curves, pictures, stage times): "
          f"{os.path.join(args.output, os.path.relpath(report, out))}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
