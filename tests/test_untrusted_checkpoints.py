"""A checkpoint carrying a malicious pickle payload is refused by EVERY load path, with one clear
line, and nothing in it runs (the payload would create a marker file).

Load paths: pretraining resume, tools/export_encoder.py, tools/convert_checkpoint.py,
tools/visualize_reconstruction.py, greenmim_det.load_encoder_weights (the backbone's encoder),
GreenCheckpointer (.pth and detectron2's .pkl), tools/train_net.py train.init_checkpoint and
--resume, tools/visualize_detections.py --checkpoint.
"""
from __future__ import annotations

import os
import pickle

import pytest
import torch

pytest.importorskip("detectron2")

import greenmim  # noqa: E402
from greenmim.engine.pretrain import main as pretrain_main  # noqa: E402
from greenmim_det import CheckpointError, GreenCheckpointer  # noqa: E402
from greenmim_det.checkpoint import load_encoder_weights  # noqa: E402

from conftest import coco_overrides, load_tool  # noqa: E402
from test_detection import T1X, TINY, _tiny_detector  # noqa: E402
from test_pretrain import TINY_CFG, tiny_overrides  # noqa: E402


class Payload:
    """Unpickling this calls open(marker, "w"): code execution, made visible as a file."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.fixture(scope="module")
def evil(tmp_path_factory):
    d = tmp_path_factory.mktemp("evil")
    marker = str(d / "PWNED")
    weights = {"patch_embed.proj.weight": torch.zeros(16, 3, 4, 4)}
    pth, pkl = str(d / "evil.pth"), str(d / "evil.pkl")
    torch.save({"model": weights, "optimizer": {}, "state": {}, "rng": {}, "config": Payload(marker)}, pth)
    with open(pkl, "wb") as f:
        pickle.dump({"model": {"w": 1}, "__author__": "x", "extra": Payload(marker)}, f)
    # control: the payload is real — an unsafe load does create the marker
    torch.load(pth, weights_only=False)
    assert os.path.exists(marker)
    os.remove(marker)
    return {"pth": pth, "pkl": pkl, "marker": marker, "dir": str(d)}


def _own_data(coco):
    """The data overrides under dataset names of this module: detectron2's catalog is global, and
    test_detection registers its own files under the default names."""
    return coco_overrides(coco, dataset="greenmim_untrusted_shapes")


def _refused(evil, message):
    """One line that says the file was refused and nothing ran; the marker is absent."""
    text = str(message).strip()
    assert "\n" not in text, text
    assert "nothing was executed" in text and ("evil.pth" in text or "evil.pkl" in text), text
    assert not os.path.exists(evil["marker"]), "the payload ran"


def test_pretraining_resume_refuses(evil, tmp_path, capsys):
    code = pretrain_main(["--config", TINY_CFG, *tiny_overrides(str(tmp_path), f"resume={evil['pth']}")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("error: ")
    _refused(evil, err[0])


@pytest.mark.parametrize("tool, argv", [
    ("export_encoder", ["{pth}", "{dir}/out.pth"]),
    ("convert_checkpoint", ["{pth}", "{dir}/out.pth"]),
    ("visualize_reconstruction", ["{pth}", "--out", "{dir}/rec.png"]),
])
def test_tools_refuse(evil, capsys, tool, argv):
    code = load_tool(tool).main([a.format(**evil) for a in argv])
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error: ")]
    assert code == 2 and len(err) == 1
    _refused(evil, err[0])
    assert not os.path.exists(os.path.join(evil["dir"], "out.pth"))


def test_encoder_loading_and_detectron2_checkpointer_refuse(evil):
    encoder = greenmim.build_encoder("swin_tiny", img_size=64, embed_dim=16, depths=[1, 1, 1, 1],
                                     num_heads=[1, 1, 1, 1])
    with pytest.raises(CheckpointError) as err:
        load_encoder_weights(encoder, evil["pth"])
    _refused(evil, err.value)


@pytest.fixture(scope="module")
def coco(make_coco):
    return make_coco(num_train=2, num_val=1, img_size=64)


@pytest.mark.parametrize("kind", ["pth", "pkl"])
def test_green_checkpointer_refuses(evil, coco, kind):
    with pytest.raises(CheckpointError) as err:
        GreenCheckpointer(_tiny_detector(coco)).load(evil[kind])
    _refused(evil, err.value)


def test_train_net_weights_resume_and_visualize_refuse(evil, coco, tmp_path):
    train_net = load_tool("train_net")
    opts = TINY + _own_data(coco)
    # MODEL weights (train.init_checkpoint), through --eval-only: the model is built, then loaded
    args = train_net.parse_args(["--config-file", T1X, "--eval-only", *opts, f"train.output_dir={tmp_path / 'a'}",
                                 f"train.init_checkpoint={evil['pth']}"])
    with pytest.raises(SystemExit) as err:
        train_net.main(args)
    assert str(err.value).startswith("error: ")
    _refused(evil, err.value)
    # --resume: output_dir's last_checkpoint names the malicious file
    out = tmp_path / "b"
    out.mkdir()
    (out / "last_checkpoint").write_text(os.path.basename(evil["pth"]))
    os.symlink(evil["pth"], out / os.path.basename(evil["pth"]))
    args = train_net.parse_args(["--config-file", T1X, "--eval-only", "--resume", *opts, f"train.output_dir={out}"])
    with pytest.raises(SystemExit) as err:
        train_net.main(args)
    _refused(evil, err.value)
    # pictures from a checkpoint
    visualize = load_tool("visualize_detections")
    with pytest.raises(SystemExit) as err:
        visualize.main(["--config-file", T1X, "--checkpoint", evil["pkl"], "--input", coco["val_images"],
                        "--output", str(tmp_path / "vis"), *TINY, "model.roi_heads.num_classes=5"])
    _refused(evil, err.value)
