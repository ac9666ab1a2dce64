#!/usr/bin/env python
"""Writes the encoder of a pretraining checkpoint in the original Swin layout (what detection loads).

    python tools/export_encoder.py output/greenmim_swin_base_w7/checkpoint-0800.pth encoder.pth

The output is {"model": encoder state_dict (keys patch_embed.proj.weight, layers.0.blocks.0...,
no prefix), "arch", "encoder_kwargs"}, loadable with torch.load(weights_only=True) and strictly
into greenmim.build_encoder(arch, **encoder_kwargs). Training writes the same file as
output_dir/encoder.pth when it finishes.
"""
from __future__ import annotations

import argparse
import os
import sys

try:
    from greenmim.engine import checkpoint as ckpt
except ModuleNotFoundError as e:  # running from a checkout without `pip install -e .`
    if e.name != "greenmim":
        raise
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "pretrain"))
    from greenmim.engine import checkpoint as ckpt


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("checkpoint", help="training checkpoint (checkpoint-last.pth, checkpoint-0800.pth)")
    p.add_argument("output", help="where to write the encoder weights")
    args = p.parse_args(argv)
    if not os.path.isfile(args.checkpoint):
        print(f"error: checkpoint {args.checkpoint} does not exist", file=sys.stderr)
        return 2
    state = ckpt.load(args.checkpoint)
    if "model" not in state or "config" not in state:
        print(f"error: {args.checkpoint} is not a GreenMIM training checkpoint (no model/config)",
              file=sys.stderr)
        return 2
    ckpt.export_encoder(state["model"], args.output, state["config"])
    print(f"wrote {args.output} ({state['config']['model']['arch']}, step {state['state']['step']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
