"""Classification fine-tuning: learning, --eval-only, step-exact resume, mixup, layer decay, bad input.

Tiny Swin (embed 32, one block per stage) at 64 px on a generated 3-class split (the easy
`--plain` task: a zoomed coloured silhouette per image), single-threaded torch.
"""
from __future__ import annotations

import json
import os

import pytest
import torch

from greenmim.config import ConfigError
from greenmim.engine import checkpoint as ckpt
from greenmim.engine.finetune import BEST, build_mixup_and_loss, main, run
from greenmim.engine.finetune_config import load_finetune_config
from greenmim.engine.layer_decay import layer_decay_param_groups, layer_scales
from greenmim.models.classifier import build_classifier

from conftest import load_tool

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY_CFG = os.path.join(ROOT, "configs", "finetune", "tiny_cpu.yaml")
TINY_ENC = dict(embed_dim=32, depths=(1, 1, 1, 1), num_heads=(1, 2, 4, 8), window_size=2)


pytestmark = pytest.mark.usefixtures("one_thread")  # every test on one torch thread (conftest)


@pytest.fixture(scope="session")
def shapes(tmp_path_factory):
    out = tmp_path_factory.mktemp("shapes_cls")
    return load_tool("make_synthetic_classification").make_classification_split(
        str(out), train_per_class=12, val_per_class=8, img_size=64, seed=0,
        classes=["circle", "star", "triangle"], plain=True)


def tiny_overrides(data, out_dir, *extra):
    """tiny_cpu.yaml as a seconds-long run: 64 px, 36 train images, batch 6 -> 6 steps/epoch."""
    return [f"data.path={data}", f"output_dir={out_dir}", "data.img_size=64", "data.num_workers=0",
            "model.encoder={embed_dim: 32, depths: [1, 1, 1, 1], num_heads: [1, 2, 4, 8], window_size: 2}",
            "train.batch_size=6", "train.epochs=2", "train.warmup_epochs=1", "train.lr=1e-4",
            "log.every_steps=1", "log.tensorboard=false", "log.progress_bar=false", *extra]


EASY = ["aug.mixup=0", "aug.cutmix=0", "data.auto_augment=null", "data.re_prob=0",
        "data.color_jitter=0", "data.scale=[0.9, 1.0]", "model.drop_path_rate=0"]


def epochs_of(out_dir):
    with open(os.path.join(out_dir, "log.jsonl")) as f:
        rows = [json.loads(line) for line in f]
    return {r["epoch"]: r for r in rows if "val_acc1" in r}


def test_tiny_config_learns_and_eval_only_reproduces(shapes, tmp_path, capsys):
    out = str(tmp_path / "ft")
    summary = run(load_finetune_config(TINY_CFG, tiny_overrides(shapes, out, *EASY)))
    rows = epochs_of(out)
    assert sorted(rows) == [1, 2]
    assert set(rows[2]) >= {"epoch", "train_loss", "val_acc1", "val_acc5"}
    assert rows[2]["val_acc1"] >= 80.0, rows  # chance is 33.3
    best = ckpt.load(os.path.join(out, BEST))
    assert best["classes"] == ["circle", "star", "triangle"]
    capsys.readouterr()
    code = main(["--config", TINY_CFG, *tiny_overrides(shapes, str(tmp_path / "ev")), "--eval-only",
                 "--checkpoint", os.path.join(out, ckpt.LAST)])
    assert code == 0
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert printed["val_acc1"] == pytest.approx(rows[2]["val_acc1"])
    assert printed["val_acc5"] == pytest.approx(rows[2]["val_acc5"])
    with open(tmp_path / "ev" / "eval.json") as f:
        assert json.load(f)["val_acc1"] == pytest.approx(summary["val_acc1"])


