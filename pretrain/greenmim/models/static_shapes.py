"""Static shapes for the sparse path: every tensor of a step has the same shape for every mask.

The dynamic planner picks the number of groups G and their capacity g per mask, so shapes change
from step to step and neither CUDA graphs nor a compiled graph can be reused. With static shapes
each stage and block type (regular / shifted windows) gets one (G, g) for a given setting
(windows, unit grid, visible units, plan samples P), and every mask's windows are packed into that
many groups of that capacity, the unused ones left as padding.

Two capacity tables per setting, both fixed before any mask is seen:
- `tight`: measured on CALIBRATION_MASKS seeded masks: per stage and block type, the (G, g) of
  least attention cost that holds every calibration mask. A fresh mask fits with probability
  about 1 - 1/(masks + 1) per table entry (measured: see the benchmarks' padding table).
- `bound`: g = the window area w*w (>= any window's occupancy) and G = floor(2T/g) + 1 for T
  visible tokens. Every packing the planner makes is an any-fit packing (a window only opens a
  group when no open group has room), in which at most one group is at most half full, so no mask
  ever needs more groups. A mask that overflows `tight` takes `bound` for the whole step: still
  static, so a run sees at most two shape signatures, and the plans say which (`static_fallback`).
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Callable, List, Optional, Tuple, TypeVar

import torch

from .grouping import attention_cost, pack_min_groups
from .token_layout import stage_layouts
from .window_plans import PlanOverflow, window_occupancy

Capacity = Tuple[int, int]                    # (groups G, capacity g)
StageCapacities = Tuple[Capacity, Capacity]   # (regular windows, shifted windows)
CALIBRATION_MASKS = 256                       # a quarter of that for per-sample masks


@dataclass(frozen=True)
class StaticShapes:
    tight: Tuple[StageCapacities, ...]
    bound: Tuple[StageCapacities, ...]

    def padding(self, tokens: Tuple[int, ...]) -> List[Tuple[float, float]]:
        """Padding slots / real tokens per stage of the tight table, (regular, shifted)."""
        return [tuple((g_n * g_c - t) / t for g_n, g_c in stage) for stage, t in zip(self.tight, tokens)]


T = TypeVar("T")


def with_static_fallback(build: Callable[[Optional[Tuple[StageCapacities, ...]]], T],
                         shapes: Optional[StaticShapes]) -> Tuple[T, bool]:
    """build(capacities) with the tight table, or with the bound one when this mask overflows the
    tight one (second value True); build(None), dynamic shapes, without static shapes."""
    if shapes is None:
        return build(None), False
    try:
        return build(shapes.tight), False
    except PlanOverflow:
        return build(shapes.bound), True


def calibration_masks(grid: Tuple[int, int], num_visible: int, plan_samples: int, count: int):
    """`count` seeded unit masks bool [P, Hu, Wu] with `num_visible` visible units per sample."""
    gen = torch.Generator().manual_seed(20221)
    units = grid[0] * grid[1]
    for _ in range(count):
        keep = torch.rand(plan_samples, units, generator=gen).argsort(dim=1)[:, :num_visible]
        mask = torch.ones(plan_samples, units, dtype=torch.bool)
        mask.scatter_(1, keep, False)
        yield mask.view(plan_samples, *grid)


def _best_capacity(all_sizes: List[List[int]], window: int, tokens: int, margin: bool) -> Capacity:
    """(G, g) of least attention cost holding every list of window sizes (one list per mask)."""
    largest = max(max(s) for s in all_sizes)
    best, best_cost = None, math.inf
    # Capacities above the window area let a group hold a full window plus a partial one.
    for g in range(largest, min(tokens, 2 * max(largest, window * window)) + 1):
        if attention_cost(math.ceil(tokens / g), g) >= best_cost:
            if tokens * (g + 49) >= best_cost:
                break
            continue
        counts = [len(pack_min_groups([x for x in sizes if x], g)) for sizes in all_sizes]
        # With per-sample masks (P > 1) the count varies by a few groups around a large mean:
        # a 1% margin keeps fresh masks inside at a fraction of a percent of padding.
        groups = min(max(counts) + (math.ceil(0.01 * max(counts)) if margin else 0), len(all_sizes[0]))
        if attention_cost(groups, g) < best_cost:
            best, best_cost = (groups, g), attention_cost(groups, g)
    return best


def bound_capacity(window: int, tokens: int, tokens_per_sample: int, windows: int) -> Capacity:
    """(G, g) that every mask fits (see the module docstring); `windows`: how many windows the
    P samples have (no packing uses more groups than non-empty windows)."""
    g = min(window * window, tokens_per_sample)
    return (min(2 * tokens // g + 1, windows), g)


@functools.lru_cache(maxsize=32)
def static_shapes_for(windows: Tuple[int, ...], shifts: Tuple[int, ...], tokens_per_unit: int,
                      grid: Tuple[int, int], num_visible: int, plan_samples: int) -> StaticShapes:
    """The capacity tables of one setting; deterministic, so every process and DataLoader worker
    computes the same ones (a few seconds once per process)."""
    count = CALIBRATION_MASKS if plan_samples == 1 else CALIBRATION_MASKS // 4
    per_stage = [[[] for _ in range(2)] for _ in windows]   # [stage][shifted] -> list of size lists
    layouts, margin = None, plan_samples > 1
    for mask in calibration_masks(grid, num_visible, plan_samples, count):
        layouts = stage_layouts(mask, len(windows), tokens_per_unit)
        for i, (window, shift, lay) in enumerate(zip(windows, shifts, layouts)):
            for k, s in enumerate((0, shift) if shift else (0,)):
                sizes = window_occupancy(lay.rows, lay.cols, lay.height, lay.width, window, s)[2]
                per_stage[i][k].append(sizes.tolist())
    tight, bound = [], []
    for i, window in enumerate(windows):
        tokens = layouts[i].rows.numel()
        per_sample = layouts[i].rows.shape[1]
        entries = []
        for k in (0, 1) if shifts[i] else (0,):
            sizes = per_stage[i][k]
            entries.append((_best_capacity(sizes, window, tokens, margin),
                            bound_capacity(window, tokens, per_sample, len(sizes[0]))))
        if len(entries) == 1:
            entries.append(entries[0])
        tight.append((entries[0][0], entries[1][0]))
        bound.append((entries[0][1], entries[1][1]))
    return StaticShapes(tuple(tight), tuple(bound))
