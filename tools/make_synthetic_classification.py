#!/usr/bin/env python
"""Writes a labelled classification split of the demo's synthetic shapes: one shape per image,
its class (circle, rectangle, ...) is the label, on the demo's cluttered backgrounds.

    python tools/make_synthetic_classification.py --out datasets/shapes_cls
    python tools/make_synthetic_classification.py --out /tmp/cls --train-per-class 8 --val-per-class 4 \
        --img-size 64 --classes circle,rectangle
    python tools/make_synthetic_classification.py --out /tmp/cls --min-size 0.2 --inside   # a well-posed task
    python tools/make_synthetic_classification.py --out /tmp/cls --min-size 0.25 --inside --max-strokes 2   # less clutter
    python tools/make_synthetic_classification.py --out /tmp/cls --min-size 0.25 --inside --silhouette  # outlines only
    python tools/make_synthetic_classification.py --out /tmp/cls --sizes 0.4,0.8 --silhouette  # large outlines

The demo's look keeps shapes of 6-47% of the image side that may be cut by the border; at that
scale a small shape among the clutter strokes is hard to tell apart (a 15 px star, a clipped
triangle), so a small labelled set is not learnable. --min-size (a fraction of the image side, for
the shape's longest visible extent) and --inside (the shape is not cut by the border) redraw such
images instead. --sizes LO,HI draws every shape's longest extent in that range of the side, inside
the frame, instead of redrawing (a range past 0.47 is out of reach of --min-size).

Layout (ImageNet style, what pretrain/main_finetune.py reads):
    out/train/<class>/000000.jpg ...   out/val/<class>/000000.jpg ...   out/DONE
Every image draws from its own RNG (seed, split, draw index); images are drawn until each class
has its quota, so the split is balanced and identical across runs. A rerun with the same
arguments reuses a finished split; a folder this tool did not write is never overwritten.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from typing import Dict, Optional, Sequence, Tuple

import cv2
import numpy as np

from greenmim.data.synthetic import CATEGORIES, MAX_STROKES, SPLITS, render_image

FORMAT_VERSION = 1
PLAIN_COLOURS = ((255, 60, 60), (60, 255, 60), (60, 60, 255), (255, 255, 60), (255, 60, 255))


def _acceptable(bbox: Sequence[int], img_size: int, min_size: float, inside: bool) -> bool:
    """Whether a shape with visible bbox [x, y, w, h] is large enough and, with `inside`, not
    touching the image border (with one shape per image, touching it means cut by it)."""
    x, y, w, h = bbox
    if max(w, h) < min_size * img_size:
        return False
    return not inside or (x > 0 and y > 0 and x + w < img_size and y + h < img_size)


def write_split(img_dir: str, split: str, per_class: int, classes: Sequence[str], img_size: int,
                seed: int, plain: bool = False, min_size: float = 0.0, inside: bool = False,
                max_strokes: int = MAX_STROKES, silhouette: bool = False,
                sizes: Optional[Tuple[float, float]] = None) -> Dict[str, int]:
    """Renders `per_class` single-shape images of each class into img_dir/<class>/ (plain: the
    silhouette in a colour of its class on black, zoomed in; silhouette: white on black where it
    was drawn, so only the outline tells the class; default: textured shapes on clutter). Shapes
    smaller than min_size * img_size or (inside) cut by the border are redrawn; with `sizes`
    (lo, hi), their longest extent is drawn in [lo, hi] x img_size, inside the frame."""
    counts = {c: 0 for c in classes}
    for c in classes:
        os.makedirs(os.path.join(img_dir, c))
    draw = 0
    while min(counts.values()) < per_class:
        rng = np.random.default_rng([seed, SPLITS[split], 101, draw])
        draw += 1
        image, anns = render_image(rng, img_size, min_objects=1, max_objects=1, max_strokes=max_strokes,
                                   size_range=sizes)
        if len(anns) != 1:
            continue  # the shape was placed mostly out of frame: draw another
        name = CATEGORIES[anns[0]["category_id"] - 1]
        if name not in counts or counts[name] >= per_class:
            continue
        if not _acceptable(anns[0]["bbox"], img_size, min_size, inside):
            continue
        if plain or silhouette:  # plain: the silhouette in its class's colour, for tests and smoke runs
            image = np.zeros_like(image)
            colour = PLAIN_COLOURS[CATEGORIES.index(name)] if plain else (255, 255, 255)
            for poly in anns[0]["segmentation"]:
                pts = np.round(np.asarray(poly, dtype=np.float64).reshape(-1, 2)).astype(np.int32)
                cv2.fillPoly(image, [pts], colour)
        if plain:
            x, y, w, h = anns[0]["bbox"]  # zoom in: the shape fills most of the frame
            side = int(max(w, h) * 1.3) + 1
            x0, y0 = max(0, x + w // 2 - side // 2), max(0, y + h // 2 - side // 2)
            crop = image[y0:y0 + side, x0:x0 + side]
            image = cv2.resize(crop, (img_size, img_size), interpolation=cv2.INTER_LINEAR)
        path = os.path.join(img_dir, name, f"{counts[name]:06d}.jpg")
        if not cv2.imwrite(path, image[:, :, ::-1], [cv2.IMWRITE_JPEG_QUALITY, 92]):
            raise OSError(f"could not write {path}")
        counts[name] += 1
    return counts


def make_classification_split(out_dir: str, train_per_class: int = 40, val_per_class: int = 20,
                              img_size: int = 192, seed: int = 0,
                              classes: Sequence[str] = CATEGORIES, plain: bool = False,
                              min_size: float = 0.0, inside: bool = False, max_strokes: int = MAX_STROKES,
                              silhouette: bool = False, sizes: Optional[Sequence[float]] = None) -> str:
    """Writes (or reuses) the split under out_dir; returns out_dir. Raises ValueError for bad
    arguments or a folder with train/ or val/ that this tool did not write."""
    classes = list(classes)
    unknown = [c for c in classes if c not in CATEGORIES]
    if unknown or len(classes) < 2:
        raise ValueError(f"classes must be two or more of {', '.join(CATEGORIES)}; got {classes}")
    if train_per_class < 1 or val_per_class < 1 or img_size < 32:
        raise ValueError("need train/val images per class >= 1 and img_size >= 32")
    if plain and silhouette:
        raise ValueError("choose one of plain (per-class colours) and silhouette (white on black)")
    if max_strokes < 0:
        raise ValueError(f"max_strokes is a count >= 0, got {max_strokes}")
    if not 0.0 <= min_size <= 0.4:
        raise ValueError(f"min_size is a fraction of the image side in [0, 0.4] (shapes reach about 0.47), "
                         f"got {min_size}")
    if sizes is not None:
        sizes = tuple(float(v) for v in sizes)
        if len(sizes) != 2 or not 0.05 <= sizes[0] <= sizes[1] <= 0.9:
            raise ValueError(f"sizes is a range LO,HI of fractions of the image side with "
                             f"0.05 <= LO <= HI <= 0.9, got {','.join(map(str, sizes))}")
    out_dir = os.path.abspath(os.path.expanduser(out_dir))
    args = {"version": FORMAT_VERSION, "train_per_class": train_per_class, "val_per_class": val_per_class,
            "img_size": img_size, "seed": seed, "classes": classes, "plain": bool(plain)}
    if min_size or inside:  # only then, so that splits written before these options are reused
        args.update(min_size=float(min_size), inside=bool(inside))
    if max_strokes != MAX_STROKES:
        args.update(max_strokes=int(max_strokes))
    if silhouette:
        args.update(silhouette=True)
    if sizes is not None:
        args.update(sizes=list(sizes))
    done = os.path.join(out_dir, "DONE")
    ours = [os.path.join(out_dir, s) for s in ("train", "val")]
    if os.path.isfile(done):
        with open(done) as f:
            if json.load(f) == args:
                return out_dir
        os.remove(done)
    elif any(os.path.exists(p) for p in ours) and not os.path.exists(os.path.join(out_dir, "IN_PROGRESS")):
        raise ValueError(f"{out_dir} holds train/ or val/ not written by this tool; choose a new folder")
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, "IN_PROGRESS"), "w") as f:
        json.dump(args, f)
    for p in ours:
        shutil.rmtree(p, ignore_errors=True)
    for split, path, n in (("train", ours[0], train_per_class), ("val", ours[1], val_per_class)):
        write_split(path, split, n, classes, img_size, seed, plain, min_size, inside, max_strokes, silhouette,
                    sizes)
    with open(done + ".tmp", "w") as f:
        json.dump(args, f)
    os.replace(done + ".tmp", done)
    os.remove(os.path.join(out_dir, "IN_PROGRESS"))
    return out_dir


def _size_range(text: str) -> Tuple[float, ...]:
    try:
        return tuple(float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected LO,HI (two fractions of the side, e.g. 0.4,0.8), got {text!r}")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", required=True, help="output folder (only train/, val/ and markers are written)")
    p.add_argument("--train-per-class", type=int, default=40)
    p.add_argument("--val-per-class", type=int, default=20)
    p.add_argument("--img-size", type=int, default=192, help="image side in px (the demo's 192)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--classes", default=",".join(CATEGORIES), help="comma-separated subset of the shapes")
    p.add_argument("--plain", action="store_true",
                   help="silhouettes in a per-class colour on black (an easy task for tests) instead of the demo's look")
    p.add_argument("--silhouette", action="store_true",
                   help="the shape's silhouette, white on black where it was drawn: the demo's shapes without "
                        "texture or clutter, a task a small Swin learns in a few hundred steps")
    p.add_argument("--min-size", type=float, default=0.0,
                   help="redraw shapes whose longest visible extent is below this fraction of the image side")
    p.add_argument("--inside", action="store_true", help="redraw shapes cut by the image border")
    p.add_argument("--sizes", type=_size_range, default=None, metavar="LO,HI",
                   help="draw each shape's longest extent uniformly in LO-HI of the image side, inside the frame "
                        "(default: the demo's 6-47%%, log-uniform, sometimes cut by the border)")
    p.add_argument("--max-strokes", type=int, default=MAX_STROKES,
                   help="at most this many distractor strokes in the background (the demo's 3-12)")
    a = p.parse_args(argv)
    try:
        out = make_classification_split(a.out, a.train_per_class, a.val_per_class, a.img_size, a.seed,
                                        [c for c in a.classes.split(",") if c], a.plain, a.min_size, a.inside,
                                        a.max_strokes, a.silhouette, a.sizes)
    except (ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
