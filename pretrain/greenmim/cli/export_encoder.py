"""Writes the encoder of a pretraining checkpoint in the original Swin layout (what detection loads).

Installed as `greenmim-export-encoder`; `python tools/export_encoder.py` runs the same program.

    python tools/export_encoder.py output/greenmim_swin_base_w7/checkpoint-0800.pth encoder.pth

The output is {"model": encoder state_dict (keys patch_embed.proj.weight, layers.0.blocks.0...,
no prefix), "arch", "encoder_kwargs"}, loadable with torch.load(weights_only=True) and strictly
into greenmim.build_encoder(arch, **encoder_kwargs). Training writes the same file as
output_dir/encoder.pth when it finishes.
"""
from __future__ import annotations

import argparse
import sys

from typing import Optional, Sequence

from ..config import UserError
from ..engine import checkpoint as ckpt


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Exports; exit status 0, or 2 with one `error:` line (not a training checkpoint, unreadable)."""
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("checkpoint", help="training checkpoint (checkpoint-last.pth, checkpoint-0800.pth)")
    p.add_argument("output", help="where to write the encoder weights")
    args = p.parse_args(argv)
    try:
        state = ckpt.load(args.checkpoint)  # weights_only: pickled code is refused, not run
        if not isinstance(state, dict) or "model" not in state or "config" not in state:
            raise UserError(f"{args.checkpoint} is not a GreenMIM training checkpoint (no model/config); "
                            "pass a checkpoint-*.pth written by pretraining")
        ckpt.export_encoder(state["model"], args.output, state["config"])
    except (UserError, KeyError) as e:
        msg = e if isinstance(e, UserError) else f"{args.checkpoint} holds no encoder weights ({e})"
        print(f"error: {msg}", file=sys.stderr)
        return 2
    step = state.get("state", {}).get("step", "?")
    print(f"wrote {args.output} ({state['config']['model']['arch']}, step {step})")
    return 0

