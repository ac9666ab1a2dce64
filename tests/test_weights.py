"""greenmim.weights: timm / Hugging Face hub layouts in (state dicts and .safetensors), timm's
layout out (timm's own pretrained loading), bad files as one clear line.

Random weights from timm.create_model(..., pretrained=False) stand for the hub's files: their keys
and shapes are what timm serves. Features are compared in float64 at 64 px with window 2 (real
widths and depths, tiny maps); Swin-T also goes through timm's published 224 px / window 7 model.
"""
from __future__ import annotations

import os

import pytest
import timm
import torch

import greenmim
from conftest import load_tool
from greenmim.config import UserError
from greenmim.weights import (
    ArchitectureMismatchError,
    CheckpointError,
    LayoutError,
    load_encoder_weights,
    read_weights,
    save_safetensors,
)

# our arch -> (timm model, timm kwargs, our kwargs), all at 64 px with window 2
CASES = {
    "swin_tiny": ("swin_tiny_patch4_window7_224", dict(window_size=2), dict(window_size=2)),
    "swin_base": ("swin_base_patch4_window7_224", dict(window_size=2), dict(window_size=2)),
    "twins_svt_small": ("twins_svt_small", dict(wss=[2, 2, 2, 2]), dict(window_size=2)),
}
IMG = 64
TINY_SWIN = dict(embed_dim=16, depths=(1, 1, 1, 1), num_heads=(1, 1, 1, 1))


def _timm_features(model, x):
    """timm's stage outputs [B, C_i, H_i, W_i] (after blocks, before the next patch merging)."""
    with torch.no_grad():
        return model.forward_intermediates(x, intermediates_only=True)


@pytest.fixture(scope="module")
def case():
    """arch -> dict(sd: timm's state dict (float32, as files hold it; float32 values are exact in
    float64), x: an input, expected: timm's float64 features, ours: our float64 encoder of the
    arch); each built once (building the models is the slow part)."""
    cache = {}

    def get(arch):
        if arch not in cache:
            name, timm_kw, our_kw = CASES[arch]
            torch.manual_seed(0)
            model = timm.create_model(name, pretrained=False, img_size=IMG, **timm_kw).eval()
            sd = {k: v.clone() for k, v in model.state_dict().items()}
            x = torch.randn(1, 3, IMG, IMG, dtype=torch.float64)
            ours = greenmim.build_encoder(arch, img_size=IMG, drop_path_rate=0.0, **our_kw).double().eval()
            cache[arch] = dict(sd=sd, x=x, expected=_timm_features(model.double(), x), ours=ours)
        return cache[arch]

    return get


def _assert_features_equal(got, expected):
    assert len(got) == len(expected) == 4
    for a, b in zip(got, expected):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-10)


def _features(encoder, x):
    with torch.no_grad():
        return encoder(x)


def _zero(encoder):
    with torch.no_grad():
        for p in encoder.parameters():
            p.zero_()


@pytest.mark.parametrize("arch", sorted(CASES))
def test_timm_layout_state_dict_and_safetensors_load_strictly_with_timms_features(arch, case, tmp_path):
    c = case(arch)
    encoder = c["ours"]
    report = load_encoder_weights(encoder, c["sd"], strict=True)
    assert "(timm layout)" in report.summary() and "missing encoder tensors: 0" in report.summary()
    assert report.missing == [] and report.unexpected == [] and report.head_dropped
    assert report.loaded == len(encoder.state_dict())
    _assert_features_equal(_features(encoder, c["x"]), c["expected"])

    # the same weights as the hub serves them: model.safetensors, no pickle
    path = tmp_path / "model.safetensors"
    save_safetensors(c["sd"], str(path))
    assert set(read_weights(str(path))) == set(c["sd"])
    _zero(encoder)
    report = load_encoder_weights(encoder, str(path))
    assert report.summary().startswith(f"loaded {len(encoder.state_dict())} encoder tensors from {path} (timm layout)")
    _assert_features_equal(_features(encoder, c["x"]), c["expected"])


