"""Pictures for people: detection drawings at a readable size (tools/visualize_detections.py), the
training curves of every log format (tools/plot_curves.py) and the demo's report (tools/demo_report.py).
The detector itself is not run here (tests/test_detection.py draws a trained one, tests/test_demo.py
checks the demo's report); CPU, a few seconds."""
from __future__ import annotations

import json
import os
import sys

import numpy as np
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "tools"))  # demo_report imports its neighbours by name

import plot_curves  # noqa: E402
from conftest import load_tool  # noqa: E402


def _png(path):
    from PIL import Image

    return np.asarray(Image.open(path).convert("RGB"))


def _assert_not_blank(pixels: np.ndarray):
    assert pixels.std() > 10
    assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 50  # drawn content, not a flat fill


def _write_lines(path, records, tail=""):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in records) + tail)
    return path


# --------------------------------------------------------------------------- the three log formats

@pytest.fixture
def logs(tmp_path):
    """A pretraining log resumed once and then killed mid-line, detectron2's metrics.json with the
    final evaluation, and a classifier's per-epoch log whose accuracies are fractions."""
    pre = [{"step": s, "epoch": s / 20, "loss": 1.0 / s, "lr": 1e-4 * s, "img_per_s": 30.0} for s in range(5, 45, 5)]
    pre.insert(4, {"epoch_done": 1, "step": 20})  # an epoch marker: no loss to plot
    pre.append({"step": 40, "loss": 0.5, "lr": 4e-3})  # the resumed run logs step 40 again
    pretrain = _write_lines(tmp_path / "pretrain" / "log.jsonl", pre, tail='{"step": 45, "loss": 0.0')
    det = [{"iteration": i, "total_loss": 3.0 - i / 100, "loss_cls": 1.0, "loss_box_reg": 0.8, "loss_mask": 0.6,
            "loss_rpn_cls": 0.1, "loss_rpn_loc": 0.05, "lr": 1e-4, "time": 0.5} for i in range(19, 200, 20)]
    det.append({"iteration": 199, "bbox/AP": 41.5, "bbox/AP50": 60.0, "segm/AP": 38.25})
    detection = _write_lines(tmp_path / "finetune" / "metrics.json", det)
    cls = [{"epoch": e, "step": 4 * e, "train_loss": 1.5 - 0.1 * e, "val_acc1": 0.3 + 0.05 * e, "val_acc5": 0.9,
            "val_loss": 1.6} for e in range(6)]
    cls += [{"step": k, "epoch": k / 4, "loss": 1.6 - 0.02 * k, "lr": 1e-3} for k in range(1, 21)]  # per step
    classification = _write_lines(tmp_path / "classify" / "pretrained" / "log.jsonl", cls,
                                  tail='{"epoch": 6, "train_lo')
    return {"pretrain": pretrain, "detection": detection, "classification": classification}


def test_each_log_format_is_read(logs):
    pre = plot_curves.load_log(str(logs["pretrain"]))
    assert pre.kind == "pretrain" and pre.label == "pretrain" and pre.skipped_lines == 1
    xs, ys = pre.series["loss"]
    assert xs == [float(s) for s in range(5, 45, 5)]  # the cut line (step 45) left out, step 40 once
    assert ys[-1] == 0.5 and pre.series["lr"][1][-1] == 4e-3  # the resumed run's values win

    det = plot_curves.load_log(str(logs["detection"].parent))  # a folder: its metrics.json
    assert det.kind == "detection" and det.skipped_lines == 0
    assert len(det.series["total_loss"][0]) == 10 and "loss_mask" in det.series
    assert det.series["bbox/AP"] == ([199.0], [41.5]) and det.series["segm/AP"] == ([199.0], [38.25])

    cls = plot_curves.load_log(str(logs["classification"]))
    assert cls.kind == "classification" and cls.skipped_lines == 1
    assert cls.series["val_acc1"][0] == [0.0, 1.0, 2.0, 3.0, 4.0, 5.0]
    assert cls.series["val_acc1"][1][-1] == pytest.approx(55.0)  # fractions drawn in percent
    assert cls.series["train_loss"][1][0] == 1.5 and len(cls.series["val_loss"][0]) == 6
    assert cls.series["step_loss"][0][:2] == [0.25, 0.5] and len(cls.series["step_loss"][0]) == 20


def test_curves_png(logs, tmp_path, capsys):
    out = tmp_path / "curves.png"
    assert plot_curves.main([str(p) for p in logs.values()] + ["--out", str(out), "--title", "t"]) == 0
    pixels = _png(out)
    assert pixels.shape[1] == 1200 and pixels.shape[0] >= 3 * 360  # 2 panels x 3 rows at 100 dpi
    _assert_not_blank(pixels)
    printed = capsys.readouterr().out
    assert "pretrain log, 8 points (1 unreadable line(s) skipped" in printed and "classification log" in printed

    # two runs of one kind share the panels; a lone log gives one row
    scratch = _write_lines(tmp_path / "scratch" / "metrics.json",
                           [{"iteration": 9, "total_loss": 2.0}, {"iteration": 19, "total_loss": 1.5}])
    assert plot_curves.main([str(logs["detection"]), str(scratch), "--out", str(out)]) == 0
    assert _png(out).shape[:2] == (360, 1200)


def test_bad_logs_are_one_line_errors(tmp_path, capsys):
    other = _write_lines(tmp_path / "other.jsonl", [{"foo": 1}])
    empty = tmp_path / "empty"
    empty.mkdir()
    for arg, text in ((str(tmp_path / "missing.jsonl"), "no such file"), (str(other), "keys seen: foo"),
                      (str(empty), "folder holds no log.jsonl or metrics.json")):
        assert plot_curves.main([arg, "--out", str(tmp_path / "c.png")]) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and text in err and err.count("\n") == 1, err
    assert not (tmp_path / "c.png").exists()


