#!/usr/bin/env python
"""Convert a pretraining / GreenMIM / SimMIM / Swin checkpoint into a plain encoder file.

    python tools/convert_checkpoint.py output/pretrain/checkpoint-last.pth encoder.pth
    python tools/convert_checkpoint.py simmim_swin_base.pth swin_b_w14.pth --arch swin_base --window-size 14

Detection loads all of these formats directly (train.init_checkpoint=...); converting is for users
who want the file on disk. The output is {"model": encoder state dict} in the original Swin key
layout (patch_embed.proj.weight, layers.0.blocks.0.attn.qkv.weight, ...); with --arch the weights
are checked against that architecture and relative position bias tables are resized to
--window-size.
Input is read with torch.load(weights_only=True); --trust-pickle reads a trusted legacy file that
pickles config objects (e.g. SimMIM's yacs CfgNode) with weights_only=False, and writes a file that
loads with weights_only=True.
"""
import argparse
import os
import sys

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
try:  # a source checkout without `pip install -e .`
    import greenmim_det  # noqa: F401
except ImportError:
    sys.path[:0] = [os.path.join(_ROOT, "pretrain"), os.path.join(_ROOT, "projects", "GreenMIM")]

from greenmim.config import UserError
from greenmim.engine.checkpoint import atomic_save
from greenmim.weights import CheckpointError, convert_encoder_state_dict, read_file as _read_file


def load_checkpoint_file(path, trust_pickle=False):
    return _read_file(path, trust_pickle=trust_pickle)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("input", help="checkpoint to convert")
    p.add_argument("output", help="where to write {'model': encoder state dict}")
    p.add_argument("--arch", default="", help="check against this encoder (swin_tiny/small/base/large)")
    p.add_argument("--window-size", type=int, default=0, help="with --arch: resize bias tables to this window")
    p.add_argument("--img-size", type=int, default=1024, help="with --arch: encoder reference size")
    p.add_argument("--trust-pickle", action="store_true",
                   help="read INPUT with weights_only=False (trusted files that pickle configs, e.g. "
                        "SimMIM's yacs CfgNode); the output is weights-only either way")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        obj = load_checkpoint_file(args.input, trust_pickle=args.trust_pickle)
        target = None
        if args.arch:
            import greenmim

            overrides = {"img_size": args.img_size}
            if args.window_size:
                overrides["window_size"] = args.window_size
            encoder = greenmim.build_encoder(args.arch, **overrides)
            target = encoder.state_dict()
        elif args.window_size:
            raise SystemExit("error: --window-size needs --arch")
        sd, report = convert_encoder_state_dict(obj, target, source=args.input, strict=True)
    except (CheckpointError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    try:  # temporary file + fsync + rename: never a half-written output
        atomic_save({"model": {k: v.contiguous() for k, v in sd.items()}}, args.output)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(report.summary())
    print(f"wrote {args.output} ({len(sd)} tensors)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
