"""Optimal grouping of windows for Group Window Attention.

Windows hold a varying number of visible tokens (their occupancy). Attention runs on groups of
windows padded to a common capacity g, so its cost is about n_groups * g * (g + SLOT_WEIGHT): score
entries plus per-slot work (see attention_cost). Choosing g and the
packing of windows into groups is a bin-packing problem; the paper fills one group at a time with a
0/1 knapsack (dynamic programming). We keep that, add first-fit-decreasing, certify optimality with
the ceil(total / g) lower bound, fall back to an exact subset DP on small instances, and search g
itself instead of fixing it to the largest occupancy.

Everything here is plain Python on small integer lists: it runs once per step on the host.
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

EXACT_MAX_WINDOWS = 8  # exact subset DP costs O(2^n * n) Python steps: ~2 ms at 8 windows
KNAPSACK_MAX_WINDOWS = 256  # beyond this (per-sample masks, big batches) plan by counts only


@dataclass(frozen=True)
class Grouping:
    """A packing: groups[k] lists window indices; every group holds <= capacity tokens."""
    capacity: int
    groups: List[List[int]]

    @property
    def cost(self) -> int:
        return attention_cost(len(self.groups), self.capacity)


# Work per group slot (gathering its q/k/v, scattering and merging its output, a softmax row)
# in units of one score entry. Measured on these CPUs (Swin-B stage 1, batch 8, fwd+bwd of the
# attention alone): 16 groups of 49 took 53.0 ms and 21 groups of 42 took 54.4 ms although the
# latter computes 3.6% fewer score entries, so slots are far from free; 49 (one window's area)
# keeps g^2 the leading term while preferring, among near-equal packings, the one with less padding.
SLOT_WEIGHT = 49


def attention_cost(num_groups: int, capacity: int) -> int:
    """Cost of padded group attention: score entries (g^2 per group) plus per-slot work."""
    return num_groups * capacity * (capacity + SLOT_WEIGHT)


def _knapsack_fill(sizes: Sequence[int], items: Sequence[int], capacity: int) -> List[int]:
    """The subset of `items` with the largest total size <= capacity (0/1 knapsack, value = weight).

    Subset-sum reachability is kept as Python-int bitsets, one per prefix, so the DP costs
    len(items) big-int shifts and the choice is recovered by walking the prefixes backwards.
    """
    limit = (1 << (capacity + 1)) - 1
    reach = [1]
    for i in items:
        reach.append((reach[-1] | (reach[-1] << sizes[i])) & limit)
    best = reach[-1].bit_length() - 1
    chosen, total = [], best
    for pos in range(len(items), 0, -1):
        if not (reach[pos - 1] >> total) & 1:  # total unreachable without this item: take it
            chosen.append(items[pos - 1])
            total -= sizes[items[pos - 1]]
    return chosen


def pack_knapsack(sizes: Sequence[int], capacity: int) -> List[List[int]]:
    """The paper's packing: repeatedly fill one group as full as possible."""
    remaining = sorted(range(len(sizes)), key=lambda i: -sizes[i])
    groups = []
    while remaining:
        chosen = _knapsack_fill(sizes, remaining, capacity)
        taken = set(chosen)
        groups.append(sorted(chosen))
        remaining = [i for i in remaining if i not in taken]
    return groups


def pack_first_fit_decreasing(sizes: Sequence[int], capacity: int) -> List[List[int]]:
    order = sorted(range(len(sizes)), key=lambda i: -sizes[i])
    groups: List[List[int]] = []
    free: List[int] = []
    for i in order:
        for k, room in enumerate(free):
            if sizes[i] <= room:
                groups[k].append(i)
                free[k] -= sizes[i]
                break
        else:
            groups.append([i])
            free.append(capacity - sizes[i])
    return [sorted(g) for g in groups]


def pack_exact(sizes: Sequence[int], capacity: int) -> List[List[int]]:
    """Minimum number of groups by DP over subsets: state = (groups used, fill of the open group)."""
    n = len(sizes)
    full = (1 << n) - 1
    best = [(math.inf, 0)] * (1 << n)
    parent = [(-1, -1)] * (1 << n)
    best[0] = (1, 0)
    for subset in range(1 << n):
        used, fill = best[subset]
        if used == math.inf:
            continue
        for i in range(n):
            bit = 1 << i
            if subset & bit:
                continue
            cand = (used, fill + sizes[i]) if fill + sizes[i] <= capacity else (used + 1, sizes[i])
            if cand < best[subset | bit]:
                best[subset | bit] = cand
                parent[subset | bit] = (subset, i)
    # Replay the item order of the optimum, opening a new group whenever the fill resets.
    order, subset = [], full
    while subset:
        subset, item = parent[subset]
        order.append(item)
    groups: List[List[int]] = []
    fill = capacity + 1
    for i in reversed(order):
        if fill + sizes[i] > capacity:
            groups.append([])
            fill = 0
        groups[-1].append(i)
        fill += sizes[i]
    return [sorted(g) for g in groups]


