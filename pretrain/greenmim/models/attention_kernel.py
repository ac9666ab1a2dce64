"""Attention inside windows or groups: softmax(q k^T / sqrt(d) + bias) v for [B, heads, n, t, d].

Two kernels compute it ("auto" picks):
- SDPA (`F.scaled_dot_product_attention`), on CUDA: the memory-efficient kernel takes an additive
  bias and returns its gradient. Its inputs are laid out [B, heads * n, t, d], so that the bias of
  a batch-shared layout ([heads, n, t, t], the same for every sample) reaches the kernel as a
  stride-0 view over the batch: never copied B times, never saved B times for the backward.
  The kernel reads a bias in place only when every stride but the last is a multiple of 8
  elements; otherwise PyTorch pads a copy of it on every call. `aligned_copy` lays biases out that
  way once per stage (the last dimension's storage rounded up to 8).
- two batched matmuls, on CPUs, where a learnable bias sends SDPA to its generic math path.

SDPA's output layout is the kernel's own (on CUDA [B, t, heads * n, d] in memory for a
[B, heads * n, t, d] result); callers read it with views that assume no layout.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

ATTENTION_KERNELS = ("auto", "sdpa", "matmul")
_attention_kernel = "auto"
BIAS_ALIGNMENT = 8  # elements; what the memory-efficient kernel reads without a padded copy


def set_attention_kernel(kernel: str) -> None:
    """Selects how window attention computes softmax(q k^T / sqrt(d) + bias) v (see ATTENTION_KERNELS)."""
    global _attention_kernel
    if kernel not in ATTENTION_KERNELS:
        raise ValueError(f"attention kernel '{kernel}' is not one of {ATTENTION_KERNELS}")
    _attention_kernel = kernel


def compute_dtype(like: torch.Tensor) -> torch.dtype:
    """The dtype attention scores have under the current autocast state (like's dtype without)."""
    kind = like.device.type
    if torch.amp.is_autocast_available(kind) and torch.is_autocast_enabled(kind):
        return torch.get_autocast_dtype(kind)
    return like.dtype


def is_aligned(x: torch.Tensor) -> bool:
    """Whether SDPA's memory-efficient kernel reads x in place: unit last stride, every other
    stride (0 included) a multiple of BIAS_ALIGNMENT."""
    return x.stride(-1) == 1 and all(s % BIAS_ALIGNMENT == 0 for s in x.stride()[:-1])


def aligned_copy(x: torch.Tensor, dtype: Optional[torch.dtype] = None) -> torch.Tensor:
    """A copy of x (in dtype) whose storage rows are padded to BIAS_ALIGNMENT elements: the same
    shape and values, and is_aligned. Differentiable like x.to(dtype): one copy forward, and a
    backward that only converts the dtype back (a copy into a slice would clone the padded
    gradient and copy it again)."""
    return _AlignedCopy.apply(x, dtype or x.dtype)


def aligned_empty(shape, dtype: torch.dtype, device) -> torch.Tensor:
    """An uninitialised tensor of `shape` that is_aligned (its rows padded in storage)."""
    *lead, last = shape
    padded = -(-last // BIAS_ALIGNMENT) * BIAS_ALIGNMENT
    return torch.empty((*lead, padded), dtype=dtype, device=device)[..., :last]


class _AlignedCopy(torch.autograd.Function):

    @staticmethod
    def forward(ctx, x, dtype):
        ctx.dtype = x.dtype
        return aligned_empty(x.shape, dtype, x.device).copy_(x)

    @staticmethod
    def backward(ctx, grad):
        return grad.to(ctx.dtype), None


def sdpa_mask(bias: torch.Tensor, b: int, h: int, n: int, t: int, dtype: torch.dtype) -> torch.Tensor:
    """bias broadcastable to [B', heads, n, t, t] (B' = 1 or b) -> SDPA's attn_mask for inputs
    [b, heads * n, t, d]: [b, heads * n, t, t], a stride-0 view over the batch when B' = 1.

    A bias with all of its heads and windows, aligned and in dtype (Swin's stage biases) is only
    viewed; any other is copied once, without the batch (e.g. a mask shared by the heads)."""
    bias = bias.to(dtype)
    while bias.dim() < 5:
        bias = bias.unsqueeze(0)
    lead = bias.shape[0]
    if bias.shape[1:3] == (h, n):
        mask = bias.flatten(1, 2).expand(b, h * n, t, t)   # a view when heads and windows merge
        if is_aligned(mask):
            return mask
    return aligned_copy(bias.expand(lead, h, n, t, t)).flatten(1, 2).expand(b, h * n, t, t)


def window_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                     bias: Optional[torch.Tensor]) -> torch.Tensor:
    """Attention inside windows (or groups): q, k, v [B, heads, n, t, d] (n windows of t
    tokens); bias None or additive, broadcastable to [B, heads, n, t, t] -> [B, heads, n, t, d]
    (in the kernel's layout: see the module docstring).

    Matmul path: one batched matmul per product with the scale folded into the bias add, so the
    whole core is bmm, add, softmax, bmm (no copies of q, k or v)."""
    b, h, n, t, d = q.shape
    kernel = _attention_kernel
    if kernel == "sdpa" or (kernel == "auto" and q.is_cuda):
        mask = None if bias is None else sdpa_mask(bias, b, h, n, t, q.dtype)
        out = F.scaled_dot_product_attention(q.reshape(b, h * n, t, d), k.reshape(b, h * n, t, d),
                                             v.reshape(b, h * n, t, d), attn_mask=mask)
        return out.unflatten(1, (h, n))
    scores = torch.bmm(q.reshape(-1, t, d), k.reshape(-1, t, d).transpose(1, 2)).view(b, h, n, t, t)
    scale = d ** -0.5
    scores = scores * scale if bias is None else torch.add(bias.to(scores.dtype), scores, alpha=scale)
    out = torch.bmm(scores.softmax(-1).view(-1, t, t), v.reshape(-1, t, d))
    return out.view(b, h, n, t, d)
