"""Imitations, on the CPU, of what kernels do differently on a GPU, so CPU tests catch layout bugs.

On CUDA, `F.scaled_dot_product_attention` returns its output with the heads and sequence
dimensions swapped in memory ([.., L, H, d] strides for a [.., H, L, d] tensor), and its backward
hands out q/k/v/mask gradients in such layouts too. On a CPU both are contiguous, so a `.view`
that merges dimensions after the kernel passes every CPU test and fails on the first GPU run.
`sdpa_in_gpu_layout()` makes every SDPA call (window attention and Twins' GSA alike) return the
same values in the GPU's layout, forward and backward.
"""
from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F

from greenmim.models import window_plans
from greenmim.models.attention_kernel import is_aligned


def gpu_layout(x: torch.Tensor) -> torch.Tensor:
    """The same values, with the last-but-one and last-but-two dimensions swapped in memory."""
    return x.transpose(-3, -2).contiguous().transpose(-3, -2)


class _Relayout(torch.autograd.Function):
    """Identity whose output and input gradient both come in the GPU's layout."""

    @staticmethod
    def forward(ctx, x):
        return gpu_layout(x)

    @staticmethod
    def backward(ctx, grad):
        return gpu_layout(grad)


class MaskLog(list):
    """One entry per SDPA call with a mask: whether the kernel reads it in place ("aligned"; else
    PyTorch pads a copy on every call), its batch size and batch stride (0: one copy for all)."""


class CallLog(list):
    masks: MaskLog


@contextlib.contextmanager
def sdpa_in_gpu_layout(monkeypatch):
    """Window attention through SDPA (as on CUDA) with GPU output and gradient layouts. Yields the
    list of output shapes, with `.masks` (MaskLog) describing the masks passed."""
    real = F.scaled_dot_product_attention
    calls = CallLog()
    masks = calls.masks = MaskLog()

    def sdpa(q, k, v, attn_mask=None, **kwargs):
        if attn_mask is not None:  # what CUDA's memory-efficient kernel would do with this mask
            masks.append({"aligned": is_aligned(attn_mask), "batch": attn_mask.shape[0],
                          "batch_stride": attn_mask.stride(0)})
        q, k, v = (_Relayout.apply(t) for t in (q, k, v))
        if attn_mask is not None and attn_mask.dim() >= 3 and attn_mask.requires_grad:
            attn_mask = _Relayout.apply(attn_mask)
        out = _Relayout.apply(real(q, k, v, attn_mask=attn_mask, **kwargs))
        assert not out.is_contiguous() or out.shape[-3] == 1 or out.shape[-2] == 1
        calls.append(tuple(out.shape))
        return out

    monkeypatch.setattr(F, "scaled_dot_product_attention", sdpa)
    window_plans.set_attention_kernel("sdpa")
    try:
        yield calls
    finally:
        window_plans.set_attention_kernel("auto")
