"""Checkpoints as plain data: atomic writes, weights_only loads, RNG states as tensors and lists.

A training checkpoint holds
    model       state_dict of the MIM model (encoder under "encoder.")
    optimizer   optimizer.state_dict()
    scaler      GradScaler state (empty when unused)
    step        optimiser steps done;  epoch / epoch_step: where the next step starts
    rng         {"torch", "cuda", "numpy", "python", "mask"} generator states
    config      the resolved config (plain dict)
Nothing in it needs pickle beyond what torch.load(weights_only=True) accepts, so checkpoints of
unknown origin can be inspected safely and survive refactors of the code; `load` refuses anything
else (pickled code included) with one line, before any of it runs.

Crash safety: every file goes through `atomic_write` (temporary file, fsync, rename, folder fsync),
so a process killed at any moment leaves the previous checkpoint whole, and a full disk is one
line (CheckpointWriteError) with the previous checkpoint intact. The GREENMIM_FAULT hook
(greenmim.engine.faults) injects exactly these crashes in tests; it is inert when unset.
"""
from __future__ import annotations

import os
import random
import re
from typing import Any, BinaryIO, Callable, Dict, Optional, Sequence

import numpy as np
import torch

from ..config import UserError
from . import faults

LAST = "checkpoint-last.pth"


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
    Fault injection (greenmim.engine.faults): save_mid_write, save_before_rename, save_enospc
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


def find_last(output_dir: str) -> Optional[str]:
    path = os.path.join(output_dir, LAST)
    return path if os.path.isfile(path) else None


def rng_state(mask_generator=None) -> Dict[str, Any]:
    """Every RNG state of this process as tensors, lists and numbers."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    version, py_state, gauss_next = random.getstate()
    state = {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": {"keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
        "python": {"version": int(version), "state": list(py_state), "gauss_next": gauss_next},
    }
    if mask_generator is not None:
        state["mask"] = mask_generator.state_dict()
    return state


def set_rng_state(state: Dict[str, Any], mask_generator=None) -> None:
    torch.set_rng_state(state["torch"])
    if state.get("cuda") and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]))
    p = state["python"]
    random.setstate((p["version"], tuple(p["state"]), p["gauss_next"]))
    if mask_generator is not None and "mask" in state:
        mask_generator.load_state_dict(state["mask"])


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    return model.module if hasattr(model, "module") else model


def encoder_state_dict(model_state: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """The encoder's weights from a MIM model state_dict, in the original Swin layout: the keys of
    the encoder's own state_dict (patch_embed.proj.weight, layers.0.blocks.0.attn.qkv.weight, ...),
    no prefix."""
    prefix = "encoder."
    out = {k[len(prefix):]: v for k, v in model_state.items() if k.startswith(prefix)}
    if not out:
        raise KeyError("the checkpoint's model holds no 'encoder.' weights")
    return out


def export_encoder(model_state: Dict[str, torch.Tensor], path: str, config: Optional[dict] = None) -> str:
    """Writes {"model": encoder state_dict, "arch", "encoder_kwargs"} like official Swin releases
    (their weights sit under "model"); loadable with weights_only=True. With the config's
    export_safetensors, also writes the weights to <path without suffix>.safetensors."""
    obj: Dict[str, Any] = {"model": {k: v.detach().cpu().contiguous()
                                     for k, v in encoder_state_dict(model_state).items()}}
    if config is not None:
        obj["arch"] = config["model"]["arch"]
        obj["encoder_kwargs"] = dict(config["model"]["encoder"], img_size=config["data"]["img_size"])
    atomic_save(obj, path)
    if config is not None and config.get("export_safetensors"):
        # the same weights without pickle; arch and encoder_kwargs go in the header's metadata
        from ..weights import save_safetensors

        save_safetensors(obj["model"], os.path.splitext(path)[0] + ".safetensors",
                         {"arch": obj["arch"], "encoder_kwargs": obj["encoder_kwargs"], "layout": "encoder"})
    return path
