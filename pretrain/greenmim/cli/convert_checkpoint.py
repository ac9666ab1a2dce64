"""Convert encoder weights of any supported layout into the file the next tool reads.

Installed as `greenmim-convert`; `python tools/convert_checkpoint.py` runs the same program.

    python tools/convert_checkpoint.py output/pretrain/checkpoint-last.pth encoder.pth
    python tools/convert_checkpoint.py model.safetensors encoder.safetensors      # timm / HF hub
    python tools/convert_checkpoint.py encoder.pth swin_b_timm.safetensors --format timm
    python tools/convert_checkpoint.py encoder.pth swin_b_d2.pth --format detectron2
    python tools/convert_checkpoint.py simmim_swin_base.pth swin_b_w14.pth --arch swin_base --window-size 14

IN: .pth/.pt/.bin/.pkl/.safetensors in any layout greenmim.weights knows (ours / export, official
GreenMIM / SimMIM, Microsoft Swin, timm / Hugging Face hub Swin and Twins, detectron2 model files).
OUT's suffix picks .safetensors or .pth; --format picks the layout:
    encoder     our layout, {"model": ...} (what greenmim and GreenCheckpointer write and read)
    timm        timm.create_model(NAME, pretrained=True, pretrained_cfg_overlay=dict(file=OUT))
    detectron2  detectron2's stock DetectionCheckpointer(model).load(OUT) fills our backbone
With --arch the weights are checked against that architecture and relative position bias tables
are resized to --window-size. Input is read without running code (weights_only / numpy-only /
safetensors); --trust-pickle reads a trusted legacy file that pickles config objects (e.g.
SimMIM's yacs CfgNode) with weights_only=False, and writes a file that needs no pickle.
"""
from __future__ import annotations

import argparse
import sys
from typing import Optional, Sequence

from .. import build_encoder
from ..config import UserError
from ..weights import (
    FORMATS,
    classifier_head,
    convert_encoder_state_dict,
    extract_state_dict,
    read_file,
    timm_model_name,
    write_weights,
)


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("input", help="weights to convert")
    p.add_argument("output", help="where to write them (.pth or .safetensors)")
    p.add_argument("--format", default="encoder", choices=FORMATS, help="layout of OUTPUT (default: encoder)")
    p.add_argument("--arch", default="", help="check against this encoder (swin_tiny/small/base/large, twins_svt_*)")
    p.add_argument("--window-size", type=int, default=0, help="with --arch: resize bias tables to this window")
    p.add_argument("--img-size", type=int, default=1024, help="with --arch: encoder reference size")
    p.add_argument("--trust-pickle", action="store_true",
                   help="read INPUT with weights_only=False (trusted files that pickle configs, e.g. "
                        "SimMIM's yacs CfgNode); the output is weights-only either way")
    return p.parse_args(argv)


def _target(args: argparse.Namespace):
    if not args.arch:
        if args.window_size:
            raise UserError("--window-size needs --arch")
        return None
    overrides = {"img_size": args.img_size}
    if args.window_size:
        overrides["window_size"] = args.window_size
    try:
        return build_encoder(args.arch, **overrides).state_dict()
    except ValueError as e:
        raise UserError(str(e)) from None


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Converts; exit status 0, or 2 with one `error:` line (unreadable input, wrong layout or
    architecture, unwritable output)."""
    args = parse_args(argv)
    try:
        obj = read_file(args.input, trust_pickle=args.trust_pickle)
        sd, report = convert_encoder_state_dict(obj, _target(args), source=args.input, strict=True)
        head = classifier_head(extract_state_dict(obj, args.input)) if args.format == "timm" else None
        note = write_weights(sd, args.output, args.format, head=head)
    except UserError as e:  # unreadable input, wrong layout or arch, unwritable output
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(report.summary())
    print(f"wrote {args.output} ({args.format} layout, {len(sd)} encoder tensors" + (f"; {note}" if note else "") + ")")
    if args.format == "timm":
        name = timm_model_name(sd) or "<the timm model of this arch>"
        print(f"load it with timm.create_model('{name}', pretrained=True, "
              f"pretrained_cfg_overlay=dict(file='{args.output}'))")
    elif args.format == "detectron2":
        print(f"load it with detectron2's DetectionCheckpointer(model).load('{args.output}') "
              f"(or train.init_checkpoint={args.output})")
    return 0

