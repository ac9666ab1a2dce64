"""Swin's relative position bias gathered for window groups, with a backward made of matmuls.

The bias of a group plan is `tables[:, rel_index]`: for every slot pair of every group, a row of a
(2w-1)^2-row table. Its gradient sums millions of pair gradients onto those few rows (per-sample
masks at batch 128: ~2,000 groups x 49 x 49 pairs per table). Autograd's backward of advanced
indexing does that with an accumulating index_put, which on CUDA sorts the indices and
serialises the duplicates: 13 ms a call on an H200, 69% of a per-sample Swin-B step's GPU time.

The pair's row is a difference of the two slots' position codes, rel = code_q - code_k + (U - 1)
(window_plans.window_occupancy), with codes in [0, U), U = 2w(w-1) + 1. So the gradient per row
is a sum over code pairs, and the sum over code pairs is two dense products with the one-hot
matrix E [G*g, U] of the slots' codes:

    dT[k, h] = E^T (dB[k, h] E)        ([U, U] per block k and head h, summed over every group)
    dtables[k, r, h] = sum over (u, v) with u - v + U - 1 = r of dT[k, h, u, v]

All three are GEMMs (deterministic, no atomics on a few addresses), run in float32 whatever the
autocast dtype; the last one sums U^2 code pairs onto their rows with a constant 0/1 matrix, a
cost independent of the batch.
That is the backward on GPUs. On a CPU the accumulation is not serialised and costs less than
the products' FLOPs (per-sample masks at batch 128, Swin-B stage 1: 213 vs 315 ms,
tools/benchmarks/bias_grad.py), so there the backward accumulates per pair ("index").
"""
from __future__ import annotations

import contextlib
import functools
from typing import Optional

import torch
import torch.nn.functional as F

from .attention_kernel import BIAS_ALIGNMENT


def num_codes(window: int) -> int:
    """Distinct position codes r * (2w-1) + c of a w x w window (r, c in [0, w))."""
    return 2 * window * (window - 1) + 1


@functools.lru_cache(maxsize=16)
def _pairs_to_rows(window: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """[U*U, (2w-1)^2] 0/1: the table row u - v + U - 1 of each (query code u, key code v) pair."""
    u = torch.arange(num_codes(window), device=device)
    rows = (u[:, None] - u[None, :] + num_codes(window) - 1).flatten()
    return (rows[:, None] == torch.arange((2 * window - 1) ** 2, device=device)).to(dtype)


BACKWARDS = ("auto", "matmul", "index")


def group_bias(tables: torch.Tensor, slot_code: torch.Tensor, window: int, backward: str = "auto",
               mask: Optional[torch.Tensor] = None, dtype: Optional[torch.dtype] = None) -> torch.Tensor:
    """tables [K, (2w-1)^2, heads] (K blocks sharing a plan), slot_code long [G, g] ->
    pair bias [K, heads, G, g, g] (cross-window and padding pairs get some row; they are masked),
    plus `mask` (additive, broadcastable, no gradient) when given, in `dtype` (default: the
    tables'), stored as attention kernels read it in place (attention_kernel.aligned_copy).
    backward: "matmul", "index" or "auto" (matmul except on a CPU; see the module docstring)."""
    if backward not in BACKWARDS:
        raise ValueError(f"group bias backward {backward!r} is not one of {BACKWARDS}")
    return _GroupBias.apply(tables, slot_code, window, backward, mask, dtype or tables.dtype)


# The matmul backward wants the gradient laid out [G, g (query), K, heads, g (key)] in memory: the
# first product then reads it as [G, g*K*heads, g] and its result is already [G*g, K*heads*U],
# the second product's operand, so neither needs a transposed copy. The conversion to float32 that
# the backward makes anyway writes that layout.
_GRAD_ORDER = (2, 3, 0, 1, 4)


class _GroupBias(torch.autograd.Function):

    @staticmethod
    def forward(ctx, tables, slot_code, window, backward, mask, dtype):
        ctx.save_for_backward(slot_code)
        ctx.window, ctx.table_dtype = window, tables.dtype
        ctx.matmul = backward == "matmul" or (backward == "auto" and tables.device.type != "cpu")
        k, groups, g = tables.shape[0], *slot_code.shape
        # Gathered straight into the layout attention kernels read in place: key codes padded
        # with code 0 (any valid row) to rows of BIAS_ALIGNMENT, the padding then sliced off.
        key_code = F.pad(slot_code, (0, -g % BIAS_ALIGNMENT))
        rel = slot_code[:, :, None] - key_code[:, None, :] + (num_codes(window) - 1)   # [G, g, g']
        by_head = tables.to(dtype).transpose(1, 2)                                     # [K, h, rows]
        out = by_head.index_select(2, rel.flatten()).view(k, -1, groups, g, rel.shape[-1])[..., :g]
        # In place, exact: the mask holds only 0 and -inf.
        return out if mask is None else out.add_(mask)                                 # [K, h, G, g, g]

    @staticmethod
    def backward(ctx, grad):
        (code,) = ctx.saved_tensors
        k, heads, groups, g, _ = grad.shape
        u = num_codes(ctx.window)
        rows = (2 * ctx.window - 1) ** 2
        if not ctx.matmul:  # what autograd's indexing backward does: accumulate every pair
            rel = code[:, :, None] - code[:, None, :] + (u - 1)
            acc = torch.promote_types(grad.dtype, torch.float32)
            per_row = grad.permute(0, 2, 3, 4, 1).reshape(k, -1, heads).to(acc)
            grad_tables = per_row.new_zeros(k, rows, heads).index_add_(1, rel.flatten(), per_row)
            return grad_tables.to(ctx.table_dtype), None, None, None, None, None
        work = torch.float64 if grad.dtype == torch.float64 else torch.float32
        kind = grad.device.type
        no_autocast = (torch.autocast(kind, enabled=False) if torch.amp.is_autocast_available(kind)
                       else contextlib.nullcontext())
        with no_autocast:
            # A comparison, not F.one_hot, which reads the codes' range on the host (a sync).
            onehot = (code[..., None] == torch.arange(u, device=code.device)).to(work)   # [G, g, U]
            laid_out = torch.empty_permuted(grad.shape, _GRAD_ORDER, dtype=work, device=grad.device)
            by_group = laid_out.copy_(grad).permute(_GRAD_ORDER).reshape(groups, g * k * heads, g)
            per_key = torch.bmm(by_group, onehot).view(groups * g, k * heads * u)      # [G*g, Kh*U]
            per_pair = onehot.view(groups * g, u).t() @ per_key                        # [U, Kh*U]
            per_pair = per_pair.view(u, k * heads, u).transpose(0, 1).reshape(k * heads, u * u)
            grad_tables = per_pair @ _pairs_to_rows(ctx.window, grad.device, work)     # [Kh, rows]
        grad_tables = grad_tables.view(k, heads, rows).transpose(1, 2).to(ctx.table_dtype)
        return grad_tables, None, None, None, None, None
