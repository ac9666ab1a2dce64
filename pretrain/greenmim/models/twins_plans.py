"""Stage contexts of Green Twins-SVT: where a stage's tokens are, and how each layout attends/convolves.

A Twins block asks its stage context for these:

    ctx.window                       LSA window size (the plans index a (2w-1)^2 bias table)
    ctx.local_attention(qkv, table, heads, memo)  qkv [..., 3C] -> [..., C], attention inside windows
                                     (memo: a dict made afresh per forward, see GroupPlan.attend)
    ctx.subsample(x, conv)           kernel = stride conv for GSA's keys/values -> [B, M, C]
    ctx.key_bias                     None or additive [B, 1, 1, M] mask over GSA's keys
    ctx.depthwise(x, conv)           the PEG's depthwise 3x3 conv (same shape as x)

`DenseStage` works on full grids x [B, H, W, C] (detection, SimMIM, and, given a token mask, the
masked reference that the sparse path must equal). `SparseStage` works on the visible tokens
x [B, N, C]: LSA through the same Group Window Attention plan as Swin (window_plans.GroupPlan,
no shift), convolutions through sparse_conv. Both are built once per stage and step.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import List, Optional, Tuple, Union

import torch
from torch import nn

from ..data.masking import UnitMask, plan_mask_of, upsample_mask

from .ragged_plan import RaggedPlan
from .sparse_conv import (SparseSites, StridedConvPlan, depthwise_conv3x3, recompute_in_backward,
                          strided_conv)
from .sparse_plans import SparsePlans
from .static_shapes import static_shapes_for, with_static_fallback
from .token_layout import stage_layouts
from .window_plans import GroupPlan, WindowPlan


@functools.lru_cache(maxsize=64)  # detection sees a handful of padded sizes: build each once
def _cached_window_plan(height: int, width: int, window: int, device: torch.device) -> WindowPlan:
    return WindowPlan.build(height, width, window, 0, None, device)


def _window_plan(height: int, width: int, window: int, device: torch.device) -> WindowPlan:
    # Under torch.compile the build is traced (on the device) and folded into the graph.
    if torch.compiler.is_compiling():
        return WindowPlan.build(height, width, window, 0, None, device)
    return _cached_window_plan(height, width, window, device)


@dataclass
class DenseStage:
    """Full grid [B, H, W, C]. With `token_mask` (bool [B, H, W], True = masked) it is the masked
    reference: masked tokens leave LSA's keys, masked key/value cells leave GSA's keys
    (`kv_mask` bool [B, M]) and the PEG sees masked tokens as zeros. Windows that overhang the
    grid are padded and the padding is masked out of the keys (the Twins authors' "mask" variant;
    timm pads with zeros that do take part, which differs only when a grid is not a multiple of
    the window: never at 224 or 448 px)."""
    window: int
    plan: WindowPlan
    key_bias: Optional[torch.Tensor] = None
    visible: Optional[torch.Tensor] = None   # [B, H, W, 1] 1 = visible, for the PEG

    @classmethod
    def build(cls, height: int, width: int, window: int, device,
              token_mask: Optional[torch.Tensor] = None,
              kv_mask: Optional[torch.Tensor] = None) -> "DenseStage":
        if token_mask is None:
            return cls(window, _window_plan(height, width, window, device))
        plan = WindowPlan.build(height, width, window, 0, token_mask, device)
        key_bias = torch.zeros(kv_mask.shape, device=device).masked_fill(kv_mask.to(device), float("-inf"))
        visible = (~token_mask).to(device).unsqueeze(-1)
        return cls(window, plan, key_bias[:, None, None, :], visible)

    def local_attention(self, qkv: torch.Tensor, table: Optional[torch.Tensor], num_heads: int,
                        memo: Optional[dict] = None) -> torch.Tensor:
        return self.plan.attention(qkv, table, num_heads)

    def subsample(self, x: torch.Tensor, conv: nn.Conv2d) -> torch.Tensor:
        """x [B, H, W, C] -> [B, (H/k)*(W/k), C_out], row-major."""
        return conv(x.permute(0, 3, 1, 2)).flatten(2).transpose(1, 2)

    def depthwise(self, x: torch.Tensor, conv: nn.Conv2d) -> torch.Tensor:
        if self.visible is not None:
            x = x * self.visible.to(x.dtype)
        return conv(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)


@dataclass
class SparseStage:
    """Visible tokens [B, N, C] of one stage, row-major per sample.

    group_plan: window_plans.GroupPlan (or RaggedPlan) of the stage's windows, shift 0.
    kv_plan: the GSA sub-sampling conv from this stage's sites to the key/value sites (None: sr = 1).
    sites: this stage's visible sites, for the PEG.
    backend: sparse_conv backend ("auto", "spconv", "torch").
    """
    window: int
    group_plan: object
    kv_plan: Optional[StridedConvPlan]
    sites: SparseSites
    backend: str = "auto"
    key_bias: Optional[torch.Tensor] = None  # every key/value cell of a visible token is visible

    def local_attention(self, qkv: torch.Tensor, table: Optional[torch.Tensor], num_heads: int,
                        memo: Optional[dict] = None) -> torch.Tensor:
        return self.group_plan.attention(qkv, table, num_heads, memo)

    def subsample(self, x: torch.Tensor, conv: nn.Conv2d) -> torch.Tensor:
        return recompute_in_backward(strided_conv, x, conv, self.kv_plan, self.backend)

    def depthwise(self, x: torch.Tensor, conv: nn.Conv2d) -> torch.Tensor:
        return recompute_in_backward(depthwise_conv3x3, x, conv, self.sites, self.backend)


@dataclass
class TwinsPlans(SparsePlans):
    """The sparse path's indices of one step. embed: the strided-conv plan of the patch embedding
    into stage i+1; stages: each stage's context (LSA groups, GSA sub-sampling, PEG sites)."""
    embed: List[StridedConvPlan]
    stages: List["SparseStage"]