def test_resume_is_step_exact(shapes, tmp_path):
    # default augmentation (RandAugment, mixup / cutmix, random erasing, drop path) on purpose:
    # every random draw must replay after the resume
    whole, part = str(tmp_path / "whole"), str(tmp_path / "part")
    run(load_finetune_config(TINY_CFG, tiny_overrides(shapes, whole)))
    run(load_finetune_config(TINY_CFG, tiny_overrides(shapes, part, "train.max_steps=4")))
    assert ckpt.load(os.path.join(part, ckpt.LAST))["state"]["step"] == 4
    run(load_finetune_config(TINY_CFG, tiny_overrides(shapes, part)))
    a = ckpt.load(os.path.join(whole, ckpt.LAST))["model"]
    b = ckpt.load(os.path.join(part, ckpt.LAST))["model"]
    for k in a:
        assert torch.equal(a[k], b[k]), k
    ra, rb = epochs_of(whole), epochs_of(part)
    assert ra[2]["val_acc1"] == rb[2]["val_acc1"]
    assert ra[1]["train_loss"] == pytest.approx(rb[1]["train_loss"], rel=1e-6)


def test_layer_decay_factors_follow_the_recipe():
    model = build_classifier("swin_tiny", 3, img_size=64, **{**TINY_ENC, "depths": (2, 2, 2, 2)})
    depth = model.num_layers  # sum(depths) + 1 ids below the head
    assert depth == 9
    scales = layer_scales(model, 0.9)
    expect = {"patch_embed.proj.weight": 0, "layers.0.blocks.0.attn.qkv.weight": 1,
              "layers.0.blocks.1.mlp.fc1.weight": 2, "layers.0.downsample.reduction.weight": 2,
              "layers.2.blocks.1.norm1.weight": 6, "layers.3.blocks.1.attn.proj.weight": 8,
              "norm.weight": 8, "head.weight": 9}
    for name, layer in expect.items():
        assert scales[name] == pytest.approx(0.9 ** (depth - layer)), name
    groups = layer_decay_param_groups(model, 0.05, 0.9)
    by_param = {id(p): g for g in groups for p in g["params"]}
    named = dict(model.named_parameters())
    assert by_param[id(named["head.bias"])]["weight_decay"] == 0.0
    assert by_param[id(named["head.weight"])]["weight_decay"] == 0.05
    table = "layers.1.blocks.0.attn.relative_position_bias_table"
    if table in named:
        assert by_param[id(named[table])]["weight_decay"] == 0.0
    assert sum(len(g["params"]) for g in groups) == len(named)


def test_twins_layer_ids_align_with_swin():
    model = build_classifier("twins_svt_small", 3, img_size=64, embed_dim=16, depths=(1, 1, 2, 1),
                             num_heads=(1, 1, 2, 2), sr_ratios=(8, 4, 2, 1))
    scales = layer_scales(model, 0.5)
    assert model.num_layers == 6
    assert scales["patch_embeds.0.proj.weight"] == 0.5 ** 6
    assert scales["head.weight"] == 1.0
    assert scales["norm.weight"] == 0.5


def test_mixup_active_in_training_off_in_eval(shapes):
    cfg = load_finetune_config(TINY_CFG, tiny_overrides(shapes, "unused"))
    mixup, criterion = build_mixup_and_loss(cfg, 3)
    assert mixup is not None and type(criterion).__name__ == "SoftTargetCrossEntropy"
    x, y = torch.rand(6, 3, 64, 64), torch.tensor([0, 1, 2, 0, 1, 2])
    torch.manual_seed(0)
    import numpy as np
    np.random.seed(0)
    xm, ym = mixup(x.clone(), y)
    assert ym.shape == (6, 3) and not torch.equal(xm, x)   # images and targets are mixed
    assert (ym.max(1).values < 1.0).all()                   # soft targets
    # evaluation never mixes: the loader's images reach the model unchanged
    from greenmim.engine.finetune_epoch import evaluate
    seen = []
    model = build_classifier("swin_tiny", 3, img_size=64, **TINY_ENC)
    model.register_forward_pre_hook(lambda m, args: seen.append(args[0].clone()))
    res = evaluate(model, [(x, y)], torch.device("cpu"))
    assert torch.equal(seen[0], x) and res["images"] == 6
    off = load_finetune_config(TINY_CFG, tiny_overrides(shapes, "unused", "aug.mixup=0", "aug.cutmix=0"))
    assert build_mixup_and_loss(off, 3)[0] is None


