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
import sys
import time
from typing import Callable, Dict, List, Optional, Sequence

from demo_report import ap_table, write_report, write_summary  # beside this script

from greenmim.engine.stages import Stage, StageError, StageRunner, fmt_time, remove, run_tool

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


# detectron2's output is long (config dump, model print); on the console keep the progress lines
_D2_PROGRESS = re.compile(
    r"(eta: |Evaluation results for|^\||Inference done|Total inference time|GreenCheckpointer|"
    r"detections >= |wrote |error|Error|Starting training)"
)


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


def detection_overrides(s: Dict, data: str, encoder: Dict, output_dir: str, init_checkpoint: str) -> List[str]:
    """train_net.py / visualize_detections.py overrides: data paths (the dataset folder `data`),
    sizes (settings `s`), and the backbone shape of the pretraining config (one source of truth
    for the encoder)."""
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


def build_stages(runner: StageRunner, s: Dict, verbose: bool, compare: bool) -> List[Stage]:
    """The demo's stages for settings `s` (resolve_settings), its output folder that of runner."""
    out = runner.path
    logs = lambda name: out("logs", f"{name}.log")  # noqa: E731
    d2_show = _D2_PROGRESS.search

    def tool(cmd: List[str], name: str, show: Optional[Callable[[str], bool]] = None) -> None:
        """Runs one tool from the repository root; its output goes to logs/<name>.log."""
        run_tool(cmd, logs(name), show, verbose, cwd=ROOT)

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
        tool(_py() + [_tool("make_synthetic_coco.py"), "--out", out("data"), "--num-train", str(s["num_train"]),
                      "--num-val", str(s["num_val"]), "--img-size", str(s["img_size"]), "--seed", str(s["seed"])],
             "data")
        return {"root": "data"}

    def pretrain():
        tool(_launcher(s["procs"]) + [os.path.join(ROOT, "pretrain", "main_pretrain.py"), "--config",
                                       PRETRAIN_CONFIG, *pretrain_opts], "pretrain")
        if not os.path.isfile(last_ckpt):
            raise StageError(f"pretraining wrote no {last_ckpt}; see {logs('pretrain')}")
        losses, step = [], None
        with open(out("pretrain", "log.jsonl")) as f:
            for line in f:
                rec = json.loads(line)
                step = rec.get("step", step)
                if "loss" in rec:
                    losses.append(rec["loss"])
        return {"checkpoint": os.path.relpath(last_ckpt, runner.out), "steps": step,
                "first_loss": losses[0] if losses else None, "last_loss": losses[-1] if losses else None}

    def export():
        tool(_py() + [_tool("export_encoder.py"), last_ckpt, out("encoder.pth")], "export")
        return {"encoder": "encoder.pth"}

    def finetune(init: str, name: str) -> Callable[[], Dict]:
        def run():
            d = out(name)
            tool(_launcher(s["procs"]) + [_tool("train_net.py"), "--config-file", DETECTION_CONFIG,
                                          *detection_overrides(s, out("data"), enc_shape, d, init)], name, d2_show)
            metrics = read_metrics(d)
            if metrics is None:
                raise StageError(f"fine-tuning finished without COCO metrics in {d}/inference; see {logs(name)}")
            return {"model": os.path.relpath(os.path.join(d, "model_final.pth"), runner.out), "metrics": metrics,
                    "inference_seconds": _inference_seconds(logs(name))}
        return run

    def evaluate():
        metrics = read_metrics(out("finetune"))
        if metrics is None:  # e.g. metrics deleted: evaluate the final model again
            final = out("finetune", "model_final.pth")
            tool(_py() + [_tool("train_net.py"), "--config-file", DETECTION_CONFIG, "--eval-only",
                          *detection_overrides(s, out("data"), enc_shape, out("finetune"), final)], "evaluate", d2_show)
            metrics = read_metrics(out("finetune"))
        if metrics is None:
            raise StageError(f"no COCO metrics in {out('finetune', 'inference')}")
        return {"metrics": metrics}

    def detections():
        opts = detection_overrides(s, out("data"), enc_shape, out("finetune"), "")
        opts = [o for o in opts if o.startswith(("model.", "dataloader.test.mapper"))]
        tool(_py() + [_tool("visualize_detections.py"), "--config-file", DETECTION_CONFIG,
                      "--checkpoint", out("finetune", "model_final.pth"), "--dataset", VAL_NAME,
                      "--json", out("data", "annotations", "instances_val.json"),
                      "--image-root", out("data", "val"), "--gt", "--max-images", str(s["vis_images"]),
                      "--output", vis_dir, "--device", s["device"], *opts], "detections")
        pngs = sorted(f for f in os.listdir(vis_dir) if f.endswith(".png"))
        if not pngs:
            raise StageError(f"no pictures in {vis_dir}; see {logs('detections')}")
        return {"pictures": [os.path.join("detections", f) for f in pngs]}

    def reconstruction():
        tool(_py() + [_tool("visualize_reconstruction.py"), last_ckpt, "--out", rec_png,
                      "--num", str(s["rec_images"]), "--data-path", out("data", "val"), "--device", s["device"]],
             "reconstruction")
        return {"pictures": ["reconstruction.png"]}

    data_settings = {k: s[k] for k in ("num_train", "num_val", "img_size", "seed")}
    det_settings = {"config": det_hash, "encoder": enc_shape, "iters": s["finetune_iters"],
                    "batch_size": s["batch_size"], "procs": s["procs"], "img_size": s["img_size"], "seed": s["seed"],
                    "device": s["device"], "overrides": s["detection_overrides"]}

    def stage(name: str, title: str, settings: Dict, run: Callable[[], Dict], **kw) -> Stage:
        return Stage(name, title, settings, run, DEPENDS[name], OWNS[name], **kw)

    stages = [
        stage("data", "generate the synthetic COCO shapes dataset", data_settings, data),
        stage("pretrain", "green MIM pretraining of a small Swin on the train images",
              {"config": _file_hash(PRETRAIN_CONFIG), "overrides": pretrain_opts[1:]}, pretrain, keep_partial=True),
        stage("export", "export the pretrained encoder", {}, export),
        stage("finetune", "Mask R-CNN fine-tuning from the pretrained encoder (+ COCO evaluation)", det_settings,
              finetune(out("encoder.pth"), "finetune")),
        stage("evaluate", "COCO box and mask AP on the val split", {}, evaluate),
        stage("detections", "draw detections on val images", {"images": s["vis_images"]}, detections),
        stage("reconstruction", "reconstruction figure of the pretrained model", {"images": s["rec_images"]},
              reconstruction),
    ]
    if compare:
        stages.append(stage("scratch", "the same fine-tuning from random init (--compare)", det_settings,
                            finetune("", "finetune_scratch")))
    return stages


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
    runner = StageRunner(out)
    if args.restart and os.path.isdir(out):
        print(f"--restart: removing the demo's previous results in {out}")
        for name, owns in OWNS.items():
            runner.clean(name, owns)
        for rel in ("logs", "summary.json", "report.md", "curves.png"):
            remove(runner.path(rel))
    os.makedirs(out, exist_ok=True)
    print(f"GreenMIM demo -> {out} ({'quick, toy sizes' if args.quick else 'full'}; device {settings['device']}; "
          f"{os.cpu_count()} CPU cores, load average {os.getloadavg()[0]:.1f})", flush=True)

    t0 = time.monotonic()
    stages = build_stages(runner, settings, args.verbose, args.compare)
    results: Dict[str, Dict] = {}
    try:
        for i, stage in enumerate(stages, 1):
            results[stage.name] = runner.execute(i, len(stages), stage)
            write_summary(runner, settings, results, time.monotonic() - t0, args.compare)
    except StageError as e:
        print(f"error: {e}\nRe-run the same command to continue from this stage.", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\ninterrupted; re-run the same command to continue where it stopped", file=sys.stderr)
        return 130
    summary = write_summary(runner, settings, results, time.monotonic() - t0, args.compare)

    rows = {"GreenMIM-pretrained": summary["metrics"].get("pretrained")}
    if "random_init" in summary["metrics"]:
        rows["random init"] = summary["metrics"]["random_init"]
    print("\nCOCO evaluation on the synthetic val split:")
    print(ap_table(rows))
    print("\nStage times (m:ss):  " + ", ".join(
        f"{n} {fmt_time(t['seconds'])}{' (reused)' if t['reused'] else ''}" for n, t in runner.times.items()))
    print(f"Total {fmt_time(summary['total_seconds'])} (this run {fmt_time(summary['this_run_seconds'])})")
    print(f"Pictures: {', '.join(os.path.join(args.output, p) for p in summary['pictures'][:3])}"
          f"{' ...' if len(summary['pictures']) > 3 else ''}")
    print(f"Summary: {os.path.join(args.output, 'summary.json')}")
    report = write_report(out, summary)
    print(f"Report (AP table, training curves, pictures, stage times): "
          f"{os.path.join(args.output, os.path.relpath(report, out))}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
