"""A small, seeded, COCO-format instance-segmentation dataset of textured shapes.

The end-to-end demo pretrains a small Swin on these images and fine-tunes Mask R-CNN on them, so
the task has to be learnable in a few CPU minutes yet not trivial: five shape classes, random
colours and textures, sizes of about 20-120 px (on 256 px images), rotations, partial occlusion,
and cluttered backgrounds (gradients, blotches, noise, lines, arcs).

Objects are painted back to front; each instance's annotation is its VISIBLE part (its own mask
minus everything painted later). Placements that would hide most of an earlier object, or punch a
hole into it, are redrawn: COCO polygons cannot express holes, and a mostly hidden object is noise.

Layout written under `out_dir` (and nothing outside it):

    out_dir/train/000000.jpg ...           also usable as a flat pretraining image folder
    out_dir/val/000000.jpg ...
    out_dir/annotations/instances_train.json, instances_val.json
    out_dir/DONE                            written last: the arguments of the finished run

A run first writes `out_dir/IN_PROGRESS`; a rerun that finds DONE with the same arguments reuses
the dataset, and one that finds IN_PROGRESS (a crashed run) or a DONE with other arguments
regenerates it. Folders that carry neither marker are never overwritten.

Every image draws from its own RNG seeded by (seed, split, index), so the output is identical
across runs and machines with the same numpy / OpenCV, and does not depend on generation order.
"""
from __future__ import annotations

import colorsys
import json
import math
import os
import shutil
from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

import cv2
import numpy as np

from ..json_files import read_json

FORMAT_VERSION = 1  # bump when the drawing changes, so stale datasets are regenerated
CATEGORIES = ("circle", "rectangle", "triangle", "star", "ellipse")
TEXTURES = ("solid", "stripes", "noise", "gradient")
SPLITS = {"train": 0, "val": 1}  # split -> stream id for the per-image seed

_SHIFT = 4  # cv2.fillPoly fixed-point bits: sub-pixel vertices give smoother edges
_MAX_OCCLUDED = 0.5  # a placement may hide at most this fraction of an earlier object
_MIN_COMPONENT = 12  # px; visible fragments smaller than this are dropped from annotations


# ---------------------------------------------------------------------------------------------
# Shapes: every class is a polygon in image coordinates (float [K, 2] as (x, y)).

def _rotate(points: np.ndarray, angle: float, center: Tuple[float, float]) -> np.ndarray:
    c, s = math.cos(angle), math.sin(angle)
    rot = np.array([[c, -s], [s, c]])
    return points @ rot.T + np.asarray(center)


def _shape_polygon(cls: str, size: float, center: Tuple[float, float],
                   rng: np.random.Generator) -> np.ndarray:
    """Polygon [K, 2] of one shape whose longest extent is about `size` px."""
    r = size / 2.0
    angle = rng.uniform(0, 2 * math.pi)
    if cls == "circle":
        t = np.linspace(0, 2 * math.pi, 72, endpoint=False)
        pts = np.stack([np.cos(t), np.sin(t)], 1) * r
    elif cls == "ellipse":
        # clearly elongated so that it is not confused with a circle
        t = np.linspace(0, 2 * math.pi, 72, endpoint=False)
        pts = np.stack([np.cos(t) * r, np.sin(t) * r * rng.uniform(0.35, 0.6)], 1)
    elif cls == "rectangle":
        # squares and mild rectangles; elongated ones would overlap with the ellipse's look
        aspect = rng.uniform(0.55, 1.0)
        half_w = r / math.sqrt(1 + aspect ** 2)  # keep the diagonal at `size`
        half_h = half_w * aspect
        pts = np.array([[-half_w, -half_h], [half_w, -half_h], [half_w, half_h], [-half_w, half_h]])
    elif cls == "triangle":
        t = np.arange(3) * (2 * math.pi / 3) + rng.uniform(-0.25, 0.25, 3)
        rad = r * rng.uniform(0.85, 1.0, 3)
        pts = np.stack([np.cos(t) * rad, np.sin(t) * rad], 1)
    elif cls == "star":
        n = int(rng.integers(5, 7))
        inner = rng.uniform(0.38, 0.5)
        t = np.arange(2 * n) * (math.pi / n)
        rad = np.where(np.arange(2 * n) % 2 == 0, r, r * inner)
        pts = np.stack([np.cos(t) * rad, np.sin(t) * rad], 1)
    else:
        raise ValueError(f"unknown shape class {cls!r}; expected one of {CATEGORIES}")
    return _rotate(pts, angle, center)