# ------------------------------------------------------------------------------ detection pictures

def _shapes(height, width):
    """An image with 5 filled squares, their ground-truth record and a prediction for each."""
    import torch
    from detectron2.structures import Boxes, BoxMode, Instances

    rng = np.random.default_rng(0)
    image = (rng.random((height, width, 3)) * 60 + 100).astype(np.uint8)
    boxes, masks, anns = [], [], []
    for i in range(5):
        side = int(rng.integers(height // 8, height // 4))
        x0, y0 = int(rng.integers(0, width - side)), int(rng.integers(0, height - side))
        mask = np.zeros((height, width), bool)
        mask[y0:y0 + side, x0:x0 + side] = True
        image[mask] = (200, 40 * i, 40)
        boxes.append([x0, y0, x0 + side, y0 + side])
        masks.append(mask)
        anns.append({"bbox": [x0, y0, side, side], "bbox_mode": BoxMode.XYWH_ABS, "category_id": i % 3,
                     "segmentation": [[x0, y0, x0 + side, y0, x0 + side, y0 + side, x0, y0 + side]]})
    pred = Instances((height, width), pred_boxes=Boxes(torch.tensor(boxes, dtype=torch.float32)),
                     scores=torch.linspace(0.6, 0.99, 5), pred_classes=torch.arange(5) % 3,
                     pred_masks=torch.from_numpy(np.stack(masks)))
    return image, {"annotations": anns, "height": height, "width": width}, pred


@pytest.mark.parametrize("height,width", [(192, 192), (480, 640)])
def test_detection_picture_size(height, width, tmp_path):
    pytest.importorskip("detectron2")
    from detectron2.data import MetadataCatalog

    vis = load_tool("visualize_detections")
    meta = MetadataCatalog.get("greenmim_test_pictures")
    meta.thing_classes = ["circle", "square", "triangle"]
    image, record, pred = _shapes(height, width)
    scale = vis.auto_scale(height, width)
    assert scale == (512 / 192 if height == 192 else 1.0)  # small images enlarged, COCO-sized not
    gt = vis.with_header(vis.draw(image, meta, scale, record=record), "ground truth")
    pr = vis.with_header(vis.draw(image, meta, scale, instances=pred), "prediction")
    picture = vis.side_by_side(gt, pr)
    h, w = round(height * scale), round(width * scale)
    assert gt.shape[1] == w and gt.shape[0] > h and picture.shape[1] == 2 * w + 6
    assert min(picture.shape[:2]) >= (512 if height == 192 else 480)
    for panel in (gt, pr):
        _assert_not_blank(panel)
    assert np.abs(gt.astype(int) - pr.astype(int)).mean() > 0  # labels with scores differ from GT's
    assert vis.auto_scale(300, 1000) == 1.0 and vis.auto_scale(100, 400) == pytest.approx(5.12)


# ---------------------------------------------------------------------------------- demo report

def test_demo_report_from_a_finished_folder(logs, tmp_path):
    out = logs["pretrain"].parent.parent  # pretrain/, finetune/, classify/pretrained/ logs in tmp_path
    (out / "detections").mkdir()
    from PIL import Image

    for name in ("detections/a.png", "detections/b.png", "reconstruction.png"):
        Image.fromarray(np.full((8, 8, 3), 90, np.uint8)).save(out / name)
    metrics = {"bbox": {"AP": 41.5, "AP50": 60.0}, "segm": {"AP": 38.25}}
    summary = {"settings": {"quick": True, "device": "cpu", "img_size": 192},
               "stages": {"data": {"seconds": 3.2, "cpu_seconds": 2.0, "reused": True},
                          "finetune": {"seconds": 610.0, "cpu_seconds": 1200.0, "reused": False,
                                       "of_which_evaluation_seconds": 12.0}},
               "total_seconds": 613.2, "this_run_seconds": 610.0, "metrics": {"pretrained": metrics},
               "pictures": ["detections/a.png", "detections/b.png", "reconstruction.png"]}
    (out / "summary.json").write_text(json.dumps(summary))
    report_tool = load_tool("demo_report")
    assert report_tool.main([str(out)]) == 0
    text = (out / "report.md").read_text()
    assert "| GreenMIM-pretrained | box | 41.5 | 60.0 | - |" in text and "| mask | 38.2 |" in text
    assert "| finetune | 10:10 | 20:00 | evaluation 0:12 |" in text and "| data | 0:03 | 0:02 | reused" in text
    assert "- CPU: " in text and "`classify/pretrained/log.jsonl` (classification)" in text
    linked = report_tool.linked_files(text)
    assert linked == ["curves.png", "detections/a.png", "detections/b.png", "reconstruction.png"]
    assert all((out / p).is_file() for p in linked)
    assert _png(out / "curves.png").shape[0] >= 3 * 360  # all three logs found and drawn
    assert report_tool.main([str(tmp_path / "nothing")]) == 2

    # the README's pictures, small enough to commit
    docs = tmp_path / "docs"
    assert report_tool.main([str(out), "--docs", str(docs), "--docs-picture", "detections/b.png"]) == 0
    assert sorted(os.listdir(docs)) == ["curves.png", "detections.png"]
    assert all(0 < (docs / f).stat().st_size < report_tool.DOCS_MAX_BYTES for f in os.listdir(docs))
    assert report_tool.main([str(out), "--docs", str(docs), "--docs-picture", "detections/zz.png"]) == 2
