#!/usr/bin/env python
"""Writes the encoder of a pretraining checkpoint in the original Swin layout (what detection loads).

    python tools/export_encoder.py output/greenmim_swin_base_w7/checkpoint-0800.pth encoder.pth

The program lives in greenmim.cli.export_encoder (installed as `greenmim-export-encoder`); this
file only runs it, so the path works in a checkout as well.
"""
import sys

from greenmim.cli.export_encoder import main

if __name__ == "__main__":
    sys.exit(main())
