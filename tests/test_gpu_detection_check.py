"""tools/benchmarks/gpu_detection_check.py on the CPU, in seconds: the COCO-format data it draws
with PIL and the tools/train_net.py command line it builds (Swin-T for CUDA, the tiny model for a
CPU) are what train_net accepts, and a failed install still leaves its FAIL row. The whole check
runs on a GPU machine; `DEVICE=cpu PYTHON=.venv/bin/python bash tools/benchmarks/gpu_detection_check.sh`
is its end-to-end dry run here (~30 s)."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from conftest import REPO, load_tool

pytest.importorskip("detectron2")


@pytest.fixture(scope="module")
def check():
    return load_tool("benchmarks/gpu_detection_check")


def test_generated_data_and_command_line_are_what_train_net_takes(check, tmp_path):
    from detectron2.config import LazyConfig, instantiate
    from detectron2.data.detection_utils import polygons_to_bitmask
    from detectron2.structures import BoxMode

    from greenmim_det.config_check import check_override_keys

    train_net = load_tool("train_net")
    data = check.make_coco(str(tmp_path / "data"), num_train=3, num_val=2, width=160, height=120)
    for device in ("cuda", "cpu"):
        args = check.defaults(check.parse_args(["--device", device]))
        cmd = check.train_net_command(args, data, str(tmp_path / device))
        assert cmd[1] == os.path.join(REPO, "tools", "train_net.py")
        parsed = train_net.parse_args(cmd[2:])
        cfg = LazyConfig.load(parsed.config_file)
        check_override_keys(cfg, parsed.opts)  # every key exists: a misspelt one would be added silently
        cfg = LazyConfig.apply_overrides(cfg, parsed.opts)
        assert cfg.train.device == device and cfg.train.max_iter == args.iters
        assert cfg.model.backbone.bottom_up.arch == "swin_tiny"
        # the tiny model on a CPU, Swin-T's own widths (the arch's defaults) for CUDA
        assert cfg.model.backbone.bottom_up.get("embed_dim") == (16 if device == "cpu" else None)
        assert cfg.model.roi_heads.num_classes == len(check.CLASSES)

    # the data as train_net's dataset and mapper read them (the last config: the CPU one)
    records = instantiate(cfg.dataloader.train.dataset)
    assert len(records) == 3
    for record in records:
        assert 1 <= len(record["annotations"]) <= 4
        for ann in record["annotations"]:
            mask = polygons_to_bitmask(ann["segmentation"], record["height"], record["width"])
            ys, xs = np.nonzero(mask)
            x0, y0, x1, y1 = BoxMode.convert(ann["bbox"], ann["bbox_mode"], BoxMode.XYXY_ABS)
            assert abs(xs.min() - x0) <= 1.5 and abs(xs.max() + 1 - x1) <= 1.5
            assert abs(ys.min() - y0) <= 1.5 and abs(ys.max() + 1 - y1) <= 1.5
    sample = instantiate(cfg.dataloader.train.mapper)(records[0])
    assert sample["instances"].gt_masks.polygons and sample["image"].shape[0] == 3
    val = json.load(open(data["val_json"]))
    assert [c["name"] for c in val["categories"]] == list(check.CLASSES) and len(val["images"]) == 2


def test_failed_install_leaves_its_fail_row(tmp_path):
    helper = os.path.join(REPO, "tools", "benchmarks", "gpu_detection_check.py")
    proc = subprocess.run([sys.executable, helper, "--out", str(tmp_path), "--device", "cpu",
                           "--setup-error", "detectron2 did not build: boom"], capture_output=True, text=True)
    assert proc.returncode == 1, proc.stderr
    row = json.loads(open(tmp_path / "gpu_detection.jsonl").read())
    assert row["status"] == "FAIL" and row["problems"] == ["detectron2 did not build: boom"]
    assert "| FAIL |" in open(tmp_path / "gpu_detection.md").read()
