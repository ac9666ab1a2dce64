"""Side-by-side timing: variants run alternately in one process, medians reported.

On a shared or noisy machine a slow spell hits neighbouring steps of every variant alike, so the
ratio of medians stays put where absolute seconds drift. Every benchmark here times this way.
"""
from __future__ import annotations

import statistics
import time
from typing import Callable, Dict, List, Optional

import torch


def sync(device: torch.device) -> None:
    """Waits for queued device work, so that wall-clock time covers it (no-op on CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def interleave(steps: Dict[str, Callable[[], Optional[dict]]], iters: int, warmup: int,
               device: torch.device) -> Dict[str, Dict[str, float]]:
    """Runs every step once per round, `warmup` untimed rounds then `iters` timed ones.

    A step may return a dict of its own sub-timings (seconds), e.g. forward+backward inside a
    whole training step; they get medians too. Returns {variant: {"s": median seconds,
    "s_all": [...], <sub-timing>: median, ...}}.
    """
    samples: Dict[str, Dict[str, List[float]]] = {name: {} for name in steps}
    for it in range(warmup + iters):
        for name, fn in steps.items():
            sync(device)
            t0 = time.perf_counter()
            extra = fn() or {}
            sync(device)
            if it >= warmup:
                samples[name].setdefault("s", []).append(time.perf_counter() - t0)
                for key, value in extra.items():
                    samples[name].setdefault(key, []).append(value)
    out = {}
    for name, series in samples.items():
        out[name] = {key: statistics.median(values) for key, values in series.items()}
        out[name]["s_all"] = series.get("s", [])
    return out