def _fill(poly: np.ndarray, hw: Tuple[int, int]) -> np.ndarray:
    """Bool mask [H, W] of a polygon (pixel centres inside)."""
    mask = np.zeros(hw, np.uint8)
    # pixel (i, j) covers [j, j+1) x [i, i+1); cv2 samples at integer coords, hence the -0.5
    fixed = np.round((poly - 0.5) * (1 << _SHIFT)).astype(np.int32)
    cv2.fillPoly(mask, [fixed], 1, lineType=cv2.LINE_8, shift=_SHIFT)
    return mask.astype(bool)


# ---------------------------------------------------------------------------------------------
# Colours, textures, backgrounds. Images are float32 RGB [H, W, 3] in 0..255 until saved.

MAX_STROKES = 12  # a background has 3-12 distractor strokes; smaller caps give less clutter

def _colour(rng: np.random.Generator, sat: Tuple[float, float],
            val: Tuple[float, float]) -> np.ndarray:
    rgb = colorsys.hsv_to_rgb(rng.uniform(), rng.uniform(*sat), rng.uniform(*val))
    return np.array(rgb, np.float32) * 255


def _ramp(hw: Tuple[int, int], angle: float) -> np.ndarray:
    """Linear ramp [H, W] in 0..1 along direction `angle`."""
    ys, xs = np.mgrid[0:hw[0], 0:hw[1]].astype(np.float32)
    p = xs * math.cos(angle) + ys * math.sin(angle)
    return (p - p.min()) / max(float(p.max() - p.min()), 1e-6)


def _texture(rng: np.random.Generator, hw: Tuple[int, int]) -> np.ndarray:
    """An object's fill [H, W, 3]: solid, stripes, per-pixel noise or a gradient."""
    kind = TEXTURES[int(rng.integers(len(TEXTURES)))]
    base = _colour(rng, (0.45, 1.0), (0.35, 1.0))
    if kind == "solid":
        tex = np.broadcast_to(base, (*hw, 3)).copy()
    elif kind == "stripes":
        other = _colour(rng, (0.3, 1.0), (0.2, 1.0))
        period = rng.uniform(4, 12)
        ys, xs = np.mgrid[0:hw[0], 0:hw[1]].astype(np.float32)
        a = rng.uniform(0, math.pi)
        on = ((xs * math.cos(a) + ys * math.sin(a)) / period) % 1.0 < 0.5
        tex = np.where(on[..., None], base, other)
    elif kind == "noise":
        tex = base + rng.normal(0, rng.uniform(18, 35), (*hw, 1)).astype(np.float32)
    else:  # gradient
        other = _colour(rng, (0.45, 1.0), (0.35, 1.0))
        t = _ramp(hw, rng.uniform(0, 2 * math.pi))[..., None]
        tex = base * (1 - t) + other * t
    return tex.astype(np.float32)


