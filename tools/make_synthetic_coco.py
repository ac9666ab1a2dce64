#!/usr/bin/env python
"""Writes the synthetic COCO-format shapes dataset used by the end-to-end demo.

    python tools/make_synthetic_coco.py --out datasets/synthetic_coco
    python tools/make_synthetic_coco.py --out /tmp/shapes --num-train 50 --num-val 10 --seed 1

A rerun with the same arguments reuses the finished dataset; an interrupted run is redone.
"""
from __future__ import annotations

import argparse
import collections
import json
import os
import sys
import time

from greenmim.data.synthetic import CATEGORIES, generate_synthetic_coco


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", required=True, help="output folder (only it is written)")
    p.add_argument("--num-train", type=int, default=300, help="training images")
    p.add_argument("--num-val", type=int, default=60, help="validation images")
    p.add_argument("--img-size", type=int, default=256, help="square side, multiple of 32")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--format", choices=("jpg", "png"), default="jpg", help="image file format")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    start = time.time()
    try:
        paths = generate_synthetic_coco(args.out, num_train=args.num_train, num_val=args.num_val,
                                        img_size=args.img_size, seed=args.seed,
                                        image_format=args.format)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    reused = os.path.getmtime(os.path.join(paths["root"], "DONE")) < start
    how = "reused the finished dataset" if reused else f"generated in {time.time() - start:.1f} s"
    print(f"dataset at {paths['root']} ({how})")
    for split in ("train", "val"):
        with open(paths[f"{split}_json"]) as f:
            coco = json.load(f)
        per_cat = collections.Counter(a["category_id"] for a in coco["annotations"])
        counts = ", ".join(f"{n} {per_cat[k + 1]}" for k, n in enumerate(CATEGORIES))
        print(f"  {split}: {len(coco['images'])} images in {paths[f'{split}_images']}, "
              f"{len(coco['annotations'])} instances ({counts})")
        print(f"         annotations {paths[f'{split}_json']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