def pack_best_fit_counts(sizes: Sequence[int], capacity: int) -> List[List[int]]:
    """Best-fit decreasing on counts: windows of equal size and groups of equal free room are
    interchangeable, so whole batches of them move at once. Costs O(capacity^2) decisions plus one
    list append per window, which keeps per-sample masks on large batches (thousands of windows)
    cheap to plan."""
    by_size: List[List[int]] = [[] for _ in range(capacity + 1)]
    for i, s in enumerate(sizes):
        by_size[s].append(i)
    groups: List[List[int]] = []
    by_room: List[List[int]] = [[] for _ in range(capacity + 1)]  # group ids by free room
    for size in range(capacity, 0, -1):
        pending = by_size[size]
        while pending:
            room = next((r for r in range(size, capacity) if by_room[r]), None)
            if room is None:  # open groups: each takes as many windows of this size as fit
                per_group = capacity // size
                for start in range(0, len(pending), per_group):
                    chunk = pending[start:start + per_group]
                    by_room[capacity - size * len(chunk)].append(len(groups))
                    groups.append(list(chunk))
                break
            take = min(len(pending), len(by_room[room]))
            moved, by_room[room] = by_room[room][-take:], by_room[room][:-take]
            for gid, window in zip(moved, pending[:take]):
                groups[gid].append(window)
            by_room[room - size].extend(moved)
            pending = pending[take:]
    return [sorted(g) for g in groups]


def pack_min_groups(sizes: Sequence[int], capacity: int) -> List[List[int]]:
    """Fewest groups of total size <= capacity: heuristics certified by the lower bound, else exact."""
    if not sizes:
        return []
    lower_bound = math.ceil(sum(sizes) / capacity)
    if len(sizes) > KNAPSACK_MAX_WINDOWS:
        return pack_best_fit_counts(sizes, capacity)
    best = pack_first_fit_decreasing(sizes, capacity)
    if len(best) > lower_bound:
        knap = pack_knapsack(sizes, capacity)
        best = knap if len(knap) < len(best) else best
    if len(best) > lower_bound and len(sizes) <= EXACT_MAX_WINDOWS:
        best = pack_exact(sizes, capacity)
    return best


def plan_grouping(sizes: Sequence[int], max_capacity: Optional[int] = None) -> Grouping:
    return _plan_grouping_cached(tuple(sizes), max_capacity)


@functools.lru_cache(maxsize=4096)  # small stages see the same occupancy patterns again and again
def _plan_grouping_cached(sizes: Tuple[int, ...], max_capacity: Optional[int]) -> Grouping:
    """Group capacity and packing with the least attention cost.

    Args:
        sizes: visible-token count of each window (zeros are ignored: empty windows get no group).
        max_capacity: largest group size tried besides "everything in one group" (usually the
            window area ws*ws; a group never needs more than that to hold any window).
    Returns:
        Grouping whose groups index into `sizes`.
    """
    items = [i for i, s in enumerate(sizes) if s > 0]
    if not items:
        return Grouping(capacity=0, groups=[])
    local = [sizes[i] for i in items]
    total, largest = sum(local), max(local)
    top = min(total, max(largest, max_capacity or largest))
    # One group holding every window is plain masked attention over all visible tokens.
    best = Grouping(capacity=total, groups=[list(range(len(local)))])
    for capacity in range(largest, top + 1):
        # Even perfect packing costs ceil(total / g) groups, and any g' >= g at least
        # total * (g' + SLOT_WEIGHT), which grows with g: stop when that loses.
        if attention_cost(math.ceil(total / capacity), capacity) >= best.cost:
            if total * (capacity + SLOT_WEIGHT) >= best.cost:
                break
            continue
        groups = pack_min_groups(local, capacity)
        cand = Grouping(capacity=capacity, groups=groups)
        if cand.cost < best.cost:
            best = cand
    return Grouping(capacity=best.capacity, groups=[[items[j] for j in g] for g in best.groups])