def _background(rng: np.random.Generator, hw: Tuple[int, int], max_strokes: int = MAX_STROKES) -> np.ndarray:
    """Cluttered background [H, W, 3]: desaturated gradient, blotches, noise, lines and arcs
    (3-12 distractor strokes, at most `max_strokes`)."""
    h, w = hw
    c0, c1 = _colour(rng, (0.0, 0.45), (0.2, 0.95)), _colour(rng, (0.0, 0.45), (0.2, 0.95))
    t = _ramp(hw, rng.uniform(0, 2 * math.pi))[..., None]
    img = c0 * (1 - t) + c1 * t
    # low-frequency blotches: a coarse random grid upsampled smoothly
    coarse = rng.normal(0, rng.uniform(5, 20), (4, 4, 3)).astype(np.float32)
    img = img + cv2.resize(coarse, (w, h), interpolation=cv2.INTER_CUBIC)
    img = np.ascontiguousarray(img, np.float32)
    scale = max(h, w) / 256.0
    # drawn, then capped: the default cap draws exactly the images it always drew
    for _ in range(min(int(rng.integers(3, MAX_STROKES + 1)), max_strokes)):  # distractor strokes, never annotated
        colour = tuple(float(v) for v in _colour(rng, (0.0, 0.8), (0.1, 1.0)))
        thick = int(rng.integers(1, 4))
        if rng.uniform() < 0.7:
            p0 = (int(rng.integers(0, w)), int(rng.integers(0, h)))
            p1 = (int(rng.integers(0, w)), int(rng.integers(0, h)))
            cv2.line(img, p0, p1, colour, thick, cv2.LINE_AA)
        else:
            centre = (int(rng.integers(0, w)), int(rng.integers(0, h)))
            axes = (int(rng.uniform(10, 60) * scale), int(rng.uniform(10, 60) * scale))
            start = float(rng.uniform(0, 360))
            cv2.ellipse(img, centre, axes, float(rng.uniform(0, 180)), start,
                        start + float(rng.uniform(40, 200)), colour, thick, cv2.LINE_AA)
    return img + rng.normal(0, rng.uniform(2, 10), (h, w, 1)).astype(np.float32)


# ---------------------------------------------------------------------------------------------
# One image: placement with occlusion control, painting, visible-mask annotations.

@dataclass
class _Obj:
    cls: int  # index into CATEGORIES
    mask: np.ndarray  # bool [H, W], the whole (in-frame) shape
    visible: np.ndarray  # bool [H, W], what is left after later objects are painted


def _has_hole(mask: np.ndarray) -> bool:
    _, hier = cv2.findContours(mask.astype(np.uint8), cv2.RETR_CCOMP, cv2.CHAIN_APPROX_SIMPLE)
    return hier is not None and bool((hier[0][:, 3] >= 0).any())


def _place(rng: np.random.Generator, hw: Tuple[int, int], objs: List[_Obj],
           min_area: int, attempts: int = 20,
           size_range: Optional[Tuple[float, float]] = None) -> Optional[_Obj]:
    """Draws one object that keeps every earlier object mostly visible and hole-free (sizes:
    see render_image)."""
    h, w = hw
    scale = min(h, w) / 256.0
    for _ in range(attempts):
        cls = int(rng.integers(len(CATEGORIES)))
        if size_range is None:
            # log-uniform sizes: small objects are as common as large ones, as in real scenes
            size = math.exp(rng.uniform(math.log(20), math.log(120))) * scale
            # centres keep 0.2 * size from the border: shapes may be clipped, but never mostly
            margin = 0.2 * size
        else:
            size = rng.uniform(*size_range) * min(h, w)
            margin = 0.5 * size + 1  # every shape lies within size / 2 of its centre: inside the frame
        centre = (rng.uniform(margin, w - margin), rng.uniform(margin, h - margin))
        mask = _fill(_shape_polygon(CATEGORIES[cls], size, centre, rng), hw)
        if mask.sum() < 1.5 * min_area:
            continue
        ok = True
        for o in objs:
            left = o.visible & ~mask
            if left.sum() < (1 - _MAX_OCCLUDED) * o.mask.sum() or (
                    left.sum() < o.visible.sum() and _has_hole(left)):
                ok = False
                break
        if ok:
            for o in objs:
                o.visible &= ~mask
            return _Obj(cls, mask, mask.copy())
    return None


def _clean(mask: np.ndarray) -> np.ndarray:
    """Drops connected fragments below _MIN_COMPONENT px (slivers left by occluders)."""
    n, labels, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=8)
    keep = np.zeros(n, bool)
    keep[1:] = stats[1:, cv2.CC_STAT_AREA] >= _MIN_COMPONENT
    return keep[labels]


