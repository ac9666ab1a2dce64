"""Convolutions on the visible tokens of a stage: two interchangeable backends, spconv and PyTorch.

Green Twins-SVT runs three kinds of convolution on sparse tokens (docs/design.md, "Twins-SVT"):

- strided convs with kernel = stride (patch embedding between stages, k = 2; GSA's key/value
  sub-sampling, k = sr). The mask unit is aligned with every such kernel, so each output site's
  k x k inputs are either all visible or all masked: the output sites are exactly the visible
  sites of the coarser grid, and the conv is a linear map of the gathered k x k block.
- the depthwise 3x3 conv of the position encoding generator (PEG), "same" padding. A masked
  neighbour counts as zero (there is nothing there), as the zero padding at the image border does.

Backends (`backend` argument; `resolve_backend` picks one for "auto"):

- "torch": strided convs as gather + one linear layer with the conv's own weight; the PEG as
  scatter onto a zero canvas, PyTorch's depthwise conv, gather back. Pure PyTorch, any device,
  forward and backward.
- "spconv": spconv.pytorch `SparseConvTensor` + `SparseConv2d` (strided convs) and `SubMConv2d`
  (PEG). spconv has no grouped convolution, so the depthwise PEG runs as a submanifold conv with a
  block-diagonal [C, 3, 3, C] weight: exact, but C times the multiply-adds of the depthwise conv.

"auto" picks "torch" on the CPU: gather + linear measured faster there than spconv's native CPU
gather-GEMM-scatter (README, Twins section), and it needs no workaround for spconv's CPU backward.
On CUDA it picks "spconv" for the strided convs when the installed spconv has CUDA kernels
(implicit GEMM fuses the gather), else "torch" -- not yet measured on a GPU; if the PyTorch path
wins there too, change `resolve_backend`. The PEG always uses the canvas under "auto": the
block-diagonal weight would multiply its cost by C.

spconv 2.3.8's backward asks for `torch.cuda.current_stream()` even for CPU tensors and fails on
a machine without a GPU; `_install_cpu_stream_guard` makes spconv use stream 0 (ignored by its
CPU kernels) when CUDA is absent, so an explicitly chosen "spconv" backend also trains on a CPU.

Parameters always live in ordinary `nn.Conv2d` modules ([out, in, kh, kw], the Twins/timm layout),
so checkpoints do not depend on the backend; spconv receives a [out, kh, kw, in] view.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
import torch.nn.functional as F
import torch.utils.checkpoint
from torch import nn

from .token_layout import StageLayout, gather_tokens

SPARSE_CONV_BACKENDS = ("auto", "spconv", "torch")


@functools.lru_cache(maxsize=1)
def _spconv():
    """spconv.pytorch, or None when it is not installed."""
    try:
        import spconv.pytorch as spconv_pytorch
    except ImportError:
        return None
    return spconv_pytorch


def spconv_available() -> bool:
    return _spconv() is not None


@functools.lru_cache(maxsize=1)
def spconv_has_cuda() -> bool:
    """True when the installed spconv was built with CUDA kernels (spconv-cuXXX, not plain spconv)."""
    if _spconv() is None or not torch.cuda.is_available():
        return False
    try:
        from spconv.core_cc.csrc.sparse.all import SpconvOps
        return not SpconvOps.is_cpu_only_build()
    except (ImportError, AttributeError):
        return False


def resolve_backend(backend: str, device: torch.device) -> str:
    """"spconv" or "torch" for the strided convs on `device` (see the module docstring)."""
    if backend not in SPARSE_CONV_BACKENDS:
        raise ValueError(f"sparse conv backend {backend!r} is not one of {SPARSE_CONV_BACKENDS}; "
                         "use 'auto' unless you are comparing backends")
    if backend == "auto":
        # A captured step (torch.compile, CUDA graphs) takes the PyTorch path: spconv builds its
        # rule tables with host-side logic that neither traces nor records.
        captured = torch.compiler.is_compiling() or (device.type == "cuda" and torch.cuda.is_current_stream_capturing())
        return "spconv" if device.type == "cuda" and spconv_has_cuda() and not captured else "torch"
    if backend == "spconv" and not spconv_available():
        raise ValueError("sparse conv backend 'spconv' needs the spconv package "
                         "(pip install spconv, or spconv-cu1xx on GPU machines); use 'torch' or 'auto'")
    return backend


@functools.lru_cache(maxsize=1)
def _install_cpu_stream_guard() -> None:
    """Lets spconv's backward run without a GPU (see the module docstring). Only patched when CUDA
    is unavailable, where the original function can only raise."""
    if torch.cuda.is_available():
        return
    import spconv.pytorch.ops as spconv_ops
    spconv_ops.get_current_stream = lambda: 0


@functools.lru_cache(maxsize=64)
def _spconv_layer(in_channels: int, out_channels: int, kernel: int, subm: bool):
    """A parameter-free use of spconv's conv layer: its own weight is never read (we pass ours), so
    the layer is cached outside the module tree and never appears in a state dict."""
    sp = _spconv()
    if subm:
        return sp.SubMConv2d(in_channels, out_channels, kernel, padding=kernel // 2, bias=False)
    return sp.SparseConv2d(in_channels, out_channels, kernel, stride=kernel, bias=False)


# ---- sites: where the visible tokens of a stage are ------------------------------------------


@dataclass
class SparseSites:
    """The visible tokens of one grid for P planned samples (P = 1: mask shared by the batch).

    flat_index: long [P*N] into P stacked height*width grids (row-major), for canvas scatter/gather.
    coords: int32 [P*N, 3] (sample, row, col), spconv's index layout.
    """
    height: int
    width: int
    plan_samples: int
    num_tokens: int
    flat_index: torch.Tensor
    coords: torch.Tensor

    @classmethod
    def from_layout(cls, layout: StageLayout, device=None) -> "SparseSites":
        p, n = layout.rows.shape
        sample = torch.arange(p).unsqueeze(1).expand(p, n)
        coords = torch.stack([sample, layout.rows, layout.cols], dim=-1).reshape(-1, 3).to(torch.int32)
        dev = device if device is not None else torch.device("cpu")
        return cls(layout.height, layout.width, p, n,
                   layout.flat_index.to(dev, non_blocking=True), coords.to(dev, non_blocking=True))

    def batch_coords(self, batch: int) -> torch.Tensor:
        """int32 [B*N, 3] for a batch of `batch` samples laid out as x.reshape(B*N, C)."""
        reps = batch // self.plan_samples
        coords = self.coords.view(1, -1, 3).repeat(reps, 1, 1)
        offset = torch.arange(reps, device=coords.device, dtype=coords.dtype) * self.plan_samples
        coords[..., 0] += offset.view(reps, 1)
        return coords.view(-1, 3)


def block_index(src: StageLayout, dst: StageLayout, kernel: int) -> torch.Tensor:
    """[P*N_dst*kernel^2] position in src's P*N_src token list of each input of a kernel = stride
    conv from src's grid to dst's, per dst token in (kh, kw) row-major order (the order of a
    Conv2d weight flattened as [out, kh, kw, in])."""
    p, n_src = src.rows.shape
    if src.height != dst.height * kernel or src.width != dst.width * kernel:
        raise ValueError(f"grid {src.height}x{src.width} is not {kernel}x the grid {dst.height}x{dst.width}")
    position = torch.full((p, src.height * src.width), -1, dtype=torch.long)
    position.scatter_(1, src.rows * src.width + src.cols, torch.arange(n_src).expand(p, -1))
    dr, dc = torch.meshgrid(torch.arange(kernel), torch.arange(kernel), indexing="ij")
    rows = kernel * dst.rows.unsqueeze(-1) + dr.flatten()                     # [P, N_dst, k*k]
    cols = kernel * dst.cols.unsqueeze(-1) + dc.flatten()
    index = position.gather(1, (rows * src.width + cols).flatten(1)).view(p, -1)
    if bool((index < 0).any()):
        raise ValueError(f"a {kernel}x{kernel} block mixes visible and masked tokens: the mask unit "
                         "is not aligned with this convolution")
    return (index + torch.arange(p).unsqueeze(1) * n_src).flatten()


@dataclass
class StridedConvPlan:
    """A kernel = stride conv from `src` sites to `dst` sites, planned once per step."""
    kernel: int
    src: SparseSites
    dst: SparseSites
    index: torch.Tensor   # block_index(...) on the device

    @classmethod
    def build(cls, src: StageLayout, dst: StageLayout, kernel: int, device=None) -> "StridedConvPlan":
        dev = device if device is not None else torch.device("cpu")
        return cls(kernel, SparseSites.from_layout(src, dev), SparseSites.from_layout(dst, dev),
                   block_index(src, dst, kernel).to(dev, non_blocking=True))


# ---- the operations ---------------------------------------------------------------------------


def strided_conv(x: torch.Tensor, conv: nn.Conv2d, plan: StridedConvPlan,
                 backend: str = "auto") -> torch.Tensor:
    """conv (kernel = stride) on visible tokens: x [B, N_src, C_in] -> [B, N_dst, C_out], both in
    row-major order of their sites."""
    if resolve_backend(backend, x.device) == "spconv":
        return _strided_conv_spconv(x, conv, plan)
    b, _, c = x.shape
    k = plan.kernel
    blocks = gather_tokens(x, plan.index, plan.src.plan_samples).view(b, -1, k * k * c)
    return F.linear(blocks, conv.weight.permute(0, 2, 3, 1).flatten(1), conv.bias)


def depthwise_conv3x3(x: torch.Tensor, conv: nn.Conv2d, sites: SparseSites,
                      backend: str = "auto") -> torch.Tensor:
    """Depthwise 3x3 conv (padding 1) of visible tokens with masked neighbours as zeros:
    x [B, N, C] -> [B, N, C]. "auto" uses the zero canvas (see the module docstring)."""
    resolve_backend(backend, x.device)  # validates the name, and that spconv is there if asked for
    if backend == "spconv":  # only when asked for explicitly: C times the multiply-adds
        return _depthwise_spconv(x, conv, sites)
    b, n, c = x.shape
    p, h, w = sites.plan_samples, sites.height, sites.width
    flat = x.reshape(b // p, p * n, c)
    canvas = flat.new_zeros(b // p, p * h * w, c).index_copy(1, sites.flat_index, flat)
    canvas = canvas.view(b, h, w, c).permute(0, 3, 1, 2)
    out = F.conv2d(canvas, conv.weight, conv.bias, padding=1, groups=c)
    out = out.permute(0, 2, 3, 1).reshape(b // p, p * h * w, c)
    return out.index_select(1, sites.flat_index).view(b, n, c)


def _sparse_tensor(x: torch.Tensor, sites: SparseSites):
    b, n, c = x.shape
    _install_cpu_stream_guard()
    return _spconv().SparseConvTensor(x.reshape(b * n, c).contiguous(), sites.batch_coords(b),
                                      [sites.height, sites.width], b)


def _strided_conv_spconv(x: torch.Tensor, conv: nn.Conv2d, plan: StridedConvPlan) -> torch.Tensor:
    b = x.shape[0]
    layer = _spconv_layer(conv.in_channels, conv.out_channels, plan.kernel, subm=False)
    # spconv wants [out, kh, kw, in]; the bias is added here because spconv's CPU path refuses a
    # bias at inference time.
    out = layer._conv_forward(torch.is_grad_enabled(), _sparse_tensor(x, plan.src),
                              conv.weight.permute(0, 2, 3, 1).contiguous(), None)
    # spconv lists output sites in its own order: sort them row-major per sample, our layout.
    ids = out.indices.long()
    key = (ids[:, 0] * plan.dst.height + ids[:, 1]) * plan.dst.width + ids[:, 2]
    features = out.features.index_select(0, torch.argsort(key))
    if features.shape[0] != b * plan.dst.num_tokens:
        raise RuntimeError(f"spconv produced {features.shape[0]} sites, expected {b * plan.dst.num_tokens}")
    features = features.view(b, plan.dst.num_tokens, -1)
    return features + conv.bias if conv.bias is not None else features


def _depthwise_spconv(x: torch.Tensor, conv: nn.Conv2d, sites: SparseSites) -> torch.Tensor:
    b, n, c = x.shape
    layer = _spconv_layer(c, c, 3, subm=True)
    # spconv has no groups: depthwise = full conv with weight[o, i, j, o'] = w[o, 0, i, j] if o == o'.
    weight = torch.diag_embed(conv.weight[:, 0].permute(1, 2, 0)).permute(2, 0, 1, 3).contiguous()
    out = layer._conv_forward(torch.is_grad_enabled(), _sparse_tensor(x, sites), weight, None)
    features = out.features.view(b, n, c)  # submanifold: output sites = input sites, same order
    return features + conv.bias if conv.bias is not None else features


def recompute_in_backward(fn, x: torch.Tensor, *args):
    """fn(x, *args) that keeps only x for backward. The gathered k x k blocks and the zero canvas
    built here are copies of the tokens that the dense path does not make; saved for backward they
    would cost memory, recomputing them costs one gather and a small GEMM or a depthwise conv
    (twins_svt_base, 224 px, 0.75, batch 8: ~420 -> ~365 MB green step memory, time unchanged)."""
    if torch.is_grad_enabled() and x.requires_grad:
        # fn draws no random numbers, so no RNG state is saved (reading the CUDA RNG state is
        # not allowed while a CUDA graph records).
        return torch.utils.checkpoint.checkpoint(fn, x, *args, use_reentrant=False, preserve_rng_state=False)
    return fn(x, *args)


def embed_visible_patches(images: torch.Tensor, conv: nn.Conv2d, index: torch.Tensor,
                          plan_samples: int) -> torch.Tensor:
    """First patch embedding on visible patches only: the stride-p conv is a linear map of each
    p x p patch of the (dense) image. images [B, C, H, W], index [P*N] into the P stacked patch
    grids -> [B, N, C_out]."""
    b, c, h, w = images.shape
    ps = conv.kernel_size[0]
    patches = images.view(b, c, h // ps, ps, w // ps, ps).permute(0, 2, 4, 1, 3, 5)
    patches = gather_tokens(patches.reshape(b, (h // ps) * (w // ps), c * ps * ps), index, plan_samples)
    return F.linear(patches, conv.weight.flatten(1), conv.bias)
