"""What the encoder and whole-step benchmarks share: their command-line setting, the encoder and
inputs they build from it, the setting's part of their JSON result and the way they print it."""
from __future__ import annotations

import argparse
import json
import platform
from typing import List, Sequence

import torch

import greenmim
from greenmim.data.masking import MaskGenerator


def add_setting_args(p: argparse.ArgumentParser, variants: Sequence[str]) -> None:
    """The arguments both benchmarks take (and their memory subprocesses get back)."""
    p.add_argument("--arch", default="swin_base")
    p.add_argument("--img-size", type=int, default=224)
    p.add_argument("--window-size", type=int, default=7)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--mask-ratio", type=float, default=0.75)
    p.add_argument("--per-sample-mask", action="store_true", help="independent mask per sample "
                   "(default: one mask per batch, the paper's setting)")
    p.add_argument("--encoder-kwargs", default="{}", help="extra build_encoder overrides as JSON "
                   "(e.g. '{\"embed_dim\": 32, \"depths\": [1,1,1,1]}' for a quick check)")
    p.add_argument("--iters", type=int, default=5, help="timed steps per variant")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    p.add_argument("--compile", nargs="?", const="inductor", default=None, metavar="BACKEND",
                   help="torch.compile the timed model, both variants (backend: inductor, or e.g. "
                   "eager to check tracing only)")
    p.add_argument("--json", default=None, help="write the results here")
    p.add_argument("--memory-only", choices=variants, help=argparse.SUPPRESS)


def setting_argv(args) -> List[str]:
    """The model and input part of `args` as a command line, for a memory subprocess."""
    argv = ["--arch", args.arch, "--img-size", str(args.img_size), "--window-size", str(args.window_size),
            "--batch-size", str(args.batch_size), "--mask-ratio", str(args.mask_ratio),
            "--encoder-kwargs", args.encoder_kwargs]
    if args.per_sample_mask:
        argv.append("--per-sample-mask")
    if args.threads:
        argv += ["--threads", str(args.threads)]
    if args.compile:
        argv += ["--compile", args.compile]
    return argv


def build_encoder(args, **overrides) -> torch.nn.Module:
    """The encoder of `args` (on the CPU): --arch at --img-size, --window-size for Swin, then
    --encoder-kwargs."""
    overrides = dict(img_size=args.img_size, **overrides, **json.loads(args.encoder_kwargs))
    if args.arch.startswith("swin"):
        overrides.setdefault("window_size", args.window_size)
    return greenmim.build_encoder(args.arch, **overrides)


def build_inputs(args, device: torch.device):
    """Random images (batch, 3, img_size, img_size) on `device` and the seeded mask generator."""
    images = torch.randn(args.batch_size, 3, args.img_size, args.img_size, device=device)
    masks = MaskGenerator(args.img_size, args.mask_ratio, shared=not args.per_sample_mask, seed=0)
    return images, masks


def setting_result(args) -> dict:
    """The head of a result: the setting that was measured, and on what."""
    cuda = args.device.startswith("cuda")
    return {"arch": args.arch, "img_size": args.img_size, "window_size": args.window_size,
            "batch_size": args.batch_size, "mask_ratio": args.mask_ratio,
            "per_sample_mask": args.per_sample_mask, "device": args.device,
            "device_name": torch.cuda.get_device_name() if cuda else platform.processor() or platform.machine(),
            "threads": torch.get_num_threads()}


def print_result(result: dict, path: str = None) -> None:
    """The result as JSON on stdout and, when `path` is given, in that file."""
    print(json.dumps(result, indent=2))
    if path:
        with open(path, "w") as f:
            json.dump(result, f, indent=2)
