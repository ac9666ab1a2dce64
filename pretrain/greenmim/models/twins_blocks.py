"""Twins-SVT building blocks that run unchanged on a dense grid or on a list of visible tokens.

A block never looks at the layout: it hands its projections to the stage context
(twins_plans.DenseStage for [B, H, W, C] grids, twins_plans.SparseStage for [B, N, C] visible
tokens), which knows where the tokens are. Parameter names are those of the official Twins
release and of timm.models.twins (blocks.i.j.attn.qkv / .q / .kv / .sr / .norm / .proj, norm1,
norm2, mlp.fc1, mlp.fc2, patch_embeds.i.proj / .norm, pos_block.i.proj.0), so their checkpoints load.
"""
from __future__ import annotations

from functools import partial
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn
from timm.layers import DropPath, Mlp

# Twins uses LayerNorm(eps=1e-6) in its blocks and final norm, PyTorch's default (1e-5) in the patch
# embeddings and GSA's sub-sampling norm; keeping both is what makes released weights reproduce.
BlockNorm = partial(nn.LayerNorm, eps=1e-6)


class TwinsPatchEmbed(nn.Module):
    """Conv (kernel = stride = patch) + LayerNorm. Dense: [B, C_in, H, W] -> [B, H/p, W/p, C]."""

    def __init__(self, in_chans: int, embed_dim: int, patch_size: int):
        super().__init__()
        self.patch_size = patch_size
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)
        self.norm = nn.LayerNorm(embed_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.proj(x).permute(0, 2, 3, 1))


class PosConv(nn.Module):
    """Position encoding generator (PEG): x + depthwise 3x3 conv of x, zero-padded.

    The residual is part of PEG (Chu et al., CPVT); the sparse reference implementation dropped it.
    """

    def __init__(self, dim: int):
        super().__init__()
        self.proj = nn.Sequential(nn.Conv2d(dim, dim, 3, 1, 1, bias=True, groups=dim))

    def forward(self, x: torch.Tensor, ctx) -> torch.Tensor:
        """x [B, H, W, C] (dense) or [B, N, C] (visible tokens), same shape out."""
        return x + ctx.depthwise(x, self.proj[0])


class LocallyGroupedAttn(nn.Module):
    """LSA: self-attention inside non-overlapping windows (no shift, no position bias)."""

    def __init__(self, dim: int, num_heads: int, window_size: int):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"channel count {dim} is not divisible by {num_heads} heads")
        self.num_heads, self.window_size = num_heads, window_size
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, ctx, memo: Optional[dict] = None) -> torch.Tensor:
        """x [B, H, W, C] or [B, N, C] -> same shape. memo: see twins_plans."""
        return self.proj(ctx.local_attention(self.qkv(x), None, self.num_heads, memo))  # no position bias


class GlobalSubSampleAttn(nn.Module):
    """GSA: every token attends to keys/values of a sub-sampled map (conv, kernel = stride = sr,
    then LayerNorm); sr = 1 uses the tokens themselves."""

    def __init__(self, dim: int, num_heads: int, sr_ratio: int):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"channel count {dim} is not divisible by {num_heads} heads")
        self.num_heads, self.sr_ratio = num_heads, sr_ratio
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(dim, dim * 2)
        self.proj = nn.Linear(dim, dim)
        if sr_ratio > 1:
            self.sr = nn.Conv2d(dim, dim, kernel_size=sr_ratio, stride=sr_ratio)
            self.norm = nn.LayerNorm(dim)
        else:
            self.sr, self.norm = None, None

    def forward(self, x: torch.Tensor, ctx) -> torch.Tensor:
        """x [B, H, W, C] or [B, N, C] -> same shape."""
        b, c = x.shape[0], x.shape[-1]
        heads = self.num_heads
        q = self.q(x).reshape(b, -1, heads, c // heads).transpose(1, 2)             # [B, h, L, d]
        kv_in = self.norm(ctx.subsample(x, self.sr)) if self.sr is not None else x.reshape(b, -1, c)
        k, v = self.kv(kv_in).reshape(b, -1, 2, heads, c // heads).permute(2, 0, 3, 1, 4).unbind(0)
        key_bias: Optional[torch.Tensor] = ctx.key_bias                             # [B, 1, 1, M]
        out = F.scaled_dot_product_attention(
            q, k, v, attn_mask=None if key_bias is None else key_bias.to(q.dtype))
        return self.proj(out.transpose(1, 2).reshape(x.shape))


class TwinsBlock(nn.Module):
    """Pre-norm transformer block; LSA when `window_size` is given, else GSA."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0, drop_path: float = 0.0,
                 window_size: Optional[int] = None, sr_ratio: int = 1):
        super().__init__()
        self.local = window_size is not None  # which attention, hence which plan, this block uses
        self.norm1 = BlockNorm(dim)
        self.attn = (LocallyGroupedAttn(dim, num_heads, window_size) if self.local
                     else GlobalSubSampleAttn(dim, num_heads, sr_ratio))
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.norm2 = BlockNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), act_layer=nn.GELU)

    def forward(self, x: torch.Tensor, ctx, memo: Optional[dict] = None) -> torch.Tensor:
        """memo: the stage's dict for this forward (LSA's plan keeps derived indices in it)."""
        attn = self.attn(self.norm1(x), ctx, memo) if self.local else self.attn(self.norm1(x), ctx)
        x = x + self.drop_path(attn)
        return x + self.drop_path(self.mlp(self.norm2(x)))