def _polygons(mask: np.ndarray, up: int = 4) -> List[List[float]]:
    """COCO polygons (flat [x0, y0, x1, y1, ...]) of a hole-free mask's outer contours.

    Contours of the raw mask run through boundary pixel CENTRES, so their polygons lose half a
    pixel all round (IoU ~0.93 with the mask for small shapes). Tracing the mask upsampled `up`
    times puts the contour within 1/(2*up) px of the true pixel edges (IoU > 0.99).
    """
    ys, xs = np.nonzero(mask)
    y0, x0 = int(ys.min()), int(xs.min())
    crop = mask[y0:ys.max() + 1, x0:xs.max() + 1].astype(np.uint8)
    crop = cv2.resize(crop, None, fx=up, fy=up, interpolation=cv2.INTER_NEAREST)
    contours, _ = cv2.findContours(crop, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    polys = []
    for c in contours:
        c = cv2.approxPolyDP(c, 0.5 * up, True).reshape(-1, 2).astype(np.float64)
        if len(c) >= 3:
            # sub-pixel index k covers [k, k+1)/up in COCO's continuous coordinates (pixel j
            # spans [j, j+1)); its centre is (k + 0.5)/up
            c = (c + 0.5) / up + (x0, y0)
            polys.append([round(float(v), 2) for v in c.reshape(-1)])
    return polys


def render_image(rng: np.random.Generator, img_size: int = 256, min_objects: int = 3,
                 max_objects: int = 8, min_area: int = 48, max_strokes: int = MAX_STROKES,
                 size_range: Optional[Tuple[float, float]] = None) -> Tuple[np.ndarray, List[dict]]:
    """Draws one image and its visible-part annotations (at most `max_strokes` distractor
    strokes in the background). Each shape's longest extent is drawn log-uniformly in 20-120 px
    (at 256 px, scaled with the side) and may be clipped by the border; with `size_range`
    (lo, hi), uniformly in [lo, hi] x the side, inside the frame.

    Returns:
        image: uint8 RGB [img_size, img_size, 3].
        anns: dicts with category_id (1-based), bbox [x, y, w, h], area (px), segmentation
            (list of polygons), in back-to-front order.
    """
    hw = (img_size, img_size)
    img = _background(rng, hw, max_strokes)
    objs: List[_Obj] = []
    for _ in range(int(rng.integers(min_objects, max_objects + 1))):
        o = _place(rng, hw, objs, min_area, size_range=size_range)
        if o is not None:
            objs.append(o)
    for o in objs:  # back to front
        ys, xs = np.nonzero(o.mask)
        y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
        tex = _texture(rng, (int(y1 - y0), int(x1 - x0)))
        region = img[y0:y1, x0:x1]
        m = o.mask[y0:y1, x0:x1]
        region[m] = tex[m]
    if rng.uniform() < 0.5:  # mild camera blur on the whole image
        img = cv2.GaussianBlur(img, (0, 0), rng.uniform(0.3, 0.9))
    img = img + rng.normal(0, rng.uniform(0, 5), (*hw, 1)).astype(np.float32)
    image = np.clip(np.round(img), 0, 255).astype(np.uint8)

    anns = []
    for o in objs:
        vis = _clean(o.visible)
        area = int(vis.sum())
        polys = _polygons(vis) if area >= min_area else []
        if not polys:
            continue  # tiny or degenerate visible part: not a learnable instance
        ys, xs = np.nonzero(vis)
        bbox = [int(xs.min()), int(ys.min()), int(xs.max() - xs.min() + 1),
                int(ys.max() - ys.min() + 1)]
        anns.append({"category_id": o.cls + 1, "bbox": bbox, "area": area,
                     "segmentation": polys, "iscrowd": 0})
    return image, anns


# ---------------------------------------------------------------------------------------------
# Dataset on disk.

def _split_json(split: str, num: int, img_size: int, seed: int, ext: str,
                img_dir: str) -> dict:
    """Renders a split's images into img_dir and returns its COCO dict."""
    images, annotations = [], []
    for i in range(num):
        rng = np.random.default_rng([seed, SPLITS[split], i])
        image, anns = render_image(rng, img_size)
        name = f"{i:06d}.{ext}"
        params = [cv2.IMWRITE_JPEG_QUALITY, 92] if ext == "jpg" else []
        if not cv2.imwrite(os.path.join(img_dir, name), image[:, :, ::-1], params):
            raise OSError(f"could not write {os.path.join(img_dir, name)}")
        image_id = i + 1
        images.append({"id": image_id, "file_name": name, "height": img_size, "width": img_size})
        for a in anns:
            annotations.append({"id": len(annotations) + 1, "image_id": image_id, **a})
    return {
        "info": {"description": f"GreenMIM synthetic shapes, {split} split",
                 "version": str(FORMAT_VERSION)},
        "licenses": [],
        "images": images,
        "annotations": annotations,
        "categories": [{"id": k + 1, "name": n, "supercategory": "shape"}
                       for k, n in enumerate(CATEGORIES)],
    }


def _paths(out_dir: str) -> Dict[str, str]:
    return {
        "root": out_dir,
        "train_images": os.path.join(out_dir, "train"),
        "val_images": os.path.join(out_dir, "val"),
        "train_json": os.path.join(out_dir, "annotations", "instances_train.json"),
        "val_json": os.path.join(out_dir, "annotations", "instances_val.json"),
    }


def generate_synthetic_coco(out_dir: str, num_train: int = 300, num_val: int = 60,
                            img_size: int = 256, seed: int = 0,
                            image_format: str = "jpg") -> Dict[str, str]:
    """Writes (or reuses) the synthetic COCO dataset under out_dir.

    Args:
        out_dir: output folder; created if missing. Only train/, val/, annotations/, DONE and
            IN_PROGRESS inside it are ever written or removed.
        num_train, num_val: images per split (>= 1 and >= 0).
        img_size: square image side in px, a positive multiple of 32.
        seed: dataset seed; the same arguments give identical files.
        image_format: "jpg" (small, default) or "png" (lossless).

    Returns:
        dict of str paths: root, train_images, val_images, train_json, val_json.

    Raises:
        ValueError: bad arguments, or out_dir holds train/val/annotations that this generator
            did not write (no DONE / IN_PROGRESS marker), which it refuses to overwrite.
    """
    if img_size <= 0 or img_size % 32:
        raise ValueError(f"img_size {img_size} must be a positive multiple of 32 (e.g. 256)")
    if num_train < 1 or num_val < 0:
        raise ValueError(f"need num_train >= 1 and num_val >= 0, got {num_train}, {num_val}")
    if image_format not in ("jpg", "png"):
        raise ValueError(f"image_format {image_format!r} must be 'jpg' or 'png'")
    out_dir = os.path.abspath(os.path.expanduser(str(out_dir)))
    paths = _paths(out_dir)
    args = {"version": FORMAT_VERSION, "num_train": int(num_train), "num_val": int(num_val),
            "img_size": int(img_size), "seed": int(seed), "image_format": image_format}
    done, busy = os.path.join(out_dir, "DONE"), os.path.join(out_dir, "IN_PROGRESS")

    ours = ("train", "val", "annotations")
    if read_json(done) == args and not os.path.exists(busy):
        return paths  # a finished run with the same arguments
    if (not os.path.exists(done) and not os.path.exists(busy)
            and any(os.path.exists(os.path.join(out_dir, d)) for d in ours)):
        raise ValueError(
            f"{out_dir} already holds train/, val/ or annotations/ not written by this generator "
            f"(no DONE marker); choose an empty or new output folder")

    os.makedirs(out_dir, exist_ok=True)
    with open(busy, "w") as f:  # marks the folder as ours and the run as unfinished
        json.dump(args, f)
    if os.path.exists(done):
        os.remove(done)
    for d in ours:  # stale output of a crashed run or of other arguments
        shutil.rmtree(os.path.join(out_dir, d), ignore_errors=True)
    os.makedirs(os.path.join(out_dir, "annotations"))
    for split, num in (("train", num_train), ("val", num_val)):
        img_dir = paths[f"{split}_images"]
        os.makedirs(img_dir)
        coco = _split_json(split, num, img_size, seed, image_format, img_dir)
        tmp = paths[f"{split}_json"] + ".tmp"
        with open(tmp, "w") as f:
            json.dump(coco, f)
        os.replace(tmp, paths[f"{split}_json"])
    with open(done + ".tmp", "w") as f:
        json.dump(args, f)
    os.replace(done + ".tmp", done)
    os.remove(busy)
    return paths
