"""greenmim.weights: timm / Hugging Face hub layouts in (state dicts and .safetensors), timm's
layout out (timm's own pretrained loading), bad files as one clear line.

Random weights from timm.create_model(..., pretrained=False) stand for the hub's files: their keys
and shapes are what timm serves. Swin-B and Twins-S run at 64 px with window 2 (real widths and
depths, tiny maps); Swin-T runs as timm's swin_tiny_patch4_window7_224 itself.
"""
from __future__ import annotations

import importlib.util
import os

import pytest
import timm
import torch

import greenmim
from greenmim.config import UserError
from greenmim.weights import (
    ArchitectureMismatchError,
    CheckpointError,
    LayoutError,
    load_encoder_weights,
    read_weights,
    save_safetensors,
)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# our arch -> (timm model, image size, timm kwargs, our kwargs)
CASES = {
    "swin_tiny": ("swin_tiny_patch4_window7_224", 224, {}, {}),
    "swin_base": ("swin_base_patch4_window7_224", 64, dict(window_size=2), dict(window_size=2)),
    "twins_svt_small": ("twins_svt_small", 64, dict(wss=[2, 2, 2, 2]), dict(window_size=2)),
}
TINY_SWIN = dict(embed_dim=16, depths=(1, 1, 1, 1), num_heads=(1, 1, 1, 1))


def _load_tool(name):
    spec = importlib.util.spec_from_file_location(f"_greenmim_tool_{name}", os.path.join(REPO, "tools", f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _timm_features(model, x):
    """timm's stage outputs [B, C_i, H_i, W_i] (after blocks, before the next patch merging)."""
    with torch.no_grad():
        return model.forward_intermediates(x, intermediates_only=True)


@pytest.fixture(scope="module")
def timm_case(request):
    """arch -> (timm model in float64, its state dict, an input, timm's features); built once."""
    cache = {}

    def get(arch):
        if arch not in cache:
            name, img, timm_kw, _ = CASES[arch]
            torch.manual_seed(0)
            model = timm.create_model(name, pretrained=False, img_size=img, **timm_kw).double().eval()
            x = torch.randn(1, 3, img, img, dtype=torch.float64)
            cache[arch] = model, model.state_dict(), x, _timm_features(model, x)
        return cache[arch]

    return get


def _ours(arch):
    _, img, _, our_kw = CASES[arch]
    return greenmim.build_encoder(arch, img_size=img, drop_path_rate=0.0, **our_kw).double().eval()


def _assert_features_equal(encoder, x, expected):
    with torch.no_grad():
        got = encoder(x)
    assert len(got) == len(expected) == 4
    for a, b in zip(got, expected):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-10)


@pytest.mark.parametrize("arch", sorted(CASES))
def test_timm_layout_state_dict_and_safetensors_load_strictly_with_timms_features(arch, timm_case, tmp_path):
    _, sd, x, expected = timm_case(arch)
    encoder = _ours(arch)
    report = load_encoder_weights(encoder, sd, strict=True)
    assert "(timm layout)" in report.summary() and "missing encoder tensors: 0" in report.summary()
    assert report.missing == [] and report.unexpected == [] and report.head_dropped
    assert report.loaded == len(encoder.state_dict())
    _assert_features_equal(encoder, x, expected)

    # the same weights as the hub serves them: model.safetensors, no pickle
    path = tmp_path / "model.safetensors"
    save_safetensors(sd, str(path))
    assert set(read_weights(str(path))) == set(sd)
    fresh = _ours(arch)
    report = load_encoder_weights(fresh, str(path))
    assert report.summary().startswith(f"loaded {len(fresh.state_dict())} encoder tensors from {path} (timm layout)")
    _assert_features_equal(fresh, x, expected)


@pytest.mark.parametrize("arch", sorted(CASES))
def test_format_timm_output_loads_with_timms_pretrained_loading(arch, timm_case, tmp_path, capsys):
    """ours (an encoder export, no head) -> --format timm -> timm.create_model(pretrained=True)."""
    name, img, timm_kw, _ = CASES[arch]
    _, sd, x, expected = timm_case(arch)
    encoder = _ours(arch)
    load_encoder_weights(encoder, sd)
    export = tmp_path / "encoder.pth"
    torch.save({"model": encoder.state_dict()}, export)
    convert = _load_tool("convert_checkpoint")
    for suffix in (".safetensors", ".pth"):
        out = str(tmp_path / f"timm{suffix}")
        assert convert.main([str(export), out, "--format", "timm"]) == 0
        printed = capsys.readouterr().out
        assert "missing encoder tensors: 0" in printed and "a fresh 1000-class head" in printed
        kw = dict(img_size=img, **timm_kw) if timm_kw else {}  # Swin-T: timm's model exactly
        model = timm.create_model(name, pretrained=True, pretrained_cfg_overlay=dict(file=out), **kw)
        features = _timm_features(model.double().eval(), x)
        for a, b in zip(features, expected):
            torch.testing.assert_close(a, b, rtol=0, atol=1e-10)
        if not timm_kw:
            assert f"timm.create_model('{name}', pretrained=True" in printed


def test_convert_writes_our_names_from_a_timm_file(timm_case, tmp_path, capsys):
    _, sd, x, expected = timm_case("swin_base")
    src, out = tmp_path / "model.safetensors", tmp_path / "encoder.safetensors"
    save_safetensors(sd, str(src))
    assert _load_tool("convert_checkpoint").main([str(src), str(out)]) == 0
    assert "(timm layout)" in capsys.readouterr().out
    encoder = _ours("swin_base")
    encoder.load_state_dict(read_weights(str(out)), strict=True)  # plain torch, no greenmim mapping
    _assert_features_equal(encoder, x, expected)


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
    convert = _load_tool("convert_checkpoint")
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
