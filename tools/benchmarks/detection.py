#!/usr/bin/env python
"""Mask R-CNN speed with our Green Swin backbone vs the same detector on timm's Swin, same weights.

    python tools/benchmarks/detection.py --arch swin_tiny --json out.json
    python tools/benchmarks/detection.py --arch swin_base --size 800 --device cuda --json out.json

Both detectors come from the same config and seed (identical FPN and heads); the second one's
bottom-up network is timm's SwinTransformer (always_partition=True, dynamic masks: shifted windows
in every stage, as in our backbone) loaded with OUR encoder's weights through
timm.models.swin_transformer.checkpoint_filter_fn, followed by the same per-stage output norms.
The script first checks that both backbones compute the same features (max_abs_feature_diff),
then times a training step (forward + backward + optimizer step) and inference, alternating the
two models so that machine noise hits both alike, and reports medians and ratios (ours / timm;
target <= 1.05: ours no slower).
"""
import argparse
import json
import os
import statistics
import tempfile
import time

import torch
from torch import nn

import detectron2.data.transforms as T
from detectron2.config import LazyConfig, instantiate
from detectron2.data import DatasetMapper
from detectron2.modeling.backbone import Backbone
from detectron2.utils.events import EventStorage

from greenmim_det.data import get_coco_dataset_dicts

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # for configs/

ARCH_CONFIG = {
    "swin_tiny": ("t", "swin_tiny_patch4_window7_224"),
    "swin_small": ("s", "swin_small_patch4_window7_224"),
    "swin_base": ("b", "swin_base_patch4_window7_224"),
    "swin_large": ("l", "swin_large_patch4_window7_224"),
}


class TimmSwinBottomUp(Backbone):
    """timm's SwinTransformer as res2..res5 with the same output norms as GreenBackbone."""

    def __init__(self, green, timm_name: str, image_size: int):
        super().__init__()
        import timm
        from timm.models.swin_transformer import checkpoint_filter_fn

        enc = green.encoder
        self.body = timm.create_model(
            timm_name,
            pretrained=False,
            num_classes=0,
            img_size=image_size,
            window_size=enc.window_size,
            embed_dim=enc.embed_dim,
            depths=tuple(enc.depths),
            num_heads=tuple(enc.num_heads),
            strict_img_size=False,  # dynamic attention masks: any input size (like ours)
            always_partition=True,  # keep window_size + shift in small stages (like ours)
            drop_path_rate=ours_drop_path(enc),
        )
        sd = {k: v for k, v in enc.state_dict().items() if not k.startswith("norm.")}
        converted = checkpoint_filter_fn(sd, self.body)
        missing, unexpected = self.body.load_state_dict(converted, strict=False)
        missing = [k for k in missing if not k.startswith(("norm.", "head."))]
        if missing or unexpected:
            raise RuntimeError(f"timm weight transfer failed: missing {missing[:4]}, unexpected {unexpected[:4]}")
        self.body.norm = nn.Identity()  # unused by the dense features; keeps the two models equal
        self.out_norms = green.out_norms  # the same modules: identical weights by construction
        self._out_features = list(green._out_features)
        self._out_feature_channels = dict(green._out_feature_channels)
        self._out_feature_strides = dict(green._out_feature_strides)
        self._stage_names = ["res2", "res3", "res4", "res5"]

    @property
    def size_divisibility(self) -> int:
        return 32

    def forward(self, x):
        feats = self.body.forward_intermediates(x, indices=4, norm=False, intermediates_only=True)
        out = {}
        for name, f in zip(self._stage_names, feats):
            if name in self.out_norms:
                out[name] = self.out_norms[name](f.permute(0, 2, 3, 1)).permute(0, 3, 1, 2).contiguous()
        return out


def ours_drop_path(encoder) -> float:
    rates = [getattr(m, "drop_prob", 0.0) for m in encoder.modules() if type(m).__name__ == "DropPath"]
    return max(rates) if rates else 0.0


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--arch", default="swin_tiny", choices=sorted(ARCH_CONFIG))
    p.add_argument("--size", type=int, default=512, help="square input side (multiple of 32)")
    p.add_argument("--batch-size", type=int, default=2, help="training batch")
    p.add_argument("--iters", type=int, default=5, help="timed iterations per model")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch default)")
    p.add_argument("--json", default="", help="write the results here")
    p.add_argument("--data-dir", default="", help="synthetic COCO folder (default: a temp dir)")
    return p.parse_args(argv)