# --------------------------------------------------------------------------------- bad input

def _error(capsys, argv):
    capsys.readouterr()
    code = main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("error: "), err
    return err[0]


def test_bad_data_is_one_line(shapes, tmp_path, capsys):
    import shutil
    bad = tmp_path / "bad"
    shutil.copytree(shapes, bad)
    shutil.rmtree(bad / "val" / "star")
    msg = _error(capsys, ["--config", TINY_CFG, *tiny_overrides(str(bad), str(tmp_path / "o"))])
    assert "different classes" in msg and "star" in msg
    shutil.rmtree(bad / "val")
    msg = _error(capsys, ["--config", TINY_CFG, *tiny_overrides(str(bad), str(tmp_path / "o"))])
    assert "no val/ folder" in msg


def test_eval_only_checkpoint_of_another_model_is_one_line(shapes, tmp_path, capsys):
    out = str(tmp_path / "ft")
    run(load_finetune_config(TINY_CFG, tiny_overrides(shapes, out, "train.max_steps=1")))
    last = os.path.join(out, ckpt.LAST)
    msg = _error(capsys, ["--config", TINY_CFG, *tiny_overrides(shapes, out), "--eval-only",
                          "--checkpoint", last, "model.encoder.embed_dim=64"])
    assert "another architecture" in msg and "embed_dim" in msg
    two = tmp_path / "two"
    import shutil
    shutil.copytree(shapes, two)
    for split in ("train", "val"):
        shutil.rmtree(two / split / "triangle")
    msg = _error(capsys, ["--config", TINY_CFG, *tiny_overrides(str(two), out), "--eval-only",
                          "--checkpoint", last])
    assert "classifies 3 classes" in msg and "2 class folders" in msg
    msg = _error(capsys, ["--config", TINY_CFG, *tiny_overrides(shapes, out), "--eval-only"])
    assert "--checkpoint" in msg


def test_num_classes_mismatch_is_one_line(shapes, tmp_path, capsys):
    msg = _error(capsys, ["--config", TINY_CFG, *tiny_overrides(shapes, str(tmp_path / "o"),
                                                                "model.num_classes=5")])
    assert "model.num_classes=5" in msg and "3 class folders" in msg
    with pytest.raises(ConfigError, match="train.layer_decay"):
        load_finetune_config(TINY_CFG, tiny_overrides(shapes, "o", "train.layer_decay=0"))


def test_every_config_loads_and_tiny_cpu_runs_at_64_px():
    from greenmim.engine.finetune import build_classifier_from_config
    folder = os.path.join(ROOT, "configs", "finetune")
    names = sorted(n for n in os.listdir(folder) if n.endswith(".yaml"))
    assert {"greenmim_swin_base_w7_in1k.yaml", "greenmim_swin_large_w14_in1k.yaml", "swin_tiny.yaml",
            "twins_svt_base.yaml", "tiny_cpu.yaml"} <= set(names)
    recipes = {n: load_finetune_config(os.path.join(folder, n)) for n in names}
    base, large = recipes["greenmim_swin_base_w7_in1k.yaml"], recipes["greenmim_swin_large_w14_in1k.yaml"]
    assert (base["train"]["blr"], base["train"]["layer_decay"], base["model"]["drop_path_rate"]) == (1.25e-3, 0.9, 0.1)
    assert (large["train"]["blr"], large["train"]["layer_decay"], large["model"]["drop_path_rate"]) == (1e-3, 0.8, 0.3)
    assert large["model"]["encoder"]["window_size"] == 14 and base["train"]["warmup_epochs"] == 20
    for img in (64, 192):
        cfg = load_finetune_config(os.path.join(folder, "tiny_cpu.yaml"), [f"data.img_size={img}"])
        model, _ = build_classifier_from_config(cfg, 5)
        assert model.eval()(torch.zeros(1, 3, img, img)).shape == (1, 5)