@pytest.mark.parametrize("arch", ["swin_base", "twins_svt_small"])  # Swin-T: the next test
def test_format_timm_output_loads_with_timms_pretrained_loading(arch, case, tmp_path, capsys):
    """ours (an encoder export, no head) -> --format timm -> timm.create_model(pretrained=True)."""
    name, timm_kw, _ = CASES[arch]
    c = case(arch)
    load_encoder_weights(c["ours"], c["sd"])
    export = tmp_path / "encoder.pth"
    torch.save({"model": {k: v.float() for k, v in c["ours"].state_dict().items()}}, export)
    out = str(tmp_path / ("timm.pth" if arch == "twins_svt_small" else "timm.safetensors"))
    assert load_tool("convert_checkpoint").main([str(export), out, "--format", "timm"]) == 0
    printed = capsys.readouterr().out
    assert "missing encoder tensors: 0" in printed and "a fresh 1000-class head" in printed
    model = timm.create_model(name, pretrained=True, pretrained_cfg_overlay=dict(file=out), img_size=IMG, **timm_kw)
    _assert_features_equal(_timm_features(model.double().eval(), c["x"]), c["expected"])


def test_format_timm_swin_t_loads_into_timms_model_as_published(tmp_path, capsys):
    """The hub's Swin-T file -> ours -> --format timm -> timm's swin_tiny_patch4_window7_224 as
    published (224 px, window 7): every tensor, the head included, arrives unchanged."""
    name = "swin_tiny_patch4_window7_224"
    source = timm.create_model(name, pretrained=False).state_dict()
    hub, ours, out = (str(tmp_path / n) for n in ("model.safetensors", "encoder.safetensors", "timm.pth"))
    save_safetensors(source, hub)
    convert = load_tool("convert_checkpoint")
    assert convert.main([hub, ours]) == 0
    assert convert.main([hub, out, "--format", "timm"]) == 0
    printed = capsys.readouterr().out
    assert "the file's 1000-class head" in printed
    assert f"timm.create_model('{name}', pretrained=True, pretrained_cfg_overlay=dict(file='{out}'))" in printed
    loaded = timm.create_model(name, pretrained=True, pretrained_cfg_overlay=dict(file=out)).state_dict()
    assert set(loaded) == set(source)
    assert all(torch.equal(loaded[k], source[k]) for k in source)
    assert "layers.0.downsample.reduction.weight" in read_weights(ours)  # our names in between


def test_convert_writes_our_names_from_a_timm_file(case, tmp_path, capsys):
    c = case("twins_svt_small")
    src, out = tmp_path / "model.safetensors", tmp_path / "encoder.safetensors"
    save_safetensors(c["sd"], str(src))
    assert load_tool("convert_checkpoint").main([str(src), str(out)]) == 0
    assert "(timm layout)" in capsys.readouterr().out
    _zero(c["ours"])
    c["ours"].load_state_dict(read_weights(str(out)), strict=True)  # plain torch, no greenmim mapping
    _assert_features_equal(_features(c["ours"], c["x"]), c["expected"])


# ------------------------------------------------------------------------- bad files: one line

def _tiny_timm_sd(**kw):
    torch.manual_seed(0)
    return timm.create_model("swin_tiny_patch4_window7_224", pretrained=False, img_size=64, window_size=2,
                             **{**TINY_SWIN, **kw}).state_dict()


def _tiny_encoder():
    return greenmim.build_encoder("swin_tiny", img_size=64, window_size=2, **TINY_SWIN)


def _one_line_error(exc_type, encoder, path) -> str:
    with pytest.raises(exc_type) as err:
        load_encoder_weights(encoder, str(path))
    msg = str(err.value)
    assert isinstance(err.value, UserError) and "\n" not in msg and str(path) in msg
    return msg