def _batch(args):
    """A training batch of synthetic COCO images resized to --size."""
    from greenmim.data.synthetic import generate_synthetic_coco

    root = args.data_dir or os.path.join(tempfile.gettempdir(), f"greenmim_bench_coco_{args.size}")
    n = max(args.batch_size, 2)
    paths = generate_synthetic_coco(root, num_train=n, num_val=1, img_size=args.size, seed=0)
    dicts = get_coco_dataset_dicts("greenmim_bench_train", paths["train_json"], paths["train_images"])
    mapper = DatasetMapper(is_train=True, augmentations=[T.ResizeShortestEdge(args.size, args.size)],
                           image_format="RGB", use_instance_mask=True)
    return [mapper(d) for d in dicts[: args.batch_size]]


def _sync(device):
    if str(device).startswith("cuda"):
        torch.cuda.synchronize()


def main(argv=None):
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    letter, timm_name = ARCH_CONFIG[args.arch]
    cfg_path = os.path.join(REPO, "configs", "detection", f"mask_rcnn_green_swin_{letter}_fpn_1x.py")
    cfg = LazyConfig.apply_overrides(LazyConfig.load(cfg_path), ["model.roi_heads.num_classes=5"])

    torch.manual_seed(0)
    ours = instantiate(cfg.model)
    torch.manual_seed(0)
    theirs = instantiate(cfg.model)
    theirs.load_state_dict(ours.state_dict())
    theirs.backbone.bottom_up = TimmSwinBottomUp(theirs.backbone.bottom_up, timm_name, args.size)
    models = {"ours": ours.to(args.device), "timm": theirs.to(args.device)}

    # Same network? Compare backbone features (eval mode: no drop path) at a size whose stage grids
    # are multiples of the window. Elsewhere the two pad differently: ours pads, then shifts, and
    # masks padded keys out; timm shifts, then pads, and lets padded zeros take part in attention.
    check = 32 * ours.backbone.bottom_up.encoder.window_size
    x = torch.randn(1, 3, check, check, device=args.device)
    with torch.no_grad():
        fa = models["ours"].eval().backbone.bottom_up(x)
        fb = models["timm"].eval().backbone.bottom_up(x)
    feature_diff = max((fa[k] - fb[k]).abs().max().item() for k in fa)
    print(f"max |ours - timm| over backbone features at {check}x{check}: {feature_diff:.2e}")

    batch = _batch(args)
    for item in batch:
        item["image"] = item["image"].to(args.device)
    optims = {k: torch.optim.AdamW(m.parameters(), lr=1e-5) for k, m in models.items()}
    train_times = {k: [] for k in models}
    infer_times = {k: [] for k in models}
    amp = str(args.device).startswith("cuda")

    def train_step(name):
        m, opt = models[name], optims[name]
        m.train()
        _sync(args.device)
        t = time.perf_counter()
        with torch.autocast("cuda", enabled=amp):
            losses = m(batch)
        loss = sum(losses.values())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        _sync(args.device)
        return time.perf_counter() - t

    @torch.no_grad()
    def infer(name):
        m = models[name].eval()
        _sync(args.device)
        t = time.perf_counter()
        with torch.autocast("cuda", enabled=amp):
            m([{"image": batch[0]["image"], "height": args.size, "width": args.size}])
        _sync(args.device)
        return time.perf_counter() - t

    with EventStorage(0):
        for i in range(args.warmup + args.iters):
            order = ("ours", "timm") if i % 2 == 0 else ("timm", "ours")
            for name in order:
                dt = train_step(name)
                if i >= args.warmup:
                    train_times[name].append(dt)
            for name in order:
                dt = infer(name)
                if i >= args.warmup:
                    infer_times[name].append(dt)

    med = {k: {"train_step_s": statistics.median(train_times[k]), "inference_s": statistics.median(infer_times[k])}
           for k in models}
    ratio = {
        "train_step": med["ours"]["train_step_s"] / med["timm"]["train_step_s"],
        "inference": med["ours"]["inference_s"] / med["timm"]["inference_s"],
    }
    result = {
        "arch": args.arch,
        "timm_model": timm_name,
        "size": args.size,
        "batch_size": args.batch_size,
        "iters": args.iters,
        "device": str(args.device),
        "torch_threads": torch.get_num_threads(),
        "amp": amp,
        "max_abs_feature_diff": feature_diff,
        "feature_check_size": check,
        "ours": med["ours"],
        "timm": med["timm"],
        "ratio_ours_over_timm": ratio,
        "target_ratio": 1.05,
        "meets_target": all(r <= 1.05 for r in ratio.values()),
        "raw_s": {"train": train_times, "inference": infer_times},
    }
    print(json.dumps({k: v for k, v in result.items() if k != "raw_s"}, indent=2))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
    return result


if __name__ == "__main__":
    main()
