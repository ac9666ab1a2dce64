"""Fault injection for the reliability tests: crashes and disk errors at chosen moments.

Inert unless the environment variable GREENMIM_FAULT is set. Its value is a comma-separated list
of `point:N` or `point:N@R`: the fault fires at the N-th time this process reaches `point`
(counting from 1 in each process, so a resumed run counts afresh), and with `@R` only in the
process of rank R. Points:

    save_mid_write      checkpoint writer: the temporary file is cut to half its size, then the
                        process SIGKILLs itself (a crash while writing)
    save_before_rename  checkpoint writer: the temporary file is complete and fsynced, then the
                        process SIGKILLs itself before the rename (a crash between write and rename)
    save_enospc         checkpoint writer: the write fails with OSError(ENOSPC) (disk full)
    kill_at_step        training loop, after each optimiser step: SIGKILL (a lost process)
    hang_at_step        training loop, after each optimiser step: sleeps forever (a stuck process)

Used by greenmim.file_io (every atomic write: pretraining checkpoints, encoder exports, weight
files, Detectron2 snapshots) and the training loop, e.g.

    GREENMIM_FAULT=save_before_rename:3 python pretrain/main_pretrain.py ...
    GREENMIM_FAULT=kill_at_step:3@1 torchrun --nproc_per_node 2 pretrain/main_pretrain.py ...
"""
from __future__ import annotations

import collections
import errno
import os
import signal
import time
from typing import Dict, Tuple

ENV = "GREENMIM_FAULT"
POINTS = ("save_mid_write", "save_before_rename", "save_enospc", "kill_at_step", "hang_at_step")

# hits per (GREENMIM_FAULT value, point): a new value starts counting afresh
_hits: Dict[Tuple[str, str], int] = collections.Counter()


def _parse(text: str) -> Dict[str, Tuple[int, int]]:
    """'a:3,b:2@1' -> {'a': (3, -1), 'b': (2, 1)}; rank -1 = every rank."""
    out = {}
    for item in filter(None, (s.strip() for s in text.split(","))):
        name, _, rest = item.partition(":")
        count, _, rank = rest.partition("@")
        if name not in POINTS or not count.isdigit() or (rank and not rank.isdigit()):
            raise ValueError(f"{ENV}={text!r}: '{item}' is not point:N[@rank] with point in {POINTS}")
        out[name] = (int(count), int(rank) if rank else -1)
    return out


def fires(point: str) -> bool:
    """Counts one hit of `point`; True when the configured fault is due now. Always False (and
    nearly free) when GREENMIM_FAULT is unset."""
    text = os.environ.get(ENV)
    if not text:
        return False
    spec = _parse(text).get(point)
    if spec is None:
        return False
    count, rank = spec
    if rank >= 0 and rank != int(os.environ.get("RANK", 0)):
        return False
    _hits[text, point] += 1
    return _hits[text, point] == count


def reset() -> None:
    """Forgets all hits (tests that reuse one GREENMIM_FAULT value within a process)."""
    _hits.clear()


def kill_self() -> None:
    """SIGKILL: no handlers, no atexit, no flushing — what an OOM killer or a node loss does."""
    os.kill(os.getpid(), signal.SIGKILL)
    time.sleep(60)  # pragma: no cover - the signal is delivered before this returns


def maybe_fail_step() -> None:
    """Training-loop faults (kill_at_step, hang_at_step)."""
    if fires("kill_at_step"):
        kill_self()
    if fires("hang_at_step"):
        while True:  # a stuck process: the others must time out, not wait forever
            time.sleep(3600)


def enospc(path: str) -> OSError:
    return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), path)
