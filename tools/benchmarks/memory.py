"""Peak memory that one training step adds, measured the same way by every benchmark.

The step runs twice: the first brings model, gradients, optimiser state, kernels and inputs into
the baseline; the second is measured. CUDA: max_memory_allocated minus memory_allocated before
the step. CPU: peak RSS minus RSS before the step, in a process of its own (run_in_subprocess),
with glibc told to mmap large blocks and to return the warm-up's freed memory, so reused heap
does not make a step look free.

A captured step (CUDA graphs, torch.compile's reduce-overhead) allocates its memory once, while it
is recorded, and never again: measured after a warm-up it looks free. `first_steps_peak_mb`
measures every mode from before its first step instead, and subtracts the optimiser state those
steps create, so an eager and a captured step of the same model give the same figure.
"""
from __future__ import annotations

import ctypes
import os
import resource
import subprocess
from typing import Callable, List

import torch


def _status_mb(field: str) -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024.0
    raise KeyError(field)


def _reset_peak_rss() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # resets VmHWM (peak RSS) to the current RSS
        return True
    except OSError:
        return False


def step_peak_mb(run_step: Callable[[], None], device: torch.device) -> float:
    """MB that the second call of run_step needs on top of what the first left resident."""
    run_step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        run_step()
        torch.cuda.synchronize(device)
        return (torch.cuda.max_memory_allocated(device) - base) / 2**20
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except OSError:  # not glibc
        pass
    if _reset_peak_rss():
        base = _status_mb("VmRSS")
        run_step()
        return _status_mb("VmHWM") - base
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # never goes down: an upper bound
    run_step()
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0 - base


def optimizer_state_bytes(optimizer: torch.optim.Optimizer) -> int:
    """Bytes of the optimiser's per-parameter state tensors (AdamW's moments, step counters)."""
    return sum(t.numel() * t.element_size() for state in optimizer.state.values()
               for t in state.values() if isinstance(t, torch.Tensor))


def first_steps_peak_mb(run_steps: Callable[[], None], optimizer: torch.optim.Optimizer,
                        device: torch.device, stats=torch.cuda) -> float:
    """MB that training steps need on top of the resident model, measured over the first steps
    of a mode (warm-up, compilation and graph capture included): peak allocated minus what was
    allocated before them, minus the optimiser state they created. `stats`: torch.cuda, or an
    object with its memory-statistics functions (tests)."""
    stats.synchronize(device)
    stats.reset_peak_memory_stats(device)
    base = stats.memory_allocated(device)
    run_steps()
    stats.synchronize(device)
    return (stats.max_memory_allocated(device) - base - optimizer_state_bytes(optimizer)) / 2**20


def run_in_subprocess(cmd: List[str]) -> float:
    """Runs a benchmark's memory child (which prints MB on its last line) in a fresh process."""
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="131072")  # large tensors go back when freed
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, env=env).stdout
    return float(out.strip().splitlines()[-1])
