"""train.model_ema=true: an EMA of the weights (timm ModelEmaV3) is kept apart from the live weights,
evaluated every eval epoch (val_ema_acc1 / val_ema_acc5), saved in checkpoint-last.pth and
restored step-exactly by a resume.

Same tiny setting as test_finetune.py (64 px plain shapes, one block per stage, one thread).
"""
from __future__ import annotations

import json
import os

import pytest
import torch

from greenmim.engine import checkpoint as ckpt
from greenmim.engine.finetune import main, run
from greenmim.engine.finetune_config import load_finetune_config

from conftest import load_tool
from test_finetune import EASY, TINY_CFG, epochs_of, tiny_overrides

pytestmark = pytest.mark.usefixtures("one_thread")  # every test on one torch thread (conftest)

# a short decay, so that a few steps move the EMA visibly (the recipe's 0.9999 barely moves)
EMA = ["train.model_ema=true", "train.model_ema_decay=0.5"]


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    out = tmp_path_factory.mktemp("shapes_cls_ema")
    return load_tool("make_synthetic_classification").make_classification_split(
        str(out), train_per_class=6, val_per_class=4, img_size=64, seed=0,
        classes=["circle", "star", "triangle"], plain=True)


def _floats(state):
    return {k: v for k, v in state.items() if v.is_floating_point()}


def test_ema_is_kept_evaluated_saved_and_resumed(shapes, tmp_path, capsys):
    whole, part = str(tmp_path / "whole"), str(tmp_path / "part")
    extra = [*EASY, *EMA, "train.batch_size=6"]  # 18 images: 3 steps per epoch
    run(load_finetune_config(TINY_CFG, tiny_overrides(shapes, whole, *extra)))
    last = ckpt.load(os.path.join(whole, ckpt.LAST))
    assert last["state"]["step"] == 6
    live, ema = _floats(last["model"]), _floats(last["ema"])
    assert set(live) == set(ema)
    moved = [k for k in live if not torch.equal(live[k], ema[k])]
    assert len(moved) > len(live) // 2, "EMA weights equal the live weights"
    rows = epochs_of(whole)
    for epoch in (1, 2):
        assert 0.0 <= rows[epoch]["val_ema_acc1"] <= rows[epoch]["val_ema_acc5"] <= 100.0

    # the logged EMA figures are those of the saved EMA weights
    as_model = dict(last, model=last["ema"])
    ema_ckpt = str(tmp_path / "ema_as_model.pth")
    torch.save(as_model, ema_ckpt)
    capsys.readouterr()
    assert main(["--config", TINY_CFG, *tiny_overrides(shapes, str(tmp_path / "ev"), *extra),
                 "--eval-only", "--checkpoint", ema_ckpt]) == 0
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert printed["val_acc1"] == pytest.approx(rows[2]["val_ema_acc1"])

    # stop after 4 steps (mid epoch 2), resume: the EMA ends bit-identical
    run(load_finetune_config(TINY_CFG, tiny_overrides(shapes, part, *extra, "train.max_steps=4")))
    assert ckpt.load(os.path.join(part, ckpt.LAST))["state"]["step"] == 4
    run(load_finetune_config(TINY_CFG, tiny_overrides(shapes, part, *extra)))
    resumed = ckpt.load(os.path.join(part, ckpt.LAST))
    for k, v in last["ema"].items():
        assert torch.equal(v, resumed["ema"][k]), k
    assert epochs_of(part)[2]["val_ema_acc1"] == rows[2]["val_ema_acc1"]
