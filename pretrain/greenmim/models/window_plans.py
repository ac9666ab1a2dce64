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
from typing import List, Optional, Tuple

import torch
import torch.nn.functional as F

from .attention_kernel import (ATTENTION_KERNELS, aligned_copy, compute_dtype,  # noqa: F401 (public here too)
                               set_attention_kernel, window_attention)
from .group_bias import group_bias
from .tensor_tree import map_tensors
from .grouping import Grouping, pack_min_groups, plan_grouping


def relative_position_index(drow: torch.Tensor, dcol: torch.Tensor, window: int) -> torch.Tensor:
    """Swin's bias-table row for coordinate differences in (-window, window)."""
    span = 2 * window - 1
    return (drow + window - 1) * span + (dcol + window - 1)


def _split_heads(qkv: torch.Tensor, num_heads: int):
    """qkv [..., L, 3C] -> q, k, v each [..., heads, L, C/heads]."""
    *lead, length, three_c = qkv.shape
    qkv = qkv.view(*lead, length, 3, num_heads, three_c // (3 * num_heads))
    q, k, v = qkv.movedim(-3, 0).transpose(-3, -2).unbind(0)
    return q, k, v


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
        """token_mask: optional bool [B, height, width], True = token removed from the keys.

        Every tensor is made on `device`: under torch.compile this runs inside the compiled
        region, where an op on a host tensor would be compiled as host code (and a host -> device
        copy would keep CUDA graphs out)."""
        dev = device if device is not None else torch.device("cpu")
        pad_h, pad_w = -height % window, -width % window
        hp, wp = height + pad_h, width + pad_w
        ar = torch.arange(window, device=dev)
        rows, cols = ar.repeat_interleave(window), ar.repeat(window)
        rel = relative_position_index(rows[:, None] - rows[None], cols[:, None] - cols[None], window)

        usable = torch.ones(1, height, width, dtype=torch.bool, device=dev)
        if token_mask is not None:
            usable = ~token_mask.to(dev)
        needs_mask = shift > 0 or pad_h > 0 or pad_w > 0 or token_mask is not None
        attn_mask = None
        if needs_mask:
            usable = F.pad(usable, (0, pad_w, 0, pad_h), value=False)
            region = torch.zeros(hp, wp, dtype=torch.long, device=dev)
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
        return cls(height, width, window, shift, rel, attn_mask)

    def pair_bias(self, tables: torch.Tensor, dtype: Optional[torch.dtype] = None) -> Optional[torch.Tensor]:
        """Additive attention bias of K blocks that share this plan: tables [K, (2w-1)^2, heads]
        (or None: no relative position bias) -> [K, heads, 1, T, T], or [K, Bm, heads, nW, T, T]
        with a mask; None when there is neither bias nor mask. One gather for the K blocks.
        ([K, heads, nW, T, T] without a mask.) With a dtype: in it, laid out as attention kernels
        read it in place."""
        mask = None if self.attn_mask is None else self.attn_mask.movedim(2, 1)  # [Bm, 1, nW, T, T]
        if tables is None:
            bias = None if mask is None else mask.unsqueeze(0)
        else:
            bias = tables[:, self.rel_index].permute(0, 3, 1, 2).unsqueeze(2)    # [K, heads, 1, T, T]
            if mask is None:  # every window's entry, so that attention kernels view heads x windows
                bias = bias.expand(-1, -1, self.num_windows, -1, -1)
            else:
                bias = bias.unsqueeze(1) + mask
        return bias if bias is None or dtype is None else aligned_copy(bias, dtype)

    @property
    def num_windows(self) -> int:
        return -(-self.height // self.window) * -(-self.width // self.window)

    def attention(self, qkv: torch.Tensor, table: Optional[torch.Tensor], num_heads: int,
                  memo: Optional[dict] = None) -> torch.Tensor:
        """qkv [B, H, W, 3C] -> attention output [B, H, W, C]. table: bias table or None (no bias)."""
        bias = self.pair_bias(None if table is None else table.unsqueeze(0))
        return self.attend(qkv, None if bias is None else bias[0], num_heads)

    def attend(self, qkv: torch.Tensor, bias: Optional[torch.Tensor], num_heads: int,
               memo: Optional[dict] = None) -> torch.Tensor:
        """qkv [B, H, W, 3C], bias: one block's entry of pair_bias -> attention output [B, H, W, C].
        (memo: unused; the layout needs no derived indices.)"""
        b, h, w, three_c = qkv.shape
        ws = self.window
        pad_h, pad_w = -h % ws, -w % ws
        if pad_h or pad_w:
            qkv = F.pad(qkv, (0, 0, 0, pad_w, 0, pad_h))
        if self.shift:
            qkv = qkv.roll((-self.shift, -self.shift), dims=(1, 2))
        hp, wp = qkv.shape[1:3]
        nr, nc, d = hp // ws, wp // ws, three_c // (3 * num_heads)
        # One copy partitions the windows and splits q, k, v and heads: [3, B, heads, nW, T, d].
        q, k, v = (qkv.view(b, nr, ws, nc, ws, 3, num_heads, d).permute(5, 0, 6, 1, 3, 2, 4, 7)
                   .reshape(3, b, num_heads, nr * nc, ws * ws, d).unbind(0))
        out = window_attention(q, k, v, bias)                                   # [B, heads, nW, T, d]
        out = out.view(b, num_heads, nr, nc, ws, ws, d).permute(0, 2, 4, 3, 5, 1, 6).reshape(b, hp, wp, -1)
        if self.shift:
            out = out.roll((self.shift, self.shift), dims=(1, 2))
        return out[:, :h, :w]


def _partition(x: torch.Tensor, window: int) -> torch.Tensor:
    """[B, H, W, C] -> [B, nW, window*window, C] (windows row-major, tokens row-major inside)."""
    b, h, w, c = x.shape
    x = x.view(b, h // window, window, w // window, window, c).transpose(2, 3)
    return x.reshape(b, (h // window) * (w // window), window * window, c)


def window_occupancy(rows: torch.Tensor, cols: torch.Tensor, height: int, width: int,
                     window: int, shift: int):
    """Which (shifted) window each visible token falls in. rows, cols long [P, N] ->
    (win [P*N] window id over the P samples' windows, code [P*N] position code inside the window,
    sizes [P*nW] tokens per window)."""
    p = rows.shape[0]
    offset = (window - shift) % window
    rows_o, cols_o = rows + offset, cols + offset
    n_wr, n_wc = (height - 1 + offset) // window + 1, (width - 1 + offset) // window + 1
    sample = torch.arange(p).unsqueeze(1)
    win = ((sample * n_wr + rows_o // window) * n_wc + cols_o // window).flatten()
    # Swin's bias row of a pair is linear in the coordinate difference:
    #   (dr + w-1) * (2w-1) + (dc + w-1) = key_code[query] - code[key],
    # code = r * (2w-1) + c. Coordinates inside the window (in [0, w)) give the same differences
    # for same-window pairs and keep every pair's row in range, so the [G, g, g] index is one
    # broadcast subtraction (cross-window pairs get some valid row; they are masked).
    code = ((rows_o % window) * (2 * window - 1) + cols_o % window).flatten()
    return win, code, torch.bincount(win, minlength=p * n_wr * n_wc)


class PlanOverflow(Exception):
    """The visible tokens of a stage do not fit the static (groups, capacity) asked for."""


@dataclass
class GroupPlan:
    """Group Window Attention over visible tokens.

    Tokens of `plan_samples` samples (1 for a batch-shared mask, B for per-sample masks) are laid
    out as one list of P*N tokens; groups may hold windows of different samples. The plan keeps
    O(G*g) facts per slot; the O(G*g*g) pair tensors (bias rows, window mask) are derived from
    them where the plan runs, once per step and stage (pair_bias).
    """
    gather: torch.Tensor       # [G*g] token feeding each group slot (padding slots point at 0)
    scatter: torch.Tensor      # [P*N] slot holding each token
    slot_code: torch.Tensor    # [G, g] r*(2w-1)+c of the slot's token inside its window
    slot_window: torch.Tensor  # [G, g] window of the slot's token, -1 for padding
    window: int
    num_groups: int
    capacity: int
    plan_samples: int
    num_tokens: int            # N per sample
    padded_fraction: float     # padding slots / real tokens, for reports

    @classmethod
    def build(cls, rows: torch.Tensor, cols: torch.Tensor, height: int, width: int,
              window: int, shift: int, device=None,
              static: Optional[Tuple[int, int]] = None) -> "GroupPlan":
        """rows, cols: long [P, N] true grid coordinates of the visible tokens (CPU).

        static: (groups, capacity) to pad the plan to, so that its shapes do not depend on the
        mask (see static_shapes.py); raises PlanOverflow when the tokens do not fit."""
        p, n = rows.shape
        win, code, sizes = window_occupancy(rows, cols, height, width, window, shift)
        if static is None:
            grouping = plan_grouping(sizes.tolist(), window * window)
            n_groups = len(grouping.groups)
        else:
            n_groups, g_static = static
            grouping = static_grouping(sizes.tolist(), n_groups, g_static)
        slot_sorted, order = _slots(win, sizes, grouping)
        g = grouping.capacity

        scatter = torch.empty(p * n, dtype=torch.long)
        scatter[order] = slot_sorted
        gather = torch.zeros(n_groups * g, dtype=torch.long)
        gather[slot_sorted] = order
        slot_win = torch.full((n_groups * g,), -1, dtype=torch.long)  # -1 marks a padding slot
        slot_win[slot_sorted] = win[order]
        dev = device if device is not None else torch.device("cpu")
        move = lambda t: t.to(dev, non_blocking=True)  # noqa: E731
        return cls(move(gather), move(scatter), move(code[gather].view(n_groups, g)),
                   move(slot_win.view(n_groups, g)), window, n_groups, g, p, n,
                   (n_groups * g - p * n) / max(p * n, 1))

    def pin_memory(self) -> "GroupPlan":
        """A copy in pinned host memory (DataLoader's pin_memory calls this), so the copy to the
        device can overlap compute."""
        return map_tensors(self, torch.Tensor.pin_memory)

    @property
    def rel_index(self) -> torch.Tensor:
        """[G, g, g] bias-table row of every slot pair (in range for every pair; cross-window pairs
        are masked)."""
        span = 2 * self.window - 1
        code = self.slot_code
        return (code + (self.window - 1) * (span + 1))[:, :, None] - code[:, None, :]

    @property
    def attn_mask(self) -> torch.Tensor:
        """[G, 1, g, g] additive: 0 inside a window, -inf across windows and to/from padding.
        A padding slot (window -1) sees only itself, so no row is empty, no real token ever sees
        padding, and padding gradients stay exactly zero (see _SlotGather)."""
        win = self.slot_window
        same = (win[:, :, None] == win[:, None, :]) & (win >= 0)[:, :, None]
        self_only = torch.eye(self.capacity, dtype=torch.bool, device=win.device)
        return torch.where(same | self_only, 0.0, float("-inf")).to(torch.float32).unsqueeze(1)

    def pair_bias(self, tables: Optional[torch.Tensor], dtype: Optional[torch.dtype] = None) -> torch.Tensor:
        """Bias + window mask of K blocks that share this plan: tables [K, (2w-1)^2, heads] (None:
        no relative position bias) -> [K, heads, G, g, g] in dtype (default: the tables'), laid
        out as attention kernels read it in place. One gather for the K blocks."""
        mask = self.attn_mask.transpose(0, 1)                                   # [1, G, g, g]
        if tables is None:
            return mask.unsqueeze(0) if dtype is None else aligned_copy(mask.unsqueeze(0), dtype)
        return group_bias(tables, self.slot_code, self.window, mask=mask, dtype=dtype)

    def attention(self, qkv: torch.Tensor, table: Optional[torch.Tensor], num_heads: int,
                  memo: Optional[dict] = None) -> torch.Tensor:
        """qkv [B, N, 3C] or [B*N, 3C] -> attention output of the same layout. table: the bias table [(2w-1)^2, heads],
        or None for window attention without relative position bias. memo: see attend."""
        return self.attend(qkv, self.pair_bias(None if table is None else table.unsqueeze(0))[0], num_heads, memo)

    def attend(self, qkv: torch.Tensor, bias: torch.Tensor, num_heads: int,
               memo: Optional[dict] = None) -> torch.Tensor:
        """qkv [B, N, 3C] (or [B*N, 3C]), bias: one block's entry of pair_bias -> attention output
        [B, N, C] (or [B*N, C]). memo: a dict this plan may keep derived indices in, made afresh for
        each forward and shared by the blocks that use the plan (None: derive them per call).

        The gather of the group slots also splits q, k, v and heads ([3, B/P, heads, G*g, d] from
        one index_select of a permuted view), and the scatter back reads the heads in place, so
        the only copies are the two index_selects."""
        three_c, n = qkv.shape[-1], self.num_tokens
        b = qkv.numel() // (three_c * n)          # qkv [B, N, 3C] or [B*N, 3C]
        p, g_count, g = self.plan_samples, self.num_groups, self.capacity
        d = three_c // (3 * num_heads)
        slots = _SlotGather.apply(qkv.view(b // p, p * n, 3, num_heads, d), self.gather, self.scatter)
        q, k, v = slots.view(3, b // p, num_heads, g_count, g, d).unbind(0)     # [B/P, heads, G, g, d]
        out = window_attention(q, k, v, bias)                                  # [B/P, heads, G, g, d]
        # The kernel's output layout is its own: CUDA's SDPA lays it out [B/P, g, heads, G, d] in
        # memory, which the scatter reads as it lies through (slot, head) indices; any other layout
        # is flattened group-major (a copy only when needed). Never a view that assumes one layout.
        slot_major = out.permute(0, 3, 1, 2, 4)
        if not out.is_contiguous() and slot_major.is_contiguous():
            tokens = _SlotScatter.apply(slot_major.view(b // p, -1, d), *self._head_slots(num_heads, memo))
        else:
            tokens = _SlotScatter.apply(out.flatten(2, 3), self.scatter, self.gather)
        return tokens.view(*qkv.shape[:-1], three_c // 3)

    def _head_slots(self, num_heads: int, memo: Optional[dict]):
        """(scatter, gather) over [g * heads * G] (offset, head, group) entries: the position of
        every (token, head) pair, [P*N*heads], and the token-head feeding every entry (padding:
        token 0's), made once per forward when a memo is given."""
        key = ("head_slots", num_heads)
        if memo is not None and key in memo:
            return memo[key]
        h, groups, g = num_heads, self.num_groups, self.capacity
        heads = torch.arange(h, device=self.scatter.device)
        group, offset = self.scatter // g, self.scatter % g
        scatter = ((offset[:, None] * h + heads) * groups + group[:, None]).flatten()
        gather = (self.gather.view(groups, g).t()[:, None, :] * h + heads[:, None]).flatten()
        if memo is not None:
            memo[key] = (scatter, gather)
        return scatter, gather


# Gather and scatter are inverse permutations on the real tokens, so each one's backward is the
# other's index_select (one op, instead of zeros + index_add, and no layout copy). That is exact
# because nothing a padding slot computes reaches a real token or a weight: a padding slot attends
# only to itself (attn_mask), so its softmax gradient is exactly 0 whatever gradient arrives there,
# and its value gradient stays in the slot, which the gather's backward never reads.
class _SlotGather(torch.autograd.Function):
    """qkv [B', P*N, 3, heads, d] -> slots [3, B', heads, G*g, d] (contiguous)."""

    @staticmethod
    def forward(ctx, qkv, gather, scatter):
        ctx.save_for_backward(scatter)
        return qkv.permute(2, 0, 3, 1, 4).index_select(3, gather)

    @staticmethod
    def backward(ctx, grad):
        (scatter,) = ctx.saved_tensors
        return grad.permute(1, 3, 0, 2, 4).index_select(1, scatter), None, None


class _SlotScatter(torch.autograd.Function):
    """out [B', heads, G*g, d] -> tokens [B', P*N, heads, d] (contiguous); or, with (slot, head)
    indices, out [B', g*heads*G, d] -> [B', P*N*heads, d]."""

    @staticmethod
    def forward(ctx, out, scatter, gather):
        ctx.save_for_backward(gather)
        if out.dim() == 3:
            return out.index_select(1, scatter)
        return out.transpose(1, 2).index_select(1, scatter)

    @staticmethod
    def backward(ctx, grad):
        (gather,) = ctx.saved_tensors
        if grad.dim() == 3:
            return grad.index_select(1, gather), None, None
        return grad.transpose(1, 2).index_select(2, gather), None, None


def static_grouping(sizes: List[int], num_groups: int, capacity: int) -> Grouping:
    """The fewest groups of `capacity` tokens for these window sizes, padded to `num_groups` empty
    groups; PlanOverflow when a window is larger than the capacity or more groups are needed."""
    if max(sizes, default=0) > capacity:
        raise PlanOverflow(f"a window holds {max(sizes)} tokens, more than the capacity {capacity}")
    items = [i for i, s in enumerate(sizes) if s > 0]
    groups = [[items[j] for j in grp] for grp in pack_min_groups([sizes[i] for i in items], capacity)]
    if len(groups) > num_groups:
        raise PlanOverflow(f"{len(groups)} groups of {capacity} needed, {num_groups} available")
    return Grouping(capacity=capacity, groups=groups)


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
