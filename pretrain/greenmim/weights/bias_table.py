"""Resizing Swin's relative position bias tables to another attention window."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .errors import CheckpointError


def window_of(table_len: int) -> int:
    """Window size w of a bias table with table_len = (2w-1)^2 rows."""
    side = int(round(math.sqrt(table_len)))
    if side * side != table_len or side % 2 == 0:
        raise CheckpointError(f"relative position bias table with {table_len} rows is not (2w-1)^2")
    return (side + 1) // 2


def resize_relative_position_bias_table(table: torch.Tensor, window_size: int) -> torch.Tensor:
    """Resizes a Swin bias table [(2w-1)^2, heads] to window_size by bicubic interpolation.

    The table is a (2w-1) x (2w-1) grid of relative offsets (-w+1..w-1 on each axis) per head.
    align_corners=True maps the grid's end points and its centre (offset 0,0) onto the new grid's,
    so the bias of a token to itself is kept exactly and the offsets scale uniformly.
    """
    old_side = 2 * window_of(table.shape[0]) - 1
    new_side = 2 * window_size - 1
    if old_side == new_side:
        return table
    heads = table.shape[1]
    grid = table.float().T.reshape(1, heads, old_side, old_side)
    grid = F.interpolate(grid, size=(new_side, new_side), mode="bicubic", align_corners=True)
    return grid.reshape(heads, new_side * new_side).T.contiguous().to(table.dtype)