@dataclass(frozen=True)
class TwinsPlanner:
    """Builds every index of Green Twins' sparse path from a unit mask, on the host, from plain
    values: picklable and weight-free, so DataLoader workers plan ahead of the step
    (`encoder.planner()`), as for Swin.

    Only LSA's window groups depend on where the visible units are; the strided convs and the PEG
    see N_i visible tokens per sample, fixed by the mask ratio. With static_shapes the groups are
    padded to the fixed (G, g) of static_shapes.py, so every tensor of a step has one shape.
    """
    window: int
    sr_ratios: Tuple[int, ...]
    tokens_per_unit: int
    conv_backend: str = "auto"
    attn_mode: str = "auto"
    static_shapes: bool = False

    def __call__(self, unit_mask: Union[UnitMask, torch.Tensor], device=None) -> TwinsPlans:
        """unit_mask: a UnitMask (checked when it was drawn) or bool [P, Hu, Wu] (checked here);
        P = 1: shared by the batch -> TwinsPlans, index tensors on `device` (default: CPU)."""
        unit_mask = plan_mask_of(unit_mask)
        dev = device if device is not None else torch.device("cpu")
        n = len(self.sr_ratios)
        layouts = stage_layouts(unit_mask, n, self.tokens_per_unit)
        shapes = (static_shapes_for((self.window,) * n, (0,) * n, self.tokens_per_unit, tuple(unit_mask.shape[1:]),
                                    int((~unit_mask[0]).sum()), unit_mask.shape[0]) if self.static_shapes else None)
        groups, fallback = with_static_fallback(lambda caps: self._group_plans(layouts, caps, dev), shapes)
        stages, embeds = [], []
        for i, lay in enumerate(layouts):
            sr = self.sr_ratios[i]
            kv_plan = None
            if sr > 1:
                kv_layout = stage_layouts(unit_mask, 1, (self.tokens_per_unit >> i) // sr)[0]
                kv_plan = StridedConvPlan.build(lay, kv_layout, sr, dev)
            stages.append(SparseStage(self.window, groups[i], kv_plan, SparseSites.from_layout(lay, dev),
                                      self.conv_backend))
            if i > 0:
                embeds.append(StridedConvPlan.build(layouts[i - 1], lay, 2, dev))
        return TwinsPlans(layouts[0].flat_index.to(dev, non_blocking=True), unit_mask.shape[0], fallback,
                          embeds, stages)

    def _group_plans(self, layouts, capacities, dev) -> list:
        """LSA's window plan of every stage; capacities: per stage ((G, g), _) or None (dynamic)."""
        if self.attn_mode == "ragged":
            return [RaggedPlan.build(lay.rows, lay.cols, lay.height, lay.width, self.window, 0, dev)
                    for lay in layouts]
        return [GroupPlan.build(lay.rows, lay.cols, lay.height, lay.width, self.window, 0, dev,
                                **({} if capacities is None else {"static": capacities[i][0]}))
                for i, lay in enumerate(layouts)]


def dense_kv_mask(unit_mask: torch.Tensor, cells_per_unit: int) -> torch.Tensor:
    """unit mask bool [B, Hu, Wu] -> [B, M] mask of the key/value cells (cells_per_unit^2 per unit)."""
    m = upsample_mask(unit_mask, cells_per_unit)
    return m.flatten(1)


__all__ = ["DenseStage", "SparseStage", "TwinsPlanner", "TwinsPlans", "dense_kv_mask"]