def test_bad_safetensors_files_are_one_clear_line_each(tmp_path):
    encoder = _tiny_encoder()
    sd = _tiny_timm_sd()
    load_encoder_weights(encoder, sd)  # the good file loads

    wrong = dict(sd)
    wrong["layers.0.blocks.0.mlp.fc1.weight"] = torch.zeros(32, 16)  # 4x hidden in the model: 64
    save_safetensors(wrong, str(tmp_path / "wrong_shapes.safetensors"))
    msg = _one_line_error(ArchitectureMismatchError, encoder, tmp_path / "wrong_shapes.safetensors")
    assert "differ in shape" in msg and "layers.0.blocks.0.mlp.fc1.weight: checkpoint [32, 16] vs model [64, 16]" in msg

    save_safetensors(sd, str(tmp_path / "whole.safetensors"))
    data = (tmp_path / "whole.safetensors").read_bytes()
    (tmp_path / "truncated.safetensors").write_bytes(data[: len(data) // 2])
    msg = _one_line_error(CheckpointError, encoder, tmp_path / "truncated.safetensors")
    assert "cannot read" in msg and "truncated" in msg

    save_safetensors(_tiny_timm_sd(embed_dim=32), str(tmp_path / "other_arch.safetensors"))
    msg = _one_line_error(ArchitectureMismatchError, encoder, tmp_path / "other_arch.safetensors")
    assert "architecture mismatch" in msg and "embed_dim=32" in msg and "embed_dim=16" in msg

    (tmp_path / "other.safetensors").write_bytes(b"not a safetensors file at all")
    _one_line_error(CheckpointError, encoder, tmp_path / "other.safetensors")


def test_a_renamed_layout_is_named_as_such_not_as_another_architecture(tmp_path):
    encoder = _tiny_encoder()
    renamed = {k.replace(".attn.", ".attention."): v for k, v in _tiny_timm_sd().items()}
    save_safetensors(renamed, str(tmp_path / "renamed.safetensors"))
    msg = _one_line_error(LayoutError, encoder, tmp_path / "renamed.safetensors")
    assert "under other names" in msg and ".attention." in msg and "architecture mismatch" not in msg

    transformers = {"swin.embeddings.patch_embeddings.projection.weight": torch.zeros(16, 3, 4, 4)}
    save_safetensors(transformers, str(tmp_path / "hf.safetensors"))
    msg = _one_line_error(LayoutError, encoder, tmp_path / "hf.safetensors")
    assert "transformers" in msg and "timm" in msg


def test_convert_tool_reports_bad_files_in_one_error_line(tmp_path, capsys):
    save_safetensors(_tiny_timm_sd(embed_dim=32), str(tmp_path / "other_arch.safetensors"))
    convert = load_tool("convert_checkpoint")
    code = convert.main([str(tmp_path / "other_arch.safetensors"), str(tmp_path / "out.pth"),
                         "--arch", "swin_tiny", "--img-size", "64", "--window-size", "2"])
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert code == 2 and len(err) == 1 and err[0].startswith("error: architecture mismatch")
    assert not os.path.exists(tmp_path / "out.pth")


def test_pretraining_export_writes_encoder_safetensors_when_asked(tmp_path):
    from greenmim.config import DEFAULTS
    from greenmim.engine.checkpoint import export_encoder

    assert DEFAULTS["export_safetensors"] is False
    enc = _tiny_encoder()
    state = {"encoder." + k: v for k, v in enc.state_dict().items()}
    state["decoder.weight"] = torch.zeros(2)
    config = {"model": {"arch": "swin_tiny", "encoder": dict(TINY_SWIN)}, "data": {"img_size": 64},
              "export_safetensors": True}
    export_encoder(state, str(tmp_path / "encoder.pth"), config)
    from_pth = read_weights(str(tmp_path / "encoder.pth"))
    from_st = read_weights(str(tmp_path / "encoder.safetensors"))
    assert set(from_st) == set(from_pth) == set(enc.state_dict())
    assert all(torch.equal(from_st[k], from_pth[k]) for k in from_pth)
    from safetensors import safe_open

    with safe_open(str(tmp_path / "encoder.safetensors"), "pt") as f:
        assert f.metadata()["arch"] == "swin_tiny"
    report = load_encoder_weights(_tiny_encoder(), str(tmp_path / "encoder.safetensors"))
    assert report.missing == [] and not report.head_dropped


def test_visualize_reconstruction_says_a_safetensors_file_is_weights_only(tmp_path, capsys):
    path = str(tmp_path / "encoder.safetensors")
    save_safetensors(_tiny_encoder().state_dict(), path)
    code = load_tool("visualize_reconstruction").main([path, "--out", str(tmp_path / "rec.png")])
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("error")]
    assert code == 2 and len(err) == 1 and "weights only" in err[0] and "checkpoint-last.pth" in err[0]
