"""tools/make_synthetic_classification.py: the --min-size / --inside / --max-strokes options that
make the demo's cluttered shapes a well-posed classification task, and their one-line errors."""
from __future__ import annotations

import json
import os

import cv2
import numpy as np
import pytest

from greenmim.data.synthetic import MAX_STROKES, _background

from conftest import load_tool

gen = load_tool("make_synthetic_classification")


def test_acceptable_rejects_small_and_border_cut_shapes():
    assert gen._acceptable([10, 10, 30, 20], 100, 0.2, True)
    assert not gen._acceptable([10, 10, 15, 19], 100, 0.2, False)   # longest extent 19 < 20 px
    assert not gen._acceptable([0, 10, 30, 20], 100, 0.2, True)     # touches the left border
    assert not gen._acceptable([10, 10, 30, 90], 100, 0.2, True)    # reaches the bottom border
    assert gen._acceptable([0, 10, 30, 20], 100, 0.2, False)        # allowed without `inside`
    assert gen._acceptable([40, 40, 5, 5], 100, 0.0, False)         # the demo's look: anything


def test_min_size_split_is_written_and_reused(tmp_path):
    out = str(tmp_path / "cls")
    kw = dict(train_per_class=2, val_per_class=1, img_size=64, classes=["circle", "star"])
    gen.make_classification_split(out, min_size=0.3, inside=True, **kw)
    with open(os.path.join(out, "DONE")) as f:
        assert json.load(f)["min_size"] == 0.3
    for split, n in (("train", 2), ("val", 1)):
        for c in ("circle", "star"):
            assert len(os.listdir(os.path.join(out, split, c))) == n
    stamp = os.path.getmtime(os.path.join(out, "train", "star", "000000.jpg"))
    gen.make_classification_split(out, min_size=0.3, inside=True, **kw)  # same arguments: reused
    assert os.path.getmtime(os.path.join(out, "train", "star", "000000.jpg")) == stamp
    gen.make_classification_split(out, **kw)  # other arguments: rewritten, without the new keys
    with open(os.path.join(out, "DONE")) as f:
        assert "min_size" not in json.load(f)


def test_bad_min_size_is_one_line(tmp_path, capsys):
    assert gen.main(["--out", str(tmp_path / "x"), "--min-size", "0.6"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: min_size") and "\n" not in err
    with pytest.raises(ValueError, match="min_size"):
        gen.make_classification_split(str(tmp_path / "y"), min_size=-0.1)


def _stroke_pixels(max_strokes: int) -> int:
    """Pixels the strokes change: a background minus the same background's smooth part (blotches and
    noise filtered out by a large median), over 8 seeds."""
    total = 0
    for seed in range(8):
        img = _background(np.random.default_rng(seed), (96, 96), max_strokes)
        smooth = cv2.medianBlur(np.clip(img, 0, 255).astype(np.uint8), 9).astype(np.float32)
        total += int((np.abs(img - smooth).max(-1) > 40).sum())
    return total


def test_max_strokes_caps_the_distractors_and_keeps_the_default(tmp_path):
    assert _stroke_pixels(0) < 0.1 * _stroke_pixels(MAX_STROKES)
    assert _stroke_pixels(2) < _stroke_pixels(MAX_STROKES)
    same = [_background(np.random.default_rng(3), (64, 64), cap) for cap in (MAX_STROKES, 100)]
    np.testing.assert_array_equal(same[0], same[1])  # 3-12 strokes: caps of 12 and more are the default
    out = str(tmp_path / "cls")
    kw = dict(train_per_class=1, val_per_class=1, img_size=64, classes=["circle", "star"])
    gen.make_classification_split(out, max_strokes=1, **kw)
    with open(os.path.join(out, "DONE")) as f:
        assert json.load(f)["max_strokes"] == 1
    assert gen.main(["--out", str(tmp_path / "x"), "--max-strokes", "-1"]) == 2


def test_silhouette_split_is_white_on_black(tmp_path, capsys):
    kw = dict(train_per_class=2, val_per_class=1, img_size=64, classes=["circle", "star"], min_size=0.25,
              inside=True)
    textured, outlines = str(tmp_path / "tex"), str(tmp_path / "sil")
    gen.make_classification_split(textured, **kw)
    gen.make_classification_split(outlines, silhouette=True, **kw)
    with open(os.path.join(outlines, "DONE")) as f:
        assert json.load(f)["silhouette"] is True
    with open(os.path.join(textured, "DONE")) as f:
        assert "silhouette" not in json.load(f)  # splits written before the option are reused
    for c in ("circle", "star"):
        name = os.path.join("train", c, "000000.jpg")
        sil = cv2.imread(os.path.join(outlines, name))
        assert (np.abs(sil.astype(int) - sil[..., :1]) <= 12).all()  # grey levels only (JPEG edges)
        shape = sil[..., 0] > 128
        assert 0.05 < shape.mean() < 0.6 and not shape[0].any() and not shape[:, 0].any()  # inside
        assert (sil[~shape] < 40).mean() > 0.99  # black around it (JPEG ringing aside)
    assert gen.main(["--out", str(tmp_path / "x"), "--plain", "--silhouette"]) == 2
    assert capsys.readouterr().err.strip().startswith("error: choose one of plain")


def test_size_range_draws_large_shapes_inside_the_frame(tmp_path, capsys):
    from greenmim.data.synthetic import CATEGORIES, render_image
    extents = []
    for seed in range(40):
        _, anns = render_image(np.random.default_rng(seed), 128, min_objects=1, max_objects=1,
                               size_range=(0.5, 0.6))
        for a in anns:
            x, y, w, h = a["bbox"]
            assert x > 0 and y > 0 and x + w < 128 and y + h < 128  # never cut by the border
            extents.append(max(w, h) / 128)
    # the longest extent is `size` for circles and rectangles, ~0.85-0.9 of it for stars and triangles
    assert len(extents) >= 35 and 0.4 < min(extents) and max(extents) <= 0.61
    default = [max(a["bbox"][2:]) / 128 for s in range(40)
               for a in render_image(np.random.default_rng(s), 128, min_objects=1, max_objects=1)[1]]
    assert min(default) < 0.2  # without the range, the demo's small shapes
    out = str(tmp_path / "big")
    gen.make_classification_split(out, train_per_class=2, val_per_class=1, img_size=64,
                                  classes=CATEGORIES[:2], silhouette=True, sizes=(0.5, 0.7))
    with open(os.path.join(out, "DONE")) as f:
        assert json.load(f)["sizes"] == [0.5, 0.7]
    shape = cv2.imread(os.path.join(out, "train", "circle", "000000.jpg"))[..., 0] > 128
    assert 0.15 < shape.mean() < 0.45  # a circle of 0.5-0.7 of the side covers 20-38% of the image
    for bad in ("0.7,0.5", "0.4,0.95", "0.5"):
        assert gen.main(["--out", str(tmp_path / "x"), "--sizes", bad]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("error: sizes is a range LO,HI") and "\n" not in err
