"""The grouping planner: valid packings whose cost equals a brute-force optimum."""
import math
import random

import pytest
import torch

from greenmim.models.grouping import attention_cost, pack_exact, pack_knapsack, plan_grouping
from greenmim.models.window_plans import GroupPlan


def set_partitions(items):
    if not items:
        yield []
        return
    first, rest = items[0], items[1:]
    for part in set_partitions(rest):
        for k in range(len(part)):
            yield part[:k] + [[first] + part[k]] + part[k + 1:]
        yield [[first]] + part


def brute_force_cost(sizes, max_capacity):
    items = [i for i, s in enumerate(sizes) if s > 0]
    total, largest = sum(sizes), max(sizes)
    capacities = set(range(largest, min(total, max(largest, max_capacity)) + 1)) | {total}
    best = math.inf
    for part in set_partitions(items):
        need = max(sum(sizes[i] for i in g) for g in part)
        for cap in capacities:
            if cap >= need:
                best = min(best, attention_cost(len(part), cap))
    return best


def check_valid(sizes, grouping):
    seen = sorted(i for g in grouping.groups for i in g)
    assert seen == [i for i, s in enumerate(sizes) if s > 0]  # every non-empty window exactly once
    for g in grouping.groups:
        assert sum(sizes[i] for i in g) <= grouping.capacity


@pytest.mark.parametrize("seed", range(40))
def test_planner_matches_brute_force(seed):
    rng = random.Random(seed)
    n = rng.randint(1, 7)
    window_area = rng.choice([9, 16, 49])
    sizes = [rng.randint(0, window_area) for _ in range(n)]
    if not any(sizes):
        sizes[0] = 1
    grouping = plan_grouping(sizes, window_area)
    check_valid(sizes, grouping)
    assert grouping.cost == brute_force_cost(sizes, window_area)


@pytest.mark.parametrize("seed", range(10))
def test_exact_and_knapsack_packings_are_valid(seed):
    rng = random.Random(100 + seed)
    sizes = [rng.randint(1, 20) for _ in range(rng.randint(1, 9))]
    cap = max(sizes) + rng.randint(0, 10)
    exact = pack_exact(sizes, cap)
    knap = pack_knapsack(sizes, cap)
    for groups in (exact, knap):
        assert sorted(i for g in groups for i in g) == list(range(len(sizes)))
        assert all(sum(sizes[i] for i in g) <= cap for g in groups)
    assert len(exact) <= len(knap)
    assert len(exact) >= math.ceil(sum(sizes) / cap)


def test_group_plan_slots_are_a_bijection():
    rows, cols = torch.meshgrid(torch.arange(20), torch.arange(20), indexing="ij")
    keep = torch.rand(20, 20, generator=torch.Generator().manual_seed(0)) < 0.3
    rows, cols = rows[keep].view(1, -1), cols[keep].view(1, -1)
    for shift in (0, 3):
        plan = GroupPlan.build(rows, cols, 20, 20, window=7, shift=shift)
        n = rows.numel()
        assert plan.scatter.numel() == n and len(set(plan.scatter.tolist())) == n
        assert torch.equal(plan.gather[plan.scatter], torch.arange(n))
        assert plan.num_groups * plan.capacity >= n
