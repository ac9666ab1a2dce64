"""Files that survive a crash and files that cannot run code: the ground floor of greenmim.

    atomic_write / atomic_save   a file is replaced whole or not at all (temporary file, fsync,
                                 rename, folder fsync); a failed write is one CheckpointWriteError
    load                         torch.load(weights_only=True): pickled code is refused, every
                                 failure is one CheckpointLoadError line

Weights, the engine and greenmim_det all write and read through this module, so it imports
nothing of greenmim but the error base class and the fault hook (which are below it). The
GREENMIM_FAULT hook (greenmim.faults) injects crashes into atomic_write in tests; it is inert
when unset.
"""
from __future__ import annotations

import os
import re
from typing import Any, BinaryIO, Callable, Dict, Sequence

import torch

from . import faults
from .config import UserError


class CheckpointWriteError(UserError):
    """A checkpoint could not be written (disk full, no permission); the previous one is intact.
    `reason` is the OS's words (e.g. "No space left on device"), for callers that rephrase."""

    def __init__(self, message: str, reason: str = ""):
        super().__init__(message)
        self.reason = reason


class CheckpointLoadError(UserError):
    """A file that cannot be loaded as a checkpoint; the message is one line with the fix."""


def _tmp_prefix(path: str) -> str:
    return os.path.join(os.path.dirname(os.path.abspath(path)), f".{os.path.basename(path)}.tmp")


def remove_stale_temporaries(path: str) -> int:
    """Deletes temporary files that a crashed writer of `path` left behind; returns how many.
    Only one process (rank 0) writes a given path, so any such file is from a dead process."""
    prefix = _tmp_prefix(path)
    folder = os.path.dirname(prefix)
    n = 0
    if os.path.isdir(folder):
        for name in os.listdir(folder):
            full = os.path.join(folder, name)
            if full.startswith(prefix) and not full.endswith(f".tmp{os.getpid()}"):
                try:
                    os.remove(full)
                    n += 1
                except OSError:
                    pass
    return n


def atomic_write(path: str, write: Callable[[BinaryIO], None], inject_faults: bool = True) -> None:
    """Writes a file so that `path` always holds either the previous or the new complete file.

    `write(f)` fills a temporary file in the same folder; it is flushed and fsynced, then renamed
    over `path` (os.replace is atomic on POSIX), and the folder is fsynced so the rename survives
    a power loss. A crash at any moment leaves the previous file untouched; a failed write
    (disk full, ...) removes the temporary file and raises CheckpointWriteError, one line.
    Fault injection (greenmim.faults): save_mid_write, save_before_rename, save_enospc
    count the writes with inject_faults=True (checkpoints, not small side files).
    """
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    remove_stale_temporaries(path)
    tmp = f"{_tmp_prefix(path)}{os.getpid()}"
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            if inject_faults and faults.fires("save_enospc"):
                raise faults.enospc(tmp)
            if inject_faults and faults.fires("save_mid_write"):
                f.truncate(f.tell() // 2)
                os.fsync(f.fileno())
                faults.kill_self()
            os.fsync(f.fileno())
        if inject_faults and faults.fires("save_before_rename"):
            faults.kill_self()
        os.replace(tmp, path)
        _fsync_dir(folder)
    except OSError as e:
        kept = (f"the previous {os.path.basename(path)} is intact" if os.path.exists(path)
                else "no earlier file of that name exists")
        raise CheckpointWriteError(f"cannot write {path}: {e.strerror or e}; {kept}",
                                   reason=str(e.strerror or e)) from None
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def _fsync_dir(folder: str) -> None:
    """Makes a rename in `folder` durable (the directory entry, not just the file's data)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # pragma: no cover - e.g. platforms without directory fds
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover - some file systems refuse fsync on folders
        pass
    finally:
        os.close(fd)


def atomic_save(obj: Any, path: str) -> None:
    """torch.save through atomic_write: a reader (or a crash) never sees a half-written file, and
    the previous checkpoint stays until the new one is whole."""
    atomic_write(path, lambda f: torch.save(obj, f))


def load(path: str, map_location: Any = "cpu", safe_globals: Sequence[Any] = ()) -> Dict[str, Any]:
    """torch.load(weights_only=True), with one-line CheckpointLoadError for every failure.

    Nothing in a file is executed: weights_only refuses any pickled class or function that is not
    plain data (a malicious __reduce__ included). `safe_globals` allows extra plain-data types
    (greenmim_det allows argparse.Namespace and numpy arrays).
    """
    if not os.path.isfile(path):
        raise CheckpointLoadError(f"checkpoint {path} does not exist (or is not a file)")
    try:
        with torch.serialization.safe_globals(list(safe_globals)):
            return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # noqa: BLE001 - every failure becomes one clear line
        text = str(e)
        unsafe = _unsafe_globals(path, text, safe_globals)
        if unsafe:
            raise CheckpointLoadError(
                f"{path} holds pickled code or objects that torch.load(weights_only=True) refuses "
                f"({', '.join(unsafe[:5])}); nothing was executed. If you trust the file, rewrite "
                f"it with tools/convert_checkpoint.py --trust-pickle {path} OUT.pth") from None
        lines = [ln for ln in text.strip().splitlines() if ln.strip()]
        first = (lines[-1] if "WeightsUnpickler" in text else lines[0])[:200] if lines else ""
        raise CheckpointLoadError(
            f"cannot read {path} as a checkpoint ({type(e).__name__}: {first}); it is truncated, "
            f"corrupt or not a PyTorch file — use another checkpoint") from None


def _unsafe_globals(path: str, error: str, safe_globals: Sequence[Any]) -> list:
    """Names of the classes/functions a refused file wanted to unpickle ([] when the file is
    simply corrupt): torch's scan of the pickle, else the name in the error message."""
    try:
        found = torch.serialization.get_unsafe_globals_in_checkpoint(path)
    except Exception:  # noqa: BLE001 - not a zip checkpoint: fall back to the message
        found = []
    if not found:
        m = re.search(r"Unsupported global: GLOBAL ([\w.]+)", error)
        found = [m.group(1)] if m else []
    allowed = {f"{g.__module__}.{g.__qualname__}" for g in safe_globals}
    return [u for u in found if u not in allowed]
