"""Fine-tuning's weights: model.init from our pretraining checkpoint / encoder export, official
GreenMIM and Microsoft Swin files (zero missing encoder tensors); the fine-tuned checkpoint in
timm's Swin classifier (timm's own checkpoint filter) gives the same logits."""
from __future__ import annotations

import os

import pytest
import torch

from greenmim.config import load_config
from greenmim.engine import checkpoint as ckpt
from greenmim.engine.build import build_model
from greenmim.engine.finetune import run
from greenmim.engine.finetune_config import load_finetune_config
from greenmim.engine.finetune_init import init_classifier
from greenmim import build_encoder
from greenmim.models.classifier import build_classifier

from test_finetune import TINY_CFG, TINY_ENC, shapes, tiny_overrides  # noqa: F401

pytestmark = pytest.mark.usefixtures("one_thread")  # every test on one torch thread (conftest)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PRETRAIN_CFG = os.path.join(ROOT, "configs", "pretrain", "tiny_cpu.yaml")


def _pretraining_state():
    cfg = load_config(PRETRAIN_CFG, [
        "data.img_size=64", "model.decoder_dim=32", "model.decoder_num_heads=2",
        "model.encoder={embed_dim: 32, depths: [1, 1, 1, 1], num_heads: [1, 2, 4, 8], window_size: 2}"])
    torch.manual_seed(3)
    return build_model(cfg).state_dict(), cfg


def _files(tmp_path):
    """name -> (path, expected encoder state dict) in every supported layout."""
    full, cfg = _pretraining_state()
    enc = ckpt.encoder_state_dict(full)
    files = {}
    ours = tmp_path / "checkpoint-last.pth"
    torch.save({"model": full, "config": cfg, "state": {"step": 1}}, ours)
    files["pretraining checkpoint"] = ours
    files["encoder export"] = ckpt.export_encoder(full, str(tmp_path / "encoder.pth"), cfg)
    official = {"encoder." + k: v for k, v in enc.items()}
    official.update({"mask_token": torch.zeros(1, 1, 32), "decoder_embed.weight": torch.zeros(32, 256),
                     "decoder_pred.weight": torch.zeros(3072, 32)})
    torch.save({"model": official, "epoch": 800}, tmp_path / "greenmim_official.pth")
    files["official GreenMIM"] = tmp_path / "greenmim_official.pth"
    swin = dict(enc)
    swin.update({"head.weight": torch.zeros(1000, 256), "head.bias": torch.zeros(1000),
                 "layers.0.blocks.0.attn.relative_position_index": torch.zeros(4, 4, dtype=torch.long)})
    torch.save({"model": swin}, tmp_path / "swin_microsoft.pth")
    files["Microsoft Swin"] = tmp_path / "swin_microsoft.pth"
    return {k: str(v) for k, v in files.items()}, enc


def test_every_format_initialises_the_classifier(tmp_path):
    files, enc = _files(tmp_path)
    for name, path in files.items():
        torch.manual_seed(0)
        model = build_classifier("swin_tiny", 3, img_size=64, **TINY_ENC)
        line = init_classifier(model, path, build_encoder("swin_tiny", img_size=64, **TINY_ENC))
        assert "\n" not in line and line.startswith("model.init: "), line
        sd = model.state_dict()
        for k, v in enc.items():
            assert torch.equal(sd[k], v), (name, k)
        if name == "Microsoft Swin":
            assert "head dropped" in line and "1000 classes" in line, line
        else:
            assert "head: random init" in line, line


def test_head_of_the_right_size_is_loaded(tmp_path):
    src = build_classifier("swin_tiny", 3, img_size=64, **TINY_ENC)
    torch.save({"model": src.state_dict()}, tmp_path / "ft.pth")
    model = build_classifier("swin_tiny", 3, img_size=64, **TINY_ENC)
    line = init_classifier(model, str(tmp_path / "ft.pth"), build_encoder("swin_tiny", img_size=64, **TINY_ENC))
    assert "head loaded" in line
    assert torch.equal(model.head.weight, src.head.weight)


def test_init_of_another_architecture_is_one_line(tmp_path, shapes, capsys):  # noqa: F811
    from greenmim.engine.finetune import main
    files, _ = _files(tmp_path)
    capsys.readouterr()
    code = main(["--config", TINY_CFG, *tiny_overrides(shapes, str(tmp_path / "o")),
                 f"model.init={files['encoder export']}", "model.encoder.embed_dim=64"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("error: model.init="), err


def test_finetuned_checkpoint_gives_the_same_logits_in_timm(shapes, tmp_path):  # noqa: F811
    timm = pytest.importorskip("timm")
    from timm.models.swin_transformer import checkpoint_filter_fn
    files, _ = _files(tmp_path)
    out = str(tmp_path / "ft")
    run(load_finetune_config(TINY_CFG, tiny_overrides(shapes, out, "train.max_steps=2",
                                                      f"model.init={files['official GreenMIM']}")))
    sd = ckpt.load(os.path.join(out, ckpt.LAST))["model"]
    ours = build_classifier("swin_tiny", 3, img_size=64, **TINY_ENC).eval()
    ours.load_state_dict(sd)
    theirs = timm.create_model("swin_tiny_patch4_window7_224", pretrained=False, num_classes=3, img_size=64,
                               **TINY_ENC).eval()
    theirs.load_state_dict(checkpoint_filter_fn(sd, theirs))  # strict: every tensor has its place
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), theirs(x), atol=1e-5, rtol=1e-4)
