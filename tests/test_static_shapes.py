"""Static shapes: plans padded to fixed (groups, capacity) tables give one shape signature for
every mask, equal the dynamic plans' outputs and gradients (float64), fall back to the bound table
when a mask does not fit, and let torch.compile capture one graph for all masks."""
import dataclasses
import math

import pytest
import torch

import greenmim
from greenmim.data.masking import MaskGenerator
from greenmim.models import static_shapes
from greenmim.models.grouping import pack_min_groups
from greenmim.models.static_shapes import bound_capacity, static_shapes_for
from greenmim.models.token_layout import stage_layouts
from greenmim.models.window_plans import window_occupancy

SMALL = dict(img_size=128, embed_dim=16, depths=(1, 2, 1, 1), num_heads=(1, 2, 2, 4), window_size=4)


def small_encoder(static: bool, arch: str = "swin_tiny") -> torch.nn.Module:
    torch.manual_seed(0)
    size = SMALL if arch.startswith("swin") else {k: v for k, v in SMALL.items() if k != "window_size"}
    return greenmim.build_encoder(arch, static_shapes=static, **size).double()


def signature(plans: dict) -> tuple:
    """Every tensor shape of a plan (what CUDA graphs and compiled graphs key on)."""
    shapes = []

    def walk(obj):
        if isinstance(obj, torch.Tensor):
            shapes.append(tuple(obj.shape))
        elif isinstance(obj, (list, tuple)):
            for o in obj:
                walk(o)
        elif dataclasses.is_dataclass(obj):
            for f in dataclasses.fields(obj):
                walk(getattr(obj, f.name))
    walk(plans)
    return tuple(shapes)


def fwd_bwd(enc, x, mask, plans):
    enc.zero_grad(set_to_none=True)
    outs = enc(x, mask, plans=plans)
    sum((o * torch.linspace(-1, 1, o.shape[-1], dtype=o.dtype)).sum() for o in outs).backward()
    return [o.detach() for o in outs], {n: p.grad.clone() for n, p in enc.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("arch", ["swin_tiny", "twins_svt_small"])
@pytest.mark.parametrize("shared", [True, False])
def test_one_signature_for_every_mask_and_equal_to_dynamic(shared, arch):
    dynamic, static = small_encoder(False, arch), small_encoder(True, arch)
    gen = MaskGenerator(128, 0.75, shared=shared, seed=5)
    x = torch.randn(3, 3, 128, 128, dtype=torch.float64)
    signatures, dynamic_signatures = set(), set()
    for _ in range(6):
        mask = gen(3)
        plan_mask = mask[:1] if shared else mask
        plans_s, plans_d = static.planner()(plan_mask), dynamic.planner()(plan_mask)
        if not plans_s.static_fallback:
            signatures.add(signature(plans_s))
        dynamic_signatures.add(signature(plans_d))
        out_d, grads_d = fwd_bwd(dynamic, x, mask, plans_d)
        out_s, grads_s = fwd_bwd(static, x, mask, plans_s)
        for a, b in zip(out_d, out_s):
            torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
        assert grads_d.keys() == grads_s.keys()
        for name in grads_d:
            torch.testing.assert_close(grads_d[name], grads_s[name], rtol=1e-10, atol=1e-12, msg=name)
    assert len(signatures) == 1
    assert len(dynamic_signatures) > 1  # what static shapes remove


def test_overflow_takes_the_bound_table_and_stays_exact(monkeypatch):
    enc = small_encoder(True)
    mask = MaskGenerator(128, 0.75, shared=True, seed=2)(2)
    planner = enc.planner()
    real = static_shapes_for(planner.windows, planner.shifts, planner.tokens_per_unit, (4, 4), 4, 1)
    # a tight table with one group too few in stage 1: every mask overflows there
    (reg, shf), *rest = real.tight
    squeezed = dataclasses.replace(real, tight=(((reg[0] - 1, reg[1]), shf), *rest))
    monkeypatch.setattr("greenmim.models.swin.static_shapes_for", lambda *a: squeezed)
    plans = planner(mask[:1])
    assert plans.static_fallback
    assert plans.attention[0][0].num_groups == real.bound[0][0][0]
    x = torch.randn(2, 3, 128, 128, dtype=torch.float64)
    out_bound, _ = fwd_bwd(enc, x, mask, plans)
    out_dynamic, _ = fwd_bwd(small_encoder(False), x, mask, None)
    for a, b in zip(out_bound, out_dynamic):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("plan_samples,ratio", [(1, 0.75), (1, 0.5), (6, 0.75), (6, 0.9)])
def test_bound_holds_every_mask(plan_samples, ratio):
    """The any-fit bound: no packing of the planner ever needs more groups than the bound table."""
    enc = greenmim.build_encoder("swin_tiny", img_size=224)
    planner = enc.planner()
    gen = MaskGenerator(224, ratio, shared=False, seed=11)
    for _ in range(40):
        layouts = stage_layouts(gen(plan_samples), 4, planner.tokens_per_unit)
        for window, shift, lay in zip(planner.windows, planner.shifts, layouts):
            for s in {0, shift}:
                sizes = window_occupancy(lay.rows, lay.cols, lay.height, lay.width, window, s)[2].tolist()
                groups, capacity = bound_capacity(window, lay.rows.numel(), lay.rows.shape[1], len(sizes))
                assert max(sizes) <= capacity
                assert len(pack_min_groups([v for v in sizes if v], capacity)) <= groups


def test_fresh_masks_rarely_overflow_and_padding_is_reported():
    planner = greenmim.build_encoder("swin_base", img_size=224, static_shapes=True).planner()
    gen = MaskGenerator(224, 0.75, shared=True, seed=99)
    overflow = sum(planner(gen(1)).static_fallback for _ in range(60))
    assert overflow <= 3
    shapes = static_shapes_for(planner.windows, planner.shifts, planner.tokens_per_unit, (7, 7), 12, 1)
    padding = shapes.padding((768, 192, 48, 12))
    assert all(0 <= p < 0.5 for stage in padding for p in stage)
    assert math.isclose(padding[3][0], 0.0)  # one window holds the last stage


def test_static_shapes_refuse_ragged_attention():
    with pytest.raises(ValueError, match="static_shapes"):
        greenmim.build_encoder("swin_tiny", static_shapes=True, attn_mode="ragged")


def test_calibration_is_deterministic():
    static_shapes.static_shapes_for.cache_clear()
    a = static_shapes_for((7, 7, 7, 7), (3, 3, 3, 0), 8, (7, 7), 12, 4)
    static_shapes.static_shapes_for.cache_clear()
    assert static_shapes_for((7, 7, 7, 7), (3, 3, 3, 0), 8, (7, 7), 12, 4) == a
