"""Pretraining program: decoder restore order, loss, overfitting, step-exact resume, export, errors.

Tiny models on the CPU (embed 32, one block per stage, 64 px = 2x2 mask units); the whole file runs
in well under a minute on 2 cores. Single-threaded torch: tiny ops are much faster that way and do
not fight other processes for the cores.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from torch import nn

import greenmim
from greenmim.config import ConfigError, load_config
from greenmim.data.masking import MaskGenerator
from greenmim.engine import checkpoint as ckpt
from greenmim.engine.build import build_model, encoder_kwargs
from greenmim.engine.data import StepBatchSampler
from greenmim.engine.optim import lr_at, param_groups
from greenmim.engine.pretrain import batch_layout, main, run
from greenmim.models.decoder import MIMDecoder, restore_by_position
from greenmim.models.mim import GreenMIM, masked_unit_mse, patchify, unpatchify
from greenmim.models.simmim import SimMIM

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY_CFG = os.path.join(ROOT, "configs", "pretrain", "tiny_cpu.yaml")
TINY = dict(img_size=64, embed_dim=32, depths=(1, 1, 1, 1), num_heads=(1, 2, 4, 8), window_size=2)


pytestmark = pytest.mark.usefixtures("one_thread")  # every test on one torch thread (conftest)


def tiny_encoder(**kw):
    return greenmim.build_encoder("swin_tiny", **{**TINY, **kw})


def tiny_overrides(out_dir, *extra):
    """Overrides turning tiny_cpu.yaml into a seconds-long run: 64 px, 8 generated images,
    batch 2 -> 4 steps per epoch, a log line every step."""
    return [f"output_dir={out_dir}", "data.img_size=64", "data.synthetic_size=8", "data.num_workers=0",
            "model.encoder={embed_dim: 32, depths: [1, 1, 1, 1], num_heads: [1, 2, 4, 8], window_size: 2}",
            "model.decoder_dim=32", "model.decoder_num_heads=2", "train.batch_size=2", "train.epochs=3",
            "train.warmup_epochs=1", "log.every_steps=1", "log.tensorboard=false",
            "log.progress_bar=false", "log.vis_every_epochs=0", "checkpoint.every_epochs=0", *extra]


def read_log(out_dir):
    with open(os.path.join(out_dir, "log.jsonl")) as f:
        rows = [json.loads(line) for line in f]
    return {r["step"]: r["loss"] for r in rows if "loss" in r}


# ---- decoder: restore by position --------------------------------------------------------------

def test_restore_places_each_visible_token_at_its_own_position():
    # Per-sample masks whose visible positions are NOT in the order a noise-sort would list them.
    mask = torch.tensor([[[True, False, True], [False, True, False]],
                         [[False, True, True], [True, False, False]]])
    b, l, d = 2, 6, 4
    vis_pos = [[p for p in range(l) if not mask[i].flatten()[p]] for i in range(b)]
    # latent k of sample i encodes its own position: value 100*i + position
    latents = torch.stack([torch.tensor([[100.0 * i + p] * d for p in vis_pos[i]]) for i in range(b)])
    fill = torch.full((1, 1, d), -1.0)
    grid = restore_by_position(latents, mask, fill)
    for i in range(b):
        for p in range(l):
            want = -1.0 if mask[i].flatten()[p] else 100.0 * i + p
            assert torch.all(grid[i, p] == want), (i, p, grid[i, p])


def test_decoder_puts_latents_at_their_positions_through_the_module():
    dec = MIMDecoder(8, (3, 3), dim=8, depth=1, num_heads=2, unit=32)
    # strip the decoder down to its restore step: identity embedding, no blocks, no pos, no head
    dec.embed, dec.norm, dec.pred = nn.Identity(), nn.Identity(), nn.Identity()
    dec.blocks = nn.ModuleList()
    dec.pos_embed.zero_()
    with torch.no_grad():
        dec.mask_token.fill_(-7.0)
    gen = MaskGenerator(96, ratio=0.6, shared=False, seed=3)
    mask = gen(4)
    n = int((~mask[0]).sum())
    pos = torch.stack([(~m.flatten()).nonzero().flatten() for m in mask]).float()  # [B, n] row-major
    latents = pos.unsqueeze(-1).expand(4, n, 8) + 1000.0 * torch.arange(4).view(4, 1, 1)
    out = dec(latents, mask)
    for i in range(4):
        for p in range(9):
            want = -7.0 if mask[i].flatten()[p] else 1000.0 * i + p
            assert torch.all(out[i, p] == want)


def test_green_model_decodes_the_encoder_tokens_in_position_order():
    """End to end: GreenMIM's prediction equals the decoder run on the dense reference features
    taken at the visible units in row-major order, so encoder and decoder agree on the order."""
    torch.manual_seed(0)
    model = GreenMIM(tiny_encoder(img_size=96), img_size=96, decoder_dim=32, decoder_num_heads=2).eval()
    images = torch.randn(2, 3, 96, 96)
    mask = MaskGenerator(96, ratio=0.6, shared=False, seed=1)(2)
    with torch.no_grad():
        pred = model.predict(images, mask)
        dense = model.encoder.forward_masked_reference(images, mask)[-1]     # [B, C, 3, 3]
        tokens = dense.flatten(2).transpose(1, 2)                           # row-major units
        vis = torch.stack([tokens[i][~mask[i].flatten()] for i in range(2)])
        ref = model.decoder(model.encoder.norm(vis), mask)
    torch.testing.assert_close(pred, ref, atol=1e-4, rtol=1e-4)


# ---- loss, patchify, schedule, param groups ------------------------------------------------------

def test_patchify_roundtrip_and_unit_layout():
    x = torch.randn(2, 3, 64, 96)
    u = patchify(x)
    assert u.shape == (2, 6, 32 * 32 * 3)
    assert torch.equal(unpatchify(u, (2, 3)), x)
    assert torch.equal(u[1, 4].view(32, 32, 3).permute(2, 0, 1), x[1, :, 32:64, 32:64])


def test_loss_counts_masked_units_only():
    x = torch.randn(1, 3, 64, 64)
    mask = torch.tensor([[[True, False], [False, False]]])
    pred = torch.zeros(1, 4, 3072)
    base = masked_unit_mse(pred, x, mask)
    pred[0, 1:] = 1e3  # garbage at visible units changes nothing
    assert masked_unit_mse(pred, x, mask) == base
    assert abs(float(base) - 1.0) < 0.01  # zero prediction vs unit-variance target


def test_lr_schedule_and_weight_decay_groups():
    assert lr_at(0, 100, 10, 1.0) == pytest.approx(0.1)
    assert lr_at(9, 100, 10, 1.0) == pytest.approx(1.0)
    assert lr_at(55, 100, 10, 1.0, 0.0) == pytest.approx(0.5)
    assert lr_at(100, 100, 10, 1.0, 0.1) == pytest.approx(0.1)
    model = GreenMIM(tiny_encoder(), img_size=64, decoder_dim=32, decoder_num_heads=2)
    decay, no_decay = param_groups(model, 0.05)
    names = {id(p): n for n, p in model.named_parameters()}
    nd = {names[id(p)] for p in no_decay["params"]}
    assert all(names[id(p)].endswith("weight") and p.ndim >= 2 for p in decay["params"])
    assert "decoder.mask_token" in nd
    assert any("relative_position_bias_table" in n for n in nd)
    assert not any("relative_position_bias_table" in names[id(p)] for p in decay["params"])


def test_sampler_splits_global_batches_over_ranks():
    one = list(StepBatchSampler(20, 4, 1, 0, 1, seed=5))
    two = [list(StepBatchSampler(20, 2, 2, r, 1, seed=5)) for r in range(2)]
    assert [a + b for a, b in zip(*two)] == one
    s = StepBatchSampler(20, 4, 1, 0, 1, seed=5)
    s.set_epoch(0, 2)
    assert list(s) == one[2:]


# ---- optimisation -------------------------------------------------------------------------------

def test_tiny_model_overfits_a_fixed_batch():
    torch.manual_seed(0)
    cfg = load_config(TINY_CFG, tiny_overrides("unused"))
    from greenmim.engine.data import build_dataset
    images = torch.stack([build_dataset(cfg)[(0, i)] for i in range(4)])
    model = GreenMIM(tiny_encoder(), img_size=64, decoder_dim=64, decoder_num_heads=4)
    mask = MaskGenerator(64, 0.5, shared=False, seed=0)(4)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, betas=(0.9, 0.95), weight_decay=0.0)
    losses = []
    for _ in range(40):
        loss = model(images, mask)["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[0] / losses[-1] >= 5.0, losses


def test_simmim_baseline_trains_and_masks_its_loss():
    torch.manual_seed(0)
    model = SimMIM(tiny_encoder())
    images = torch.randn(2, 3, 64, 64)
    mask = MaskGenerator(64, 0.5, shared=True, seed=0)(2)
    out = model(images, mask)
    assert out["pred"].shape == images.shape
    out["loss"].backward()
    assert model.mask_token.grad is not None and model.mask_token.grad.abs().sum() > 0
    rec = model.reconstruct(images, mask)
    assert rec.shape == images.shape


# ---- the program: resume, export, errors ------------------------------------------------------

def test_resume_is_step_exact_and_export_loads(tmp_path):
    straight, split = str(tmp_path / "straight"), str(tmp_path / "split")
    run(load_config(TINY_CFG, tiny_overrides(straight)))                          # 12 steps
    run(load_config(TINY_CFG, tiny_overrides(split, "train.max_steps=6")))        # stops mid-epoch 2
    first = read_log(split)
    assert max(first) == 6 and not os.path.exists(os.path.join(split, "encoder.pth"))
    run(load_config(TINY_CFG, tiny_overrides(split)))                             # resume=auto
    a, b = read_log(straight), read_log(split)
    assert sorted(a) == sorted(b) == list(range(1, 13))
    for step in a:
        assert abs(a[step] - b[step]) <= 1e-6, (step, a[step], b[step])
    wa = ckpt.load(os.path.join(straight, ckpt.LAST))
    wb = ckpt.load(os.path.join(split, ckpt.LAST))
    assert wa["state"] == wb["state"] == {"step": 12, "epoch": 3, "epoch_step": 0}
    for k in wa["model"]:
        assert torch.equal(wa["model"][k], wb["model"][k]), k

    # the encoder export: original Swin layout, loads strictly into build_encoder
    exported = ckpt.load(os.path.join(split, "encoder.pth"))
    enc = greenmim.build_encoder(exported["arch"], **exported["encoder_kwargs"])
    missing, unexpected = enc.load_state_dict(exported["model"], strict=True)
    assert not missing and not unexpected
    assert any(k.startswith("patch_embed.proj") for k in exported["model"])
    # and the standalone tool gives the same file from any checkpoint
    out = str(tmp_path / "enc.pth")
    subprocess.run([sys.executable, os.path.join(ROOT, "tools", "export_encoder.py"),
                    os.path.join(split, ckpt.LAST), out], check=True, env=_env())
    again = ckpt.load(out)
    assert again["model"].keys() == exported["model"].keys()
    assert all(torch.equal(again["model"][k], exported["model"][k]) for k in again["model"])


def test_accumulation_and_per_sample_masks_match_the_big_batch(tmp_path):
    one, acc = str(tmp_path / "one"), str(tmp_path / "acc")
    common = ["mask.shared=false", "train.batch_size=4", "train.epochs=1", "data.synthetic_size=12"]
    run(load_config(TINY_CFG, tiny_overrides(one, *common)))
    run(load_config(TINY_CFG, tiny_overrides(acc, *common, "train.accum_iter=2")))
    a, b = read_log(one), read_log(acc)
    assert sorted(a) == sorted(b) == [1, 2, 3]
    for s in a:
        assert abs(a[s] - b[s]) < 1e-5, (s, a[s], b[s])


def test_reconstruction_figure_and_tool(tmp_path):
    out = str(tmp_path / "vis")
    run(load_config(TINY_CFG, tiny_overrides(out, "train.epochs=1", "log.vis_every_epochs=1",
                                             "log.vis_samples=3", "model.type=simmim")))
    from PIL import Image
    png = os.path.join(out, "vis", "reconstruction-0001.png")
    w, h = Image.open(png).size
    assert w > 4 * 64 and h > 3 * 64
    fig = str(tmp_path / "fig.png")
    subprocess.run([sys.executable, os.path.join(ROOT, "tools", "visualize_reconstruction.py"),
                    os.path.join(out, ckpt.LAST), "--out", fig, "--num", "2",
                    "--data-path", "synthetic"], check=True, env=_env())
    assert Image.open(fig).size[0] == w


def test_nan_loss_stops_with_step_and_keeps_last_checkpoint(tmp_path, monkeypatch, capsys):
    out = str(tmp_path / "nan")
    import greenmim.models.mim as mim
    real, calls = mim.masked_unit_mse, {"n": 0}

    def poisoned(*a, **k):
        calls["n"] += 1
        loss = real(*a, **k)
        return loss * float("nan") if calls["n"] == 3 else loss

    monkeypatch.setattr(mim, "masked_unit_mse", poisoned)
    code = main(["--config", TINY_CFG, *tiny_overrides(out, "checkpoint.every_steps=1")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert err[-1].startswith("error: loss is nan at step 3"), err
    last = ckpt.load(os.path.join(out, ckpt.LAST))
    assert last["state"]["step"] == 2
    assert all(torch.isfinite(v).all() for v in last["model"].values() if v.is_floating_point())


@pytest.mark.parametrize("override, message", [
    ("train.bacth_size=8", "unknown config key 'train.bacth_size'"),
    ("data.path=/does/not/exist", "data.path: image folder /does/not/exist does not exist"),
    ("train.batch_size=3", "train.batch_size=3 is not divisible by 1 processes x train.accum_iter=2"),
])
def test_user_errors_are_one_line(tmp_path, capsys, override, message):
    code = main(["--config", TINY_CFG, *tiny_overrides(str(tmp_path), "train.accum_iter=2"), override])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("error: ") and message in err[0], err


def test_batch_must_split_over_processes():
    cfg = load_config(TINY_CFG, ["train.batch_size=6"])
    assert batch_layout(cfg, 2) == 3
    with pytest.raises(ConfigError, match="not divisible by 4 processes"):
        batch_layout(cfg, 4)


def test_empty_data_folder_is_one_clear_error(tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    code = main(["--config", TINY_CFG, *tiny_overrides(str(tmp_path / "o"), f"data.path={empty}")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "no images" in err[0]


def test_every_shipped_config_resolves_and_builds():
    folder = os.path.join(ROOT, "configs", "pretrain")
    names = sorted(f for f in os.listdir(folder) if f.endswith(".yaml"))
    assert {"tiny_cpu.yaml", "greenmim_swin_base_w7.yaml", "simmim_swin_base_w7.yaml"} <= set(names)
    for name in names:
        cfg = load_config(os.path.join(folder, name))
        if name.startswith("greenmim_"):
            assert os.path.exists(os.path.join(folder, "simmim_" + name[len("greenmim_"):]))
        if "large" in name or "base" in name:
            continue  # building the big ones is slow; their encoder kwargs are checked below
        model = build_model(cfg)
        assert isinstance(model, SimMIM if cfg["model"]["type"] == "simmim" else GreenMIM)
    big = load_config(os.path.join(folder, "greenmim_swin_large_w14.yaml"))
    assert encoder_kwargs(big) == {"drop_path_rate": 0.0, "window_size": 14, "img_size": 224}
    assert big["train"]["batch_size"] == 2048 and big["train"]["betas"] == [0.9, 0.95]


def _env():
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (os.path.join(ROOT, "pretrain"), env.get("PYTHONPATH")) if p)
    return env
