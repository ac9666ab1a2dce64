"""Ragged window attention: visible tokens sorted by window, no padding at all.

Each sample's visible tokens are reordered so that windows are contiguous, and FlexAttention runs
one sequence per sample with a block-sparse "same window" mask; the relative position bias is
added inside the kernel from the tokens' true coordinates. On GPUs the compiled kernel skips the
empty blocks, which is cheaper than padding windows into groups. On CPUs padded groups through
scaled_dot_product_attention are faster (see README), so this plan is opt-in there.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

import torch

from .window_plans import _merge_heads, _split_heads, relative_position_index

_COMPILED = {}


def _flex_attention(device_type: str):
    """flex_attention, compiled once per device type (eager flex materialises every score)."""
    from torch.nn.attention.flex_attention import flex_attention
    if device_type != "cuda":
        return flex_attention
    if device_type not in _COMPILED:
        _COMPILED[device_type] = torch.compile(flex_attention, dynamic=False)
    return _COMPILED[device_type]


@dataclass
class RaggedPlan:
    order: torch.Tensor      # [P*N] token taken at each sorted position (index into P*N)
    inverse: torch.Tensor    # [P*N] sorted position of each token
    rows: torch.Tensor       # [P, N] true coordinates in sorted order
    cols: torch.Tensor       # [P, N]
    window_id: torch.Tensor  # [P, N] window of each sorted token
    block_mask: Any          # FlexAttention BlockMask over [P, 1, N, N]
    window: int
    plan_samples: int
    padded_fraction: float = 0.0

    @classmethod
    def build(cls, rows: torch.Tensor, cols: torch.Tensor, height: int, width: int,
              window: int, shift: int, device=None) -> "RaggedPlan":
        from torch.nn.attention.flex_attention import create_block_mask
        p, n = rows.shape
        offset = (window - shift) % window
        n_wc = (width - 1 + offset) // window + 1
        win = ((rows + offset) // window) * n_wc + (cols + offset) // window   # [P, N]
        local = torch.argsort(win, dim=1, stable=True)
        order = (local + torch.arange(p).unsqueeze(1) * n).flatten()
        inverse = torch.empty_like(order)
        inverse[order] = torch.arange(p * n)
        dev = device if device is not None else torch.device("cpu")
        rows_s = rows.gather(1, local).to(dev)
        cols_s = cols.gather(1, local).to(dev)
        win_s = win.gather(1, local).to(dev)

        def same_window(b, h, q, k):
            return win_s[b % p, q] == win_s[b % p, k]  # b % p: a shared plan serves every row

        block_mask = create_block_mask(same_window, p, None, n, n, device=dev)
        return cls(order.to(dev), inverse.to(dev), rows_s, cols_s, win_s, block_mask, window, p)

    def attention(self, qkv: torch.Tensor, table: Optional[torch.Tensor], num_heads: int,
                  memo: Optional[dict] = None) -> torch.Tensor:
        """qkv [B, N, 3C] (or [B*N, 3C]) -> attention output [B, N, C] (or [B*N, C]). table: the
        bias table, or None (no bias). memo: unused (the group plans' interface)."""
        lead = qkv.shape[:-1]
        qkv = qkv.view(-1, self.rows.shape[1], qkv.shape[-1])
        b, n, three_c = qkv.shape
        p, ws = self.plan_samples, self.window
        flat = qkv.reshape(b // p, p * n, three_c).index_select(1, self.order).view(b, n, three_c)
        q, k, v = _split_heads(flat, num_heads)                          # [B, heads, N, d]
        rows, cols = self.rows, self.cols
        span = (2 * ws - 1) ** 2

        def add_bias(score, bb, hh, qi, ki):
            s = bb % p  # plan sample of batch row bb (0 when the mask is shared)
            idx = relative_position_index(rows[s, qi] - rows[s, ki], cols[s, qi] - cols[s, ki], ws)
            return score + table[idx.clamp(0, span - 1), hh].to(score.dtype)

        # A shared plan (P = 1) broadcasts its block mask over the batch.
        out = _flex_attention(qkv.device.type)(q, k, v, score_mod=None if table is None else add_bias,
                                               block_mask=self.block_mask)
        out = _merge_heads(out).reshape(b // p, p * n, three_c // 3)
        return out.index_select(1, self.inverse).view(*lead, three_c // 3)
