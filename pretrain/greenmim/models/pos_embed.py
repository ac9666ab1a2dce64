"""Fixed 2-D sine-cosine position embeddings (MAE), computed in torch so any grid size works."""
from __future__ import annotations

from typing import Tuple

import torch


def sincos_1d(dim: int, positions: torch.Tensor) -> torch.Tensor:
    """[N] positions -> [N, dim] embedding: sin on the first half of the channels, cos on the second."""
    if dim % 2:
        raise ValueError(f"sin-cos embedding needs an even dimension, got {dim}")
    omega = torch.arange(dim // 2, dtype=torch.float64) / (dim / 2.0)
    omega = 1.0 / 10000 ** omega
    angles = positions.double().reshape(-1, 1) * omega.reshape(1, -1)
    return torch.cat([angles.sin(), angles.cos()], dim=1)


def sincos_2d(dim: int, grid: Tuple[int, int]) -> torch.Tensor:
    """[rows*cols, dim] embedding of a grid in row-major order.

    The first half of the channels encodes the column (x) and the second half the row (y), the
    layout of MAE's get_2d_sincos_pos_embed.
    """
    if dim % 4:
        raise ValueError(f"2-D sin-cos embedding needs a dimension divisible by 4, got {dim}")
    rows, cols = grid
    yy, xx = torch.meshgrid(torch.arange(rows), torch.arange(cols), indexing="ij")
    emb = torch.cat([sincos_1d(dim // 2, xx.flatten()), sincos_1d(dim // 2, yy.flatten())], dim=1)
    return emb.float()
