"""Multiply-accumulates per image, counted by fvcore, for the benchmark tables.

fvcore traces the model once (torch.jit) and counts one multiply-accumulate as one "flop"; its
totals are therefore GMAC, the unit papers quote for Swin (Swin-B 224: 15.4 G). Added handler:
`aten::scaled_dot_product_attention`, which fvcore does not know (our attention takes it when no
bias gradient is needed, e.g. under no_grad): q k^T and attn v, B * heads * L * S * (d + d_v).
Element-wise ops (softmax, GELU, adds, index gathers) are left uncounted, as fvcore does for
every model, so dense and green are counted alike.

    gmac_per_image(model, (images, mask))   # images [1, 3, H, W]; mask [1, H/32, W/32] or absent
"""
from __future__ import annotations

import warnings
from typing import Any, List, Sequence

import torch
from fvcore.nn import FlopCountAnalysis
from fvcore.nn.jit_handles import get_shape


def sdpa_flop_jit(inputs: List[Any], outputs: List[Any]) -> int:
    """q [..., L, d], k [..., S, d], v [..., S, dv] -> L*S*d (scores) + L*S*dv (weighted sum) MACs."""
    q, k, v = (get_shape(x) for x in inputs[:3])
    batch = 1
    for s in q[:-2]:
        batch *= s
    length, d, keys, dv = q[-2], q[-1], k[-2], v[-1]
    return batch * length * keys * (d + dv)


EXTRA_HANDLES = {"aten::scaled_dot_product_attention": sdpa_flop_jit}


def gmac_per_image(model: torch.nn.Module, inputs: Sequence[Any]) -> float:
    """Forward GMAC per image of model(*inputs); inputs' first tensor holds the batch."""
    batch = inputs[0].shape[0]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer warnings about host-side planning are expected
        analysis = FlopCountAnalysis(model, tuple(inputs)).set_op_handle(**EXTRA_HANDLES)
        analysis.unsupported_ops_warnings(False)
        analysis.uncalled_modules_warnings(False)
        total = analysis.total()
    return total / batch / 1e9
