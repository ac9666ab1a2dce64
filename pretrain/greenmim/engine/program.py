"""The process contract every GreenMIM program keeps: one-line errors, exit statuses, resume.

Pretraining, fine-tuning and tools/train_net.py share it, so a user sees the same behaviour from
each of them:
    run_guarded(body)     exit status 0 (or body's), 2 with one `error:` line for a UserError,
                          3 with one line per surviving process when a collective fails,
                          143 with one line on SIGTERM
    one_line(e)           the message of an error, unwrapped from a DataLoader worker's traceback
    first_error_line(e)   the informative line of a load_state_dict error
    resume_path(cfg)      the checkpoint `resume=` names (none / auto / a path), one-line errors
    check_resumable(...)  a loaded file is a training checkpoint of this model, or one line why not
One run per output folder is the other half of the contract (greenmim.engine.run_lock).
"""
from __future__ import annotations

import os
import signal
import sys
import threading
from typing import Any, Callable, Dict, Optional

import torch

from ..config import ConfigError, UserError
from .checkpoint import find_last

__all__ = ["Terminated", "check_resumable", "first_error_line", "is_collective_failure", "one_line",
           "resume_path", "run_guarded"]


def first_error_line(e: Exception) -> str:
    """The informative line of a load_state_dict error (its first line only names the class)."""
    lines = [ln.strip() for ln in str(e).strip().splitlines() if ln.strip()]
    useful = [ln for ln in lines if not ln.startswith("Error(s) in loading")]
    return (useful or lines or [type(e).__name__])[0][:240]


def check_resumable(c: Any, path: str, cfg: Dict[str, Any]) -> None:
    """One-line errors for a file that is not a training checkpoint, or one of another model."""
    need = ("model", "optimizer", "state", "rng")
    missing = [k for k in need if not isinstance(c, dict) or k not in c]
    if missing:
        raise ConfigError(f"{path} is not a GreenMIM training checkpoint (no {', '.join(missing)}); "
                          "resume needs a checkpoint-*.pth written by pretraining — use resume=none "
                          "to start afresh")
    old = c.get("config", {}).get("model") if isinstance(c.get("config"), dict) else None
    if isinstance(old, dict):
        # what decides the parameter shapes (drop_path_rate and the like may change on resume)
        def shape_keys(m: Dict[str, Any]) -> Dict[str, Any]:
            enc = m.get("encoder") or {}
            out = {k: m.get(k) for k in ("type", "arch", "decoder_dim", "decoder_depth", "decoder_num_heads")}
            out.update({f"encoder.{k}": enc.get(k) for k in ("embed_dim", "depths", "num_heads", "window_size")})
            return out
        a, b = shape_keys(old), shape_keys(cfg["model"])
        diff = [f"model.{k}: checkpoint {a[k]!r} vs config {b[k]!r}" for k in a if a[k] != b[k]]
        if diff:
            raise ConfigError(f"checkpoint {path} is of another architecture ({'; '.join(diff[:3])}); "
                              "use the config it was trained with, another output_dir, or resume=none")


def resume_path(cfg: Dict[str, Any]) -> Optional[str]:
    """The checkpoint to resume from, by the config's `resume`: none/empty -> None (start afresh),
    auto -> output_dir's checkpoint-last.pth if there is one, else a path that must exist."""
    r = cfg["resume"]
    if r in (None, False, "", "none"):
        return None
    if r == "auto":
        return find_last(cfg["output_dir"])
    if not os.path.isfile(str(r)):
        raise ConfigError(f"resume={r}: no such checkpoint file; use resume=auto or a path to a .pth")
    return str(r)


class Terminated(UserError):
    """SIGTERM arrived: the scheduler cancelled or preempted the job, or torchrun stops the other
    processes because one of them failed."""


def _on_sigterm(signum, frame):  # noqa: ARG001 - signal handler signature
    raise Terminated("stopped by SIGTERM (job cancelled or preempted, or another process of the "
                     "job failed); checkpoint-last.pth holds the last completed checkpoint — "
                     "restart with resume=auto")


def _quiet_sigterm(in_main_thread: bool) -> None:
    """This process is already on its way out with its one error line; a SIGTERM arriving now
    (torchrun stopping the job) must not add a second message or a traceback."""
    if in_main_thread:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)


def one_line(e: BaseException) -> str:
    """The message of a UserError; one raised in a DataLoader worker arrives wrapped in the
    worker's traceback, whose last line is the original `Class: message`."""
    text = str(e).strip()
    if "Original Traceback" in text:
        last = text.splitlines()[-1]
        text = last.split(": ", 1)[1] if ": " in last else last
    return text


def is_collective_failure(e: BaseException) -> bool:
    """A failed or timed-out collective: another process died, hung or lost the network."""
    if isinstance(e, torch.distributed.DistError):
        return True
    text = str(e)
    return isinstance(e, RuntimeError) and any(
        s in text for s in ("gloo", "Gloo", "NCCL", "Connection closed", "Connection reset", "Timed out"))




def run_guarded(body: Callable[[], int]) -> int:
    """Runs a program's body with main()'s exit-status contract: its return value, 2 with one
    `error:` line for a UserError, 3 for a lost process, 143 for SIGTERM."""
    rank = int(os.environ.get("RANK", 0))
    in_main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _on_sigterm) if in_main_thread else None
    try:
        return body()
    except Terminated as e:
        _quiet_sigterm(in_main_thread)
        print(f"error: rank {rank}: {e}", file=sys.stderr, flush=True)
        return 143
    except UserError as e:
        if rank == 0:
            print(f"error: {one_line(e)}", file=sys.stderr)
        return 2
    except Exception as e:  # noqa: BLE001 - only collective failures are handled here
        if not is_collective_failure(e):
            raise
        _quiet_sigterm(in_main_thread)  # torchrun's SIGTERM may follow: one message is enough
        first = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
        print(f"error: rank {rank}: lost contact with the other processes ({first}): one of them "
              f"died or hung longer than dist_timeout_s; checkpoint-last.pth is intact — fix the "
              f"cause (see the first failing rank's log) and restart with resume=auto",
              file=sys.stderr, flush=True)
        return 3
    finally:
        if in_main_thread:
            signal.signal(signal.SIGTERM, previous)
