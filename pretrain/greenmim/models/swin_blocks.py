"""Swin building blocks that run unchanged on a dense grid or on a list of visible tokens.

A block never looks at the layout: it hands its fused qkv projection to the stage's attention plan
(`WindowPlan` for [B, H, W, C] grids, `GroupPlan` for [B, N, C] visible tokens). LayerNorm, MLP
and residuals are per token, so they run on real tokens only, never on padding.
Parameter names follow the original Swin release (attn.qkv, attn.proj,
attn.relative_position_bias_table, norm1, norm2, mlp.fc1, mlp.fc2, downsample.reduction/norm).
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn as nn
from timm.layers import DropPath, Mlp, trunc_normal_

from .token_layout import gather_tokens


class WindowAttention(nn.Module):
    """Multi-head self-attention with Swin's relative position bias table [(2w-1)^2, heads]."""

    def __init__(self, dim: int, num_heads: int, window_size: int, qkv_bias: bool = True):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"channel count {dim} is not divisible by {num_heads} heads")
        self.num_heads = num_heads
        self.window_size = window_size
        self.relative_position_bias_table = nn.Parameter(
            torch.zeros((2 * window_size - 1) ** 2, num_heads))
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        trunc_normal_(self.relative_position_bias_table, std=0.02)

    def forward(self, x: torch.Tensor, plan, bias: Optional[torch.Tensor] = None,
                memo: Optional[dict] = None) -> torch.Tensor:
        """x [B, H, W, C] or [B, N, C]; plan: WindowPlan or GroupPlan of the same layout; bias:
        this block's entry of plan.pair_bias (made once for all blocks of a stage), or None to
        derive it here from the block's own table; memo: the plan's dict for this forward."""
        if bias is None:
            return self.proj(plan.attention(self.qkv(x), self.relative_position_bias_table, self.num_heads, memo))
        return self.proj(plan.attend(self.qkv(x), bias, self.num_heads, memo))


class SwinBlock(nn.Module):
    def __init__(self, dim: int, num_heads: int, window_size: int, shifted: bool,
                 mlp_ratio: float = 4.0, qkv_bias: bool = True, drop_path: float = 0.0):
        super().__init__()
        self.shifted = shifted  # which of the stage's two plans this block uses
        self.norm1 = nn.LayerNorm(dim)
        self.attn = WindowAttention(dim, num_heads, window_size, qkv_bias)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), act_layer=nn.GELU)

    def forward(self, x: torch.Tensor, plan, bias: Optional[torch.Tensor] = None,
                memo: Optional[dict] = None) -> torch.Tensor:
        """x [B, H, W, C] (dense), or the visible tokens as [B, N, C] or [B*N, C] (sparse)."""
        x = x + self._drop_path(self.attn(self.norm1(x), plan, bias, memo), plan)
        return x + self._drop_path(self.mlp(self.norm2(x)), plan)

    def _drop_path(self, y: torch.Tensor, plan) -> torch.Tensor:
        """Stochastic depth per sample, also for tokens flattened to [B*N, C]."""
        if isinstance(self.drop_path, nn.Identity):
            return y
        if y.dim() == 2:
            return self.drop_path(y.view(-1, plan.num_tokens, y.shape[-1])).view_as(y)
        return self.drop_path(y)


class PatchMerging(nn.Module):
    """2x2 neighbours -> LayerNorm(4C) -> Linear(4C, 2C), channels in Swin's order."""

    def __init__(self, dim: int):
        super().__init__()
        self.norm = nn.LayerNorm(4 * dim)
        self.reduction = nn.Linear(4 * dim, 2 * dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x [B, H, W, C] -> [B, H/2, W/2, 2C]."""
        b, h, w, c = x.shape
        # (row, col) offsets (0,0), (1,0), (0,1), (1,1): column-major over the 2x2 block.
        x = x.view(b, h // 2, 2, w // 2, 2, c).permute(0, 1, 3, 4, 2, 5).reshape(b, h // 2, w // 2, 4 * c)
        return self.reduction(self.norm(x))

    def forward_sparse(self, x: torch.Tensor, index: torch.Tensor, plan_samples: int,
                       batch: Optional[int] = None) -> torch.Tensor:
        """x [B, N, C] visible tokens (or [B*N, C] with batch = B); index from
        token_layout.merge_index -> [B, N/4, 2C] (or [B*N/4, 2C])."""
        flat = x.dim() == 2
        c = x.shape[-1]
        x = gather_tokens(x.view(batch, -1, c) if flat else x, index, plan_samples)
        x = x.view(-1, 4 * c) if flat else x.view(x.shape[0], -1, 4 * c)
        return self.reduction(self.norm(x))
