"""Weights into detectors: timm-layout files through GreenCheckpointer (nothing missing),
--format detectron2 files through detectron2's stock DetectionCheckpointer, and the one-line load
report in tools/train_net.py's own output."""
from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest
import timm
import torch

pytest.importorskip("detectron2")

from detectron2.checkpoint import DetectionCheckpointer  # noqa: E402
from detectron2.config import LazyConfig, instantiate  # noqa: E402

import greenmim  # noqa: E402
from greenmim.weights import convert_encoder_state_dict, save_safetensors  # noqa: E402
from greenmim_det import GreenCheckpointer  # noqa: E402
from conftest import REPO, SIDE, coco_overrides, load_tool  # noqa: E402
from test_detection import T1X, TINY  # noqa: E402

CONFIGS = os.path.join(REPO, "configs", "detection")
SLIM_HEADS = [o for o in TINY if not o.startswith("model.backbone.bottom_up.")]
# arch -> (detection config, timm model, timm kwargs): real widths and depths, window 2
CASES = {
    "swin_tiny": ("mask_rcnn_green_swin_t_fpn_1x.py", "swin_tiny_patch4_window7_224", dict(window_size=2)),
    "swin_base": ("mask_rcnn_green_swin_b_fpn_1x.py", "swin_base_patch4_window7_224", dict(window_size=2)),
    "twins_svt_small": ("mask_rcnn_green_twins_svt_s_fpn_1x.py", "twins_svt_small", dict(wss=[2, 2, 2, 2])),
}
TINY_TIMM = dict(embed_dim=16, depths=(1, 1, 1, 1), num_heads=(1, 1, 1, 1))


def _detector(config, extra=()):
    cfg = LazyConfig.apply_overrides(LazyConfig.load(os.path.join(CONFIGS, config)), SLIM_HEADS + list(extra))
    return instantiate(cfg.model)


@pytest.mark.parametrize("arch", sorted(CASES))
def test_timm_safetensors_initialise_a_detector_with_zero_missing_tensors(arch, tmp_path, caplog):
    config, name, timm_kw = CASES[arch]
    torch.manual_seed(0)
    sd = timm.create_model(name, pretrained=False, img_size=64, **timm_kw).state_dict()
    path = tmp_path / "model.safetensors"
    save_safetensors(sd, str(path))
    detector = _detector(config, ["model.backbone.bottom_up.window_size=2"])
    with caplog.at_level("INFO", logger="greenmim_det.checkpoint"):
        GreenCheckpointer(detector).load(str(path))
    lines = [r.getMessage() for r in caplog.records if "GreenCheckpointer" in r.getMessage()]
    assert len(lines) == 1 and f"from {path} (timm layout)" in lines[0]
    assert "missing encoder tensors: 0" in lines[0]
    loaded = detector.backbone.bottom_up.encoder.state_dict()
    expected, _ = convert_encoder_state_dict(sd)
    for k, v in loaded.items():  # every tensor of the detector's encoder came from the file
        assert torch.equal(v, expected[k]), k


def _tiny_encoder_export(tmp_path):
    encoder = greenmim.build_encoder("swin_tiny", img_size=224, embed_dim=16, depths=[1, 1, 1, 1],
                                     num_heads=[1, 1, 1, 1])
    path = tmp_path / "encoder.safetensors"
    save_safetensors(encoder.state_dict(), str(path))
    return encoder.state_dict(), str(path)


def test_format_detectron2_loads_with_detectron2s_stock_checkpointer(tmp_path, capsys, caplog):
    source, export = _tiny_encoder_export(tmp_path)
    out = str(tmp_path / "swin_t_d2.pth")
    assert load_tool("convert_checkpoint").main([export, out, "--format", "detectron2"]) == 0
    assert "DetectionCheckpointer(model).load" in capsys.readouterr().out
    detector = _detector("mask_rcnn_green_swin_t_fpn_1x.py", TINY[:3])
    DetectionCheckpointer(detector).load(out)  # detectron2's own, no greenmim code
    backbone = {k: v for k, v in detector.state_dict().items() if k.startswith("backbone.bottom_up.encoder.")}
    assert backbone
    for k, v in backbone.items():
        assert torch.equal(v, source[k[len("backbone.bottom_up.encoder."):]]), k
    # ours reads the same file with its one-line report
    detector = _detector("mask_rcnn_green_swin_t_fpn_1x.py", TINY[:3])
    with caplog.at_level("INFO", logger="greenmim_det.checkpoint"):
        GreenCheckpointer(detector).load(out)
    lines = [r.getMessage() for r in caplog.records if "GreenCheckpointer" in r.getMessage()]
    assert len(lines) == 1 and "(detectron2 model, Swin layout)" in lines[0] and "missing encoder tensors: 0" in lines[0]


@pytest.fixture(scope="module")
def coco(make_coco):
    return make_coco(num_train=1, num_val=1, img_size=64)


def test_train_net_prints_the_one_line_load_report(coco, tmp_path):
    """What a user sees: tools/train_net.py run as a program, initialised from a timm-layout
    model.safetensors, reports what it loaded on its terminal and in output_dir/log.txt."""
    path = str(tmp_path / "model.safetensors")
    save_safetensors(timm.create_model("swin_tiny_patch4_window7_224", pretrained=False, **TINY_TIMM).state_dict(), path)
    out = tmp_path / "run"
    opts = TINY + coco_overrides(coco, num_train_iters_batch=1) + [
        f"dataloader.train.mapper.augmentations.0.short_edge_length={SIDE}",
        f"train.output_dir={out}", f"train.init_checkpoint={path}"]
    cmd = [sys.executable, os.path.join(REPO, "tools", "train_net.py"), "--config-file", T1X, "--eval-only", *opts]
    res = subprocess.run(cmd, env=dict(os.environ, PYTHONWARNINGS="ignore"), capture_output=True, text=True,
                         timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    report = re.compile(rf"GreenCheckpointer: loaded \d+ encoder tensors from {re.escape(path)} \(timm layout\)")
    lines = [ln for ln in (res.stdout + res.stderr).splitlines() if report.search(ln)]
    assert len(lines) == 1 and "missing encoder tensors: 0" in lines[0], (res.stdout + res.stderr)[-3000:]
    assert report.search((out / "log.txt").read_text())
