"""Attention plans: which tokens attend to which, computed once per stage and shared by its blocks.

A plan turns the fused qkv projection of a stage's tokens into attention outputs:
- `WindowPlan` (dense path): Swin's pad + cyclic shift + window partition on a full token grid.
- `GroupPlan` (sparse path): visible tokens only; windows are packed into equal-size groups
  (see grouping.py) and attention inside a group is masked so that a token only sees tokens of
  its own window. No token of another window, no padding and no masked patch ever leaks in.

Both use Swin's relative position bias, indexed by the tokens' true coordinates, so one set of
weights serves both paths. Index tensors are built on the host from the mask and moved to the
device once; blocks never synchronise with the host.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F

from .grouping import Grouping, plan_grouping


def relative_position_index(drow: torch.Tensor, dcol: torch.Tensor, window: int) -> torch.Tensor:
    """Swin's bias-table row for coordinate differences in (-window, window)."""
    span = 2 * window - 1
    return (drow + window - 1) * span + (dcol + window - 1)


def _bias_from_table(table: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """table [(2w-1)^2, heads], index [..., L, L] -> bias [..., heads, L, L]."""
    return table[index].movedim(-1, -3)


def _split_heads(qkv: torch.Tensor, num_heads: int):
    """qkv [..., L, 3C] -> q, k, v each [..., heads, L, C/heads]."""
    *lead, length, three_c = qkv.shape
    qkv = qkv.view(*lead, length, 3, num_heads, three_c // (3 * num_heads))
    q, k, v = qkv.movedim(-3, 0).transpose(-3, -2).unbind(0)
    return q, k, v


def _attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: Optional[torch.Tensor]) -> torch.Tensor:
    """softmax(q k^T / sqrt(d) + bias) v for q, k, v [..., heads, L, d] and bias [..., heads, L, L].

    A learnable bias sends scaled_dot_product_attention to its generic math path on CPU and CUDA
    (the fused kernels return no bias gradient), which is slower than these three ops; without a
    gradient the fused kernels win. Rows are never fully masked (see _allowed_to_additive), so the
    plain softmax is safe.
    """
    if bias is None:
        return F.scaled_dot_product_attention(q, k, v)
    bias = bias.to(q.dtype)
    if not (torch.is_grad_enabled() and bias.requires_grad):
        return F.scaled_dot_product_attention(q, k, v, attn_mask=bias)
    scores = torch.matmul(q, k.transpose(-1, -2)).mul_(q.shape[-1] ** -0.5).add_(bias)
    return torch.matmul(scores.softmax(-1), v)


def _merge_heads(out: torch.Tensor) -> torch.Tensor:
    """[..., heads, L, d] -> [..., L, heads*d]."""
    return out.transpose(-3, -2).flatten(-2)


def _allowed_to_additive(allowed: torch.Tensor) -> torch.Tensor:
    """bool [..., L, L] -> 0 / -inf float. Each query may always see itself, so no row is empty
    (a fully masked row would give NaN, and NaN times a zero weight still poisons the next block)."""
    eye = torch.eye(allowed.shape[-1], dtype=torch.bool, device=allowed.device)
    return torch.zeros(allowed.shape, dtype=torch.float32, device=allowed.device).masked_fill(
        ~(allowed | eye), float("-inf"))


@dataclass
class WindowPlan:
    """Dense Swin windows on a [H, W] grid. `key_mask` [Bm, nW, T] (True = usable key) marks padding
    and, for the masked reference, masked tokens; None when every key is usable."""
    height: int
    width: int
    window: int
    shift: int
    rel_index: torch.Tensor               # [T, T]
    attn_mask: Optional[torch.Tensor]     # [Bm, nW, 1, T, T] additive, or None

    @classmethod
    def build(cls, height: int, width: int, window: int, shift: int,
              token_mask: Optional[torch.Tensor] = None, device=None) -> "WindowPlan":
        """token_mask: optional bool [B, height, width], True = token removed from the keys."""
        pad_h, pad_w = -height % window, -width % window
        hp, wp = height + pad_h, width + pad_w
        ar = torch.arange(window)
        rows, cols = ar.repeat_interleave(window), ar.repeat(window)
        rel = relative_position_index(rows[:, None] - rows[None], cols[:, None] - cols[None], window)

        usable = torch.ones(1, height, width, dtype=torch.bool)
        if token_mask is not None:
            usable = ~token_mask.cpu()
        needs_mask = shift > 0 or pad_h > 0 or pad_w > 0 or token_mask is not None
        attn_mask = None
        if needs_mask:
            usable = F.pad(usable, (0, pad_w, 0, pad_h), value=False)
            region = torch.zeros(hp, wp, dtype=torch.long)
            if shift > 0:
                # The cyclic shift puts wrapped border strips into the same window: label them apart.
                bounds = (slice(0, -window), slice(-window, -shift), slice(-shift, None))
                label = 0
                for hs in bounds:
                    for ws in bounds:
                        region[hs, ws] = label
                        label += 1
                usable = usable.roll((-shift, -shift), dims=(1, 2))
            region_w = _partition(region[None, :, :, None], window)[..., 0]      # [1, nW, T]
            usable_w = _partition(usable[..., None], window)[..., 0]             # [Bm, nW, T]
            allowed = (region_w[..., :, None] == region_w[..., None, :]) & usable_w[..., None, :]
            attn_mask = _allowed_to_additive(allowed).unsqueeze(2)
        dev = device if device is not None else torch.device("cpu")
        return cls(height, width, window, shift, rel.to(dev),
                   None if attn_mask is None else attn_mask.to(dev, non_blocking=True))

    def attention(self, qkv: torch.Tensor, table: Optional[torch.Tensor], num_heads: int) -> torch.Tensor:
        """qkv [B, H, W, 3C] -> attention output [B, H, W, C]. table: bias table or None (no bias)."""
        b, h, w, _ = qkv.shape
        pad_h, pad_w = -h % self.window, -w % self.window
        if pad_h or pad_w:
            qkv = F.pad(qkv, (0, 0, 0, pad_w, 0, pad_h))
        if self.shift:
            qkv = qkv.roll((-self.shift, -self.shift), dims=(1, 2))
        hp, wp = qkv.shape[1:3]
        q, k, v = _split_heads(_partition(qkv, self.window), num_heads)  # [B, nW, heads, T, d]
        bias = None if table is None else _bias_from_table(table, self.rel_index)  # [heads, T, T]
        if self.attn_mask is not None:
            bias = self.attn_mask if bias is None else bias + self.attn_mask
        out = _attend(q, k, v, bias)
        out = _unpartition(_merge_heads(out), self.window, hp, wp)
        if self.shift:
            out = out.roll((self.shift, self.shift), dims=(1, 2))
        return out[:, :h, :w]


def _partition(x: torch.Tensor, window: int) -> torch.Tensor:
    """[B, H, W, C] -> [B, nW, window*window, C] (windows row-major, tokens row-major inside)."""
    b, h, w, c = x.shape
    x = x.view(b, h // window, window, w // window, window, c).transpose(2, 3)
    return x.reshape(b, (h // window) * (w // window), window * window, c)


def _unpartition(x: torch.Tensor, window: int, h: int, w: int) -> torch.Tensor:
    """Inverse of _partition: [B, nW, T, C] -> [B, H, W, C]."""
    b, _, _, c = x.shape
    x = x.view(b, h // window, w // window, window, window, c).transpose(2, 3)
    return x.reshape(b, h, w, c)


@dataclass
class GroupPlan:
    """Group Window Attention over visible tokens.

    Tokens of `plan_samples` samples (1 for a batch-shared mask, B for per-sample masks) are laid
    out as one list of P*N tokens; groups may hold windows of different samples.
    """
    gather: torch.Tensor      # [G*g] token feeding each group slot (padding slots point at 0)
    scatter: torch.Tensor     # [P*N] slot holding each token
    rel_index: torch.Tensor   # [G, g, g] bias-table rows from true coordinates
    attn_mask: torch.Tensor   # [G, 1, g, g] additive: 0 inside a window, -inf across/padding
    num_groups: int
    capacity: int
    plan_samples: int
    num_tokens: int           # N per sample
    padded_fraction: float    # padding slots / real tokens, for reports

    @classmethod
    def build(cls, rows: torch.Tensor, cols: torch.Tensor, height: int, width: int,
              window: int, shift: int, device=None) -> "GroupPlan":
        """rows, cols: long [P, N] true grid coordinates of the visible tokens (CPU)."""
        p, n = rows.shape
        offset = (window - shift) % window
        rows_o, cols_o = rows + offset, cols + offset
        n_wr, n_wc = (height - 1 + offset) // window + 1, (width - 1 + offset) // window + 1
        sample = torch.arange(p).unsqueeze(1)
        win = ((sample * n_wr + rows_o // window) * n_wc + cols_o // window).flatten()  # [P*N] window id
        # Swin's bias row of a pair is linear in the coordinate difference:
        #   (dr + w-1) * (2w-1) + (dc + w-1) = key_code[query] - code[key],
        # code = r * (2w-1) + c. Coordinates inside the window (in [0, w)) give the same differences
        # for same-window pairs and keep every pair's row in range, so the [G, g, g] index is one
        # broadcast subtraction (cross-window pairs get some valid row; they are masked).
        span = 2 * window - 1
        code = ((rows_o % window) * span + cols_o % window).flatten()              # [P*N]
        sizes = torch.bincount(win, minlength=p * n_wr * n_wc)
        grouping = plan_grouping(sizes.tolist(), window * window)
        slot_sorted, order = _slots(win, sizes, grouping)
        g, n_groups = grouping.capacity, len(grouping.groups)

        scatter = torch.empty(p * n, dtype=torch.long)
        scatter[order] = slot_sorted
        gather = torch.zeros(n_groups * g, dtype=torch.long)
        gather[slot_sorted] = order
        slot_win = torch.full((n_groups * g,), -1, dtype=torch.long)  # -1 marks a padding slot
        slot_win[slot_sorted] = win[order]

        # Per-slot facts are O(G*g) on the host; each O(G*g*g) pair tensor is one op on the device
        # (these pair tensors were most of a large per-sample plan's time when built element-wise).
        dev = device if device is not None else torch.device("cpu")
        move = lambda t: t.to(dev, non_blocking=True)  # noqa: E731
        slot_win = move(slot_win.view(n_groups, g))
        slot_code = move(code[gather].view(n_groups, g))
        rel = (slot_code + (window - 1) * (span + 1))[:, :, None] - slot_code[:, None, :]
        # Cross-window pairs get an in-range index and are masked. Padding slots (window -1) see
        # only padding, so no row is empty and no real token ever sees padding.
        same = slot_win[:, :, None] == slot_win[:, None, :]
        attn_mask = torch.where(same, 0.0, float("-inf")).to(torch.float32).unsqueeze(1)
        return cls(move(gather), move(scatter), rel, attn_mask, n_groups, g, p, n,
                   (n_groups * g - p * n) / max(p * n, 1))

    def attention(self, qkv: torch.Tensor, table: Optional[torch.Tensor], num_heads: int) -> torch.Tensor:
        """qkv [B, N, 3C] -> attention output [B, N, C]. table: the bias table [(2w-1)^2, heads],
        or None for window attention without relative position bias."""
        b, n, three_c = qkv.shape
        flat = qkv.reshape(b // self.plan_samples, self.plan_samples * n, three_c)
        grouped = flat.index_select(1, self.gather).view(-1, self.num_groups, self.capacity, three_c)
        q, k, v = _split_heads(grouped, num_heads)                      # [B/P, G, heads, g, d]
        bias = self.attn_mask                                           # [G, 1, g, g]
        if table is not None:
            bias = _bias_from_table(table, self.rel_index) + bias       # [G, heads, g, g]
        out = _attend(q, k, v, bias)
        out = _merge_heads(out).flatten(1, 2)                           # [B/P, G*g, C]
        return out.index_select(1, self.scatter).view(b, n, three_c // 3)


def _slots(win: torch.Tensor, sizes: torch.Tensor, grouping: Grouping):
    """Slot (group * capacity + offset) of every token, listed in window-sorted token order.

    Vectorised: the groups' windows, listed group after group, get their start offset inside the
    group from one cumulative sum; only flattening the group lists is Python."""
    members = [w for windows in grouping.groups for w in windows]
    counts = [len(windows) for windows in grouping.groups]
    member = torch.tensor(members, dtype=torch.long)
    per_group = torch.tensor(counts, dtype=torch.long)
    group_id = torch.repeat_interleave(torch.arange(len(counts)), per_group)
    fill = sizes[member]
    end = torch.cumsum(fill, 0)
    group_start = (end - fill)[torch.cumsum(per_group, 0) - per_group]  # at each group's first window
    win_group = torch.zeros(sizes.numel(), dtype=torch.long)
    win_offset = torch.zeros(sizes.numel(), dtype=torch.long)
    win_group[member] = group_id
    win_offset[member] = end - fill - group_start[group_id]
    order = torch.argsort(win, stable=True)
    sorted_win = win[order]
    start = torch.cumsum(sizes, 0) - sizes
    rank = torch.arange(win.numel()) - start[sorted_win]
    slot_sorted = win_group[sorted_win] * grouping.capacity + win_offset[sorted_win] + rank
    return slot_sorted, order
