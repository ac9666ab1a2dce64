"""One run per output folder: an OS lock on `<output_dir>/.run.lock`, held for the whole run.

    with hold_output_dir(out_dir, enabled=is_main):
        ...train, write checkpoints and logs into out_dir...

A second run on the same folder (a requeued job whose old copy still runs, a double submit) stops
at once with OutputDirInUse, one line naming the folder, the holder (host, pid, start time) and
what to do. The lock is flock(2) on the open file: the kernel drops it when its process ends in
any way, SIGKILL included, so a crashed run leaves nothing to clean up and `resume=auto` just
works. (Not a POSIX record lock: closing any descriptor of the file, e.g. reading the holder,
would silently drop that.) Forked children (DataLoader workers) close their copy of the
descriptor at once, so a dead run's workers winding down do not keep the folder locked; spawned
programs never get it (Python descriptors are close-on-exec). The lock file stays in the folder;
its content (the holder) is only informative, the lock is what counts.

Filesystems without working locks (some network mounts answer ENOLCK or EOPNOTSUPP): the run
goes on unguarded after one warning per process. LOCK_NB throughout: this never waits.
"""
from __future__ import annotations

import contextlib
import datetime
import errno
import fcntl
import json
import os
import socket
import warnings
from typing import Dict, Iterator, Optional, Set

import torch
import torch.distributed as dist

from ..config import UserError

LOCK_NAME = ".run.lock"

# errors meaning "this filesystem cannot lock", as opposed to "someone holds the lock"
_NO_LOCKS = {errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOTSUP, errno.ENOSYS, errno.EINVAL, errno.EIO}
_HELD = {errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK}

_held_fds: Set[int] = set()  # descriptors of the locks this process holds
_warned = False


def _close_in_child() -> None:
    """A forked child must not keep its parent's lock alive after the parent dies."""
    for fd in list(_held_fds):
        with contextlib.suppress(OSError):
            os.close(fd)
    _held_fds.clear()


os.register_at_fork(after_in_child=_close_in_child)


class OutputDirInUse(UserError):
    """Another run holds the output folder's lock."""


def holder_text(info: Optional[Dict]) -> str:
    """'host h, pid 12, started 2026-12-01 20:50:03 UTC' from the lock file's content."""
    if not info:
        return "holder unknown: it took the lock a moment ago"
    return (f"host {info.get('host', '?')}, pid {info.get('pid', '?')}, "
            f"started {info.get('started', '?')}")


def read_holder(lock_path: str) -> Optional[Dict]:
    """The holder recorded in a lock file, or None (empty, unreadable, being written)."""
    try:
        with open(lock_path) as f:
            info = json.loads(f.read() or "null")
    except (OSError, ValueError):
        return None
    return info if isinstance(info, dict) else None


def _in_use(path: str, option: str, info: Optional[Dict]) -> OutputDirInUse:
    return OutputDirInUse(
        f"output folder {path} is in use by another run ({holder_text(info)}); wait for it to "
        f"finish, stop it, or choose another {option}")


def _warn_no_locks(lock_path: str, err: OSError) -> None:
    global _warned
    if not _warned:
        _warned = True
        warnings.warn(f"cannot lock {lock_path} ({err.strerror or err}): this filesystem has no "
                      "working file locks, so a second run on the same output folder would not be "
                      "stopped; going on without the lock", RuntimeWarning, stacklevel=4)


def _rank0_says(refused: bool) -> bool:
    """Rank 0's verdict, broadcast to every process of the job (unchanged when not distributed)."""
    if not (dist.is_available() and dist.is_initialized()):
        return refused
    on_gpu = dist.get_backend() == "nccl"
    flag = torch.tensor([int(refused)], device=torch.device("cuda", torch.cuda.current_device())
                        if on_gpu else torch.device("cpu"))
    dist.broadcast(flag, 0)
    return bool(flag.item())


@contextlib.contextmanager
def _tell_others() -> Iterator[None]:
    """Broadcasts whether the block (rank 0 taking the lock) raised, then lets the error go on."""
    try:
        yield
    except BaseException:
        _rank0_says(True)
        raise
    _rank0_says(False)


@contextlib.contextmanager
def hold_output_dir(path: str, enabled: bool = True, option: str = "output_dir",
                    name: str = LOCK_NAME, sync: bool = False) -> Iterator[None]:
    """Holds `<path>/<name>` locked for the duration of the block; creates `path` if needed.

    Args:
        path: the run's output folder.
        enabled: False on the non-main processes of a job (they share rank 0's lock): no-op.
        option: the setting's name in the refusal's advice ("output_dir", "train.output_dir").
        name: the lock file's name; a tool driving other tools that lock the same folder uses its
            own name so that it does not block them.
        sync: every process of an initialised torch.distributed job enters together; when rank 0
            is refused, the others raise too (one broadcast) instead of waiting for it at their
            next collective. Only rank 0 (enabled=True) touches the file.
    Raises:
        OutputDirInUse: another process holds the lock (or this one does, in another block).
        UserError: the folder or the lock file cannot be created (permissions, read-only disk).
    """
    if not enabled:
        if sync and _rank0_says(False):
            raise OutputDirInUse(f"output folder {path} is in use by another run (see rank 0's error)")
        yield
        return
    if sync:
        with contextlib.ExitStack() as stack:
            with _tell_others():
                stack.enter_context(hold_output_dir(path, True, option, name))
            yield
        return
    path = str(path)
    try:
        os.makedirs(path, exist_ok=True)
        lock_path = os.path.join(path, name)
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as e:
        raise UserError(f"cannot create the lock file in output folder {path} ({e.strerror or e}); "
                        f"choose a writable {option}") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
        os.close(fd)
        if e.errno in _HELD:
            raise _in_use(path, option, read_holder(lock_path)) from None
        if e.errno not in _NO_LOCKS:
            raise
        _warn_no_locks(lock_path, e)
        yield  # unguarded
        return
    _held_fds.add(fd)
    try:
        info = {"host": socket.gethostname(), "pid": os.getpid(),
                "started": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")}
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(info) + "\n").encode(), 0)
        yield
    finally:
        if fd in _held_fds:  # else this is a forked child, whose copy was closed at the fork
            _held_fds.discard(fd)
            with contextlib.suppress(OSError):
                os.ftruncate(fd, 0)  # released: no holder to name any more
            os.close(fd)  # closing drops the lock
