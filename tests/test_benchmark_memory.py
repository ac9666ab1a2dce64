"""The benchmarks' step memory: a captured step (memory allocated once, while recorded) and an
eager step (allocated and freed every step) of the same size measure the same."""
import os
import sys

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tools", "benchmarks"))
from memory import first_steps_peak_mb  # noqa: E402


class FakeAllocator:
    """torch.cuda's memory statistics over explicit allocations."""

    def __init__(self):
        self.allocated, self.peak = 0, 0

    def alloc(self, n):
        self.allocated += n
        self.peak = max(self.peak, self.allocated)

    def free(self, n):
        self.allocated -= n

    def synchronize(self, device=None):
        pass

    def reset_peak_memory_stats(self, device=None):
        self.peak = self.allocated

    def memory_allocated(self, device=None):
        return self.allocated

    def max_memory_allocated(self, device=None):
        return self.peak


MB = 2 ** 20
ACTIVATIONS, STATE = 300 * MB, 8 * 4  # a step's activations + gradients; AdamW state of one parameter


def make_step(mem, captured: bool, opt):
    recorded = []

    def step():
        if not opt.state:  # the first optimiser step creates the state (resident from then on)
            opt.state[opt.param_groups[0]["params"][0]] = {"exp_avg": torch.zeros(4), "exp_avg_sq": torch.zeros(4)}
            mem.alloc(STATE)
        if captured:
            if not recorded:  # recording allocates the graph's pool, which stays
                mem.alloc(ACTIVATIONS)
                recorded.append(True)
        else:
            mem.alloc(ACTIVATIONS)
            mem.free(ACTIVATIONS)
    return step


def test_captured_step_measures_as_the_eager_step():
    results = {}
    for captured in (False, True):
        mem = FakeAllocator()
        mem.alloc(500 * MB)  # the resident model
        opt = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(4))])
        step = make_step(mem, captured, opt)

        def warm():
            for _ in range(3):
                step()
        results[captured] = first_steps_peak_mb(warm, opt, "cuda", stats=mem)
        # measured after the warm-up, as before, the captured step looked free
        mem.reset_peak_memory_stats()
        base = mem.memory_allocated()
        step()
        results[(captured, "after warm-up")] = (mem.max_memory_allocated() - base) / MB
    assert results[False] == results[True] == 300
    assert results[(True, "after warm-up")] == 0 and results[(False, "after warm-up")] == 300
