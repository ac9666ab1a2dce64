"""The mask is checked once and carries its shared flag (UnitMask); both encoders share one base
(GreenEncoder) for dispatch, the reference path, freezing and gradient checkpointing."""
from types import SimpleNamespace

import pytest
import torch

import greenmim
from greenmim.data import masking
from greenmim.data.masking import MaskGenerator, UnitMask, as_unit_mask
from greenmim.models.encoder_base import GreenEncoder
from greenmim.models.mim import GreenMIM
from greenmim.models.simmim import SimMIM

TINY_SWIN = dict(img_size=64, embed_dim=16, depths=(1, 2, 1, 1), num_heads=(1, 2, 2, 4), window_size=2)
TINY_TWINS = dict(img_size=64, embed_dim=16, depths=(1, 2, 1, 1), num_heads=(1, 2, 2, 4), conv_backend="torch")


def _encoders():
    torch.manual_seed(0)
    return [greenmim.build_encoder("swin_tiny", **TINY_SWIN), greenmim.build_encoder("twins_svt_small", **TINY_TWINS)]


def test_as_unit_mask_finds_sharing_and_takes_a_unit_mask_as_it_is():
    shared = MaskGenerator(64, 0.5, shared=True, seed=1)(3)
    per_sample = MaskGenerator(64, 0.5, shared=False, seed=1)(3)
    assert as_unit_mask(shared, 3, (2, 2)).shared is True
    assert as_unit_mask(per_sample, 3, (2, 2)).shared is False
    drawn = MaskGenerator(64, 0.5, shared=True, seed=1).draw(3)
    assert as_unit_mask(drawn, 3, (2, 2)) is drawn and drawn.plan_mask.shape == (1, 2, 2)
    with_plans = as_unit_mask(per_sample, 3, (2, 2), plans=SimpleNamespace(plan_samples=3))
    assert with_plans.shared is False and with_plans.mask is per_sample
    with pytest.raises(ValueError, match="same number of visible units"):
        as_unit_mask(torch.tensor([[[True, False], [True, True]], [[False, False], [True, True]]]), 2, (2, 2))
    with pytest.raises(ValueError, match=r"shape \[2, 2, 2\]"):
        as_unit_mask(UnitMask(shared, True), 2, (2, 2))


@pytest.mark.parametrize("which", [0, 1], ids=["swin", "twins"])
def test_a_unit_mask_gives_what_the_tensor_gives_and_a_shared_one_is_planned_once(which, monkeypatch):
    enc = _encoders()[which].double().eval()
    x = torch.randn(3, 3, 64, 64, dtype=torch.float64)
    mask = MaskGenerator(64, 0.5, shared=True, seed=2)(3)
    planned = []
    plan_sparse = enc.plan_sparse
    samples = lambda m: (m.plan_mask if isinstance(m, UnitMask) else m).shape[0]  # noqa: E731
    monkeypatch.setattr(enc, "plan_sparse", lambda m, device=None: planned.append(samples(m)) or plan_sparse(m, device))
    with torch.no_grad():
        want = enc(x, mask)                       # a tensor: sharing found by comparing samples
        got = enc(x, UnitMask(mask, True))        # a UnitMask: sharing read off the flag
        each = enc(x, UnitMask(mask, False))      # the same masks, planned per sample
    assert planned == [1, 1, 3]
    for a, b, c in zip(want, got, each):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
        torch.testing.assert_close(a, c, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("kind", ["green", "simmim"])
def test_models_check_a_tensor_mask_once_and_a_unit_mask_never(kind, monkeypatch):
    torch.manual_seed(0)
    enc = greenmim.build_encoder("swin_tiny", **TINY_SWIN)
    model = (GreenMIM(enc, img_size=64, decoder_dim=16, decoder_num_heads=2) if kind == "green" else SimMIM(enc))
    calls = []
    check = masking.check_mask
    monkeypatch.setattr(masking, "check_mask", lambda *a: calls.append(1) or check(*a))
    x = torch.randn(2, 3, 64, 64)
    gen = MaskGenerator(64, 0.5, shared=False, seed=3)
    model(x, gen(2))
    assert len(calls) == 1
    out = model(x, gen.draw(2))
    assert len(calls) == 1 and out["mask"].dtype == torch.bool and out["mask"].shape == (2, 2, 2)


def test_both_encoders_share_one_base_for_freezing_and_checkpointing():
    x = torch.randn(2, 3, 64, 64)
    mask = MaskGenerator(64, 0.5, shared=False, seed=4)(2)
    for enc in _encoders():
        assert isinstance(enc, GreenEncoder)
        frozen = enc.frozen_modules(2)
        assert frozen[0] is enc.stem_module()
        assert frozen[1:] == enc.stage_modules(0) + enc.stage_modules(1)
        assert enc.frozen_modules(-1) == []
        assert {enc.layer_id(n) for n, _ in enc.named_parameters()} <= set(range(enc.num_layers))
        assert enc.no_weight_decay() and all(any(k in n for k in enc.no_weight_decay_keywords())
                                             for n in enc.no_weight_decay())
        enc.train()
        ref = enc(x, mask)[-1].sum()
        ref.backward()
        used = [p for p in enc.parameters() if p.grad is not None]  # not the final norm
        grads = [p.grad.clone() for p in used]
        enc.zero_grad()
        enc.set_grad_checkpointing(True)
        flags = [m.grad_checkpointing for m in enc.modules() if hasattr(m, "grad_checkpointing")]
        assert flags and all(flags)
        again = enc(x, mask)[-1].sum()
        again.backward()
        torch.testing.assert_close(again, ref)
        for g, p in zip(grads, used):
            torch.testing.assert_close(p.grad, g, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("which", [0, 1], ids=["swin", "twins"])
def test_planners_check_a_tensor_mask_and_never_a_unit_mask(which, monkeypatch):
    """The loader's workers hand their planner the UnitMask they drew (valid by construction):
    planning does not check it again; a plain tensor from a user is checked once."""
    planner = _encoders()[which].planner()
    mask = MaskGenerator(64, 0.5, shared=False, seed=2)(3)
    checks = []
    check = masking.check_mask
    monkeypatch.setattr(masking, "check_mask", lambda *a: checks.append(1) or check(*a))
    from_unit = planner(UnitMask(mask, False))
    assert checks == []
    from_tensor = planner(mask)
    assert checks == [1]
    assert torch.equal(from_unit.embed_index, from_tensor.embed_index)
