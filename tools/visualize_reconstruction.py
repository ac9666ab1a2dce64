#!/usr/bin/env python
"""Reconstruction figure from a pretraining checkpoint: original | masked | prediction | pasted.

    python tools/visualize_reconstruction.py output/tiny_cpu/checkpoint-last.pth --out rec.png
    python tools/visualize_reconstruction.py ckpt.pth --data-path /datasets/imagenet/val --num 8

Images are the first --num of the data folder (the training config's unless --data-path), with
the training augmentation of epoch 0; the masks are per-sample and seeded (--seed).
"""
from __future__ import annotations

import argparse
import os
import sys

import torch

from greenmim.config import UserError
from greenmim.data.masking import MaskGenerator
from greenmim.engine import checkpoint as ckpt
from greenmim.engine.build import build_model
from greenmim.engine.data import build_dataset
from greenmim.engine.visualize import save_reconstruction


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("checkpoint")
    p.add_argument("--out", default="reconstruction.png")
    p.add_argument("--num", type=int, default=8, help="number of images (rows)")
    p.add_argument("--data-path", default=None, help="image folder (default: the training data)")
    p.add_argument("--mask-ratio", type=float, default=None, help="default: the training ratio")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu")
    args = p.parse_args(argv)
    try:
        if not os.path.isfile(args.checkpoint):
            raise UserError(f"checkpoint {args.checkpoint} does not exist")
        if args.mask_ratio is not None and not 0.0 < args.mask_ratio < 1.0:
            raise UserError(f"--mask-ratio must be in (0, 1), got {args.mask_ratio}; use e.g. 0.75")
        if args.checkpoint.endswith(".safetensors"):  # weights only: no config, usually no decoder
            raise UserError(f"{args.checkpoint} holds weights only (safetensors); the figure needs the decoder "
                            "and config of a training checkpoint: pass output_dir/checkpoint-last.pth")
        state = ckpt.load(args.checkpoint)
        if not isinstance(state, dict) or not {"model", "config"} <= state.keys():
            raise UserError(f"{args.checkpoint} is not a GreenMIM training checkpoint (it needs 'model' and "
                            "'config'; an exported encoder.pth cannot be drawn); pass output_dir/checkpoint-last.pth")
        cfg = state["config"]
        if args.data_path:
            cfg["data"]["path"] = args.data_path
        model = build_model(cfg)
        model.load_state_dict(state["model"])
        model.to(args.device)
        dataset = build_dataset(cfg)
        n = max(1, min(args.num, len(dataset)))
        images = torch.stack([dataset[(0, i)] for i in range(n)])
        ratio = cfg["mask"]["ratio"] if args.mask_ratio is None else args.mask_ratio
        mask = MaskGenerator(cfg["data"]["img_size"], ratio, shared=False, seed=args.seed)(n)
        save_reconstruction(model, images.to(args.device), mask.to(args.device), args.out)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
