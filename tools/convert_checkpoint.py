#!/usr/bin/env python
"""Convert encoder weights of any supported layout into the file the next tool reads.

    python tools/convert_checkpoint.py IN OUT [--format encoder|timm|detectron2] [--arch A --window-size W]

The program lives in greenmim.cli.convert_checkpoint (installed as `greenmim-convert`); this file
only runs it, so the path works in a checkout as well.
"""
import sys

from greenmim.cli.convert_checkpoint import main, parse_args  # noqa: F401 - the tool's interface

if __name__ == "__main__":
    sys.exit(main())
