"""Where the visible tokens of each stage sit, derived once per step from the unit mask.

With 32 px mask units and patch size 4, a unit covers 8x8 tokens at stage 1, 4x4 at stage 2,
2x2 at stage 3 and one token at stage 4, so every 2x2 patch-merging block is entirely visible or
entirely masked and the visible set of stage i+1 is exactly the merge of stage i's.
Visible tokens are kept in row-major order of their positions, per sample.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import List

import torch

from ..data.masking import upsample_mask

# Swin's PatchMerging concatenates x[0::2, 0::2], x[1::2, 0::2], x[0::2, 1::2], x[1::2, 1::2].
MERGE_OFFSETS = ((0, 0), (1, 0), (0, 1), (1, 1))


@dataclass
class StageLayout:
    """Visible tokens of one stage for P planned samples (P = 1 for a batch-shared mask)."""
    height: int
    width: int
    rows: torch.Tensor   # [P, N] long
    cols: torch.Tensor   # [P, N] long

    @property
    def flat_index(self) -> torch.Tensor:
        """[P*N] index into P stacked full grids of height*width tokens."""
        p = self.rows.shape[0]
        base = torch.arange(p).unsqueeze(1) * (self.height * self.width)
        return (base + self.rows * self.width + self.cols).flatten()


def stage_layouts(unit_mask: torch.Tensor, num_stages: int, tokens_per_unit: int) -> List[StageLayout]:
    """unit_mask: bool [P, Hu, Wu] (True = masked) on the CPU -> one StageLayout per stage."""
    layouts = []
    p, hu, wu = unit_mask.shape
    for i in range(num_stages):
        per_unit = tokens_per_unit >> i
        visible = upsample_mask(~unit_mask, per_unit)
        h, w = hu * per_unit, wu * per_unit
        flat = visible.flatten(1).nonzero()[:, 1].view(p, -1)  # nonzero is row-major per sample
        layouts.append(StageLayout(h, w, flat // w, flat % w))
    return layouts


def merge_index(src: StageLayout, dst: StageLayout) -> torch.Tensor:
    """[P*N_dst*4] positions in src's P*N_src token list feeding each dst token, Swin's channel order."""
    p, n_src = src.rows.shape
    position = torch.full((p, src.height * src.width), -1, dtype=torch.long)
    position.scatter_(1, src.rows * src.width + src.cols, torch.arange(n_src).expand(p, -1))
    parts = [position.gather(1, (2 * dst.rows + dr) * src.width + 2 * dst.cols + dc)
             for dr, dc in MERGE_OFFSETS]
    index = torch.stack(parts, dim=-1) + torch.arange(p).view(p, 1, 1) * n_src
    assert bool((index >= 0).all()), "mask units are not aligned with patch merging"
    return index.flatten()


def gather_tokens(x: torch.Tensor, index: torch.Tensor, plan_samples: int) -> torch.Tensor:
    """x [B, L, C], index [P*M] into P stacked samples -> [B, M, C] (P = 1 or B)."""
    b, length, c = x.shape
    flat = x.reshape(b // plan_samples, plan_samples * length, c)
    return flat.index_select(1, index).view(b, -1, c)
