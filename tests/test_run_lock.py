"""One run per output folder (greenmim.engine.run_lock): a second run on a folder in use stops at
once with one line and exit status 2, the first goes on untouched; a SIGKILLed holder leaves no
lock behind; a filesystem without locks gets one warning. Pretraining and tools/train_net.py.

The holders are forks of this test process (no interpreter start-up); the refused runs are the
real programs, so that their exit status and stderr are what a user sees. A holder is frozen with
SIGSTOP while the second run tries, so the test does not depend on how fast anything runs.
"""
from __future__ import annotations

import errno
import json
import multiprocessing
import os
import signal
import subprocess
import sys
import time
import warnings

import pytest
import torch

from greenmim.config import UserError, load_config
from greenmim.engine import run_lock
from greenmim.engine.pretrain import main, run
from greenmim.engine.run_lock import OutputDirInUse, hold_output_dir, read_holder

from test_pretrain import ROOT, TINY_CFG, _env, tiny_overrides

ADVICE = "wait for it to finish, stop it, or choose another"


def _fork(fn, *args):
    p = multiprocessing.get_context("fork").Process(target=fn, args=args)
    p.start()
    return p


def _wait_for(cond, proc, what, timeout=90):
    deadline = time.time() + timeout
    while not cond():
        assert proc.is_alive(), f"the holder ended before {what}"
        assert time.time() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def _assert_refusal(err, folder, pid, option):
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    assert len(lines) == 1, err
    line = lines[0]
    assert line.startswith(f"error: output folder {folder} is in use by another run (host ")
    assert f"pid {pid}, started " in line and line.endswith(f"{ADVICE} {option}")


# ---- the lock itself ----------------------------------------------------------------------------

def _hold_and_wait(path, ready, worker_pid):
    """Holds the lock, forks a child that outlives us (a DataLoader worker), then waits forever."""
    with hold_output_dir(path):
        worker = os.fork()
        if worker == 0:
            time.sleep(120)
            os._exit(0)
        worker_pid.value = worker
        ready.set()
        time.sleep(120)


def _reap(proc, timeout=30):
    """Waits for a killed child; not join(), which also waits for its own children to let go of
    the process's sentinel pipe."""
    deadline = time.time() + timeout
    while proc.exitcode is None and time.time() < deadline:
        time.sleep(0.01)


def test_second_holder_refused_and_lock_gone_with_the_holder(tmp_path):
    path = str(tmp_path / "out")
    ctx = multiprocessing.get_context("fork")
    ready, worker_pid = ctx.Event(), ctx.Value("i", 0)
    holder = _fork(_hold_and_wait, path, ready, worker_pid)
    try:
        assert ready.wait(60)
        assert read_holder(os.path.join(path, run_lock.LOCK_NAME))["pid"] == holder.pid
        with pytest.raises(OutputDirInUse) as e:
            with hold_output_dir(path):
                pass
        _assert_refusal(f"error: {e.value}", path, holder.pid, "output_dir")
        os.kill(holder.pid, signal.SIGKILL)
        _reap(holder)
        os.kill(worker_pid.value, 0)  # the holder's forked child still lives ...
        with hold_output_dir(path):  # ... and does not keep the lock: nothing to clean up
            assert read_holder(os.path.join(path, run_lock.LOCK_NAME))["pid"] == os.getpid()
            with pytest.raises(OutputDirInUse, match=f"pid {os.getpid()},"):  # nor twice in one process
                with hold_output_dir(path, option="--output"):
                    pass
        assert read_holder(os.path.join(path, run_lock.LOCK_NAME)) is None  # released: no holder
    finally:
        for pid in (holder.pid, worker_pid.value):
            if pid:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        _reap(holder)


def _rank_of_two(rank, path, store_path, results):
    """One of two gloo processes entering hold_output_dir(sync=True) together."""
    torch.distributed.init_process_group("gloo", init_method=f"file://{store_path}", rank=rank, world_size=2)
    try:
        with hold_output_dir(path, enabled=rank == 0, sync=True):
            results[rank] = "ran"
    except OutputDirInUse as e:
        results[rank] = str(e)
    finally:
        torch.distributed.destroy_process_group()


def test_refusal_of_rank_0_stops_every_rank(tmp_path):
    path = str(tmp_path / "out")
    results = multiprocessing.get_context("fork").Manager().dict()
    with hold_output_dir(path):
        ranks = [_fork(_rank_of_two, r, path, str(tmp_path / "store"), results) for r in (0, 1)]
        for p in ranks:
            p.join(60)
    assert [p.exitcode for p in ranks] == [0, 0]
    assert f"pid {os.getpid()}," in results[0] and "in use by another run" in results[1]
    ranks = [_fork(_rank_of_two, r, path, str(tmp_path / "store2"), results) for r in (0, 1)]
    for p in ranks:
        p.join(60)
    assert [p.exitcode for p in ranks] == [0, 0] and results.copy() == {0: "ran", 1: "ran"}


def test_filesystem_without_locks_warns_once_and_goes_on(tmp_path, monkeypatch):
    def no_locks(fd, op):
        raise OSError(errno.ENOLCK, os.strerror(errno.ENOLCK))

    monkeypatch.setattr(run_lock.fcntl, "flock", no_locks)
    monkeypatch.setattr(run_lock, "_warned", False)
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        for name in ("a", "b"):
            with hold_output_dir(str(tmp_path / name)):  # never hangs, never raises
                assert os.path.isdir(tmp_path / name)
    assert len(seen) == 1 and "no working file locks" in str(seen[0].message)


def test_unwritable_output_folder_is_one_line(tmp_path):
    (tmp_path / "file").write_text("")
    with pytest.raises(UserError, match=r"^cannot create the lock file in output folder .*; choose a writable output_dir$"):
        with hold_output_dir(str(tmp_path / "file" / "out")):
            pass


def test_disabled_is_a_no_op(tmp_path):
    with hold_output_dir(str(tmp_path / "out"), enabled=False):
        pass
    assert not os.path.exists(tmp_path / "out")


# ---- pretraining ----------------------------------------------------------------------------------

STEPS = 8  # 2 epochs x 4 steps


def _overrides(out):
    return tiny_overrides(out, "train.epochs=2", "checkpoint.every_steps=1")


def _log_rows(out):
    try:
        with open(os.path.join(out, "log.jsonl")) as f:
            return [json.loads(line) for line in f if line.endswith("\n")]
    except (OSError, ValueError):
        return []


def _losses(rows):
    return [(r["step"], r["loss"]) for r in rows if "loss" in r]


def _pretrain(argv, fault=None):
    if fault:
        os.environ["GREENMIM_FAULT"] = fault
    torch.set_num_threads(1)
    sys.exit(main(argv))


@pytest.fixture(scope="module")
def solo(tmp_path_factory):
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    out = str(tmp_path_factory.mktemp("solo"))
    run(load_config(TINY_CFG, _overrides(out)))
    torch.set_num_threads(n)
    return _log_rows(out)


def test_second_pretraining_on_a_folder_in_use_stops_and_the_first_is_untouched(tmp_path, solo):
    out = str(tmp_path / "out")
    argv = ["--config", TINY_CFG, *_overrides(out)]
    first = _fork(_pretrain, argv)
    try:
        _wait_for(lambda: _losses(_log_rows(out)), first, "its first step")
        os.kill(first.pid, signal.SIGSTOP)  # frozen mid-run, lock held
        second = subprocess.run([sys.executable, os.path.join(ROOT, "pretrain", "main_pretrain.py"), *argv],
                                env=_env(), capture_output=True, text=True, timeout=120)
        assert second.returncode == 2, second.stderr
        _assert_refusal(second.stderr, out, first.pid, "output_dir")
    finally:
        os.kill(first.pid, signal.SIGCONT)
    first.join(120)
    assert first.exitcode == 0
    rows = _log_rows(out)
    assert _losses(rows) == _losses(solo) and len(_losses(rows)) == STEPS  # bit for bit, once each
    assert [r["step"] for r in rows if "epoch_done" in r] == [r["step"] for r in solo if "epoch_done" in r]


def test_sigkilled_pretraining_leaves_no_lock_and_resume_auto_goes_on(tmp_path, solo):
    out = str(tmp_path / "out")
    argv = ["--config", TINY_CFG, *_overrides(out)]
    killed = _fork(_pretrain, argv, "kill_at_step:3")
    killed.join(120)
    assert killed.exitcode == -signal.SIGKILL
    assert read_holder(os.path.join(out, run_lock.LOCK_NAME))["pid"] == killed.pid  # left as it was
    assert main([*argv, "resume=auto"]) == 0
    assert dict(_losses(_log_rows(out))) == dict(_losses(solo))


# ---- tools/train_net.py ---------------------------------------------------------------------------

def test_second_train_net_on_a_folder_in_use_stops_then_resume_after_sigkill(make_coco, tmp_path, monkeypatch):
    pytest.importorskip("detectron2")
    from conftest import SIDE, coco_overrides, load_tool
    from test_detection import T1X, TINY

    coco = make_coco(num_train=4, num_val=1, img_size=64)
    out, max_iter = str(tmp_path / "out"), 4
    opts = TINY + coco_overrides(coco, dataset="greenmim_lock_shapes") + [
        f"dataloader.train.mapper.augmentations.0.short_edge_length={SIDE}", f"train.max_iter={max_iter}",
        "train.eval_period=0", "train.log_period=1", "train.seed=0", "train.checkpointer.period=2",
        f"train.output_dir={out}"]
    argv = ["--config-file", T1X, *opts]

    # evaluation is not under test here; the forked runs inherit the patch
    monkeypatch.setattr("greenmim_det.train_net.do_test", lambda cfg, model: {})

    def train(args):
        torch.set_num_threads(1)
        train_net = load_tool("train_net")
        return train_net.main(train_net.parse_args(args))

    first = _fork(train, argv)
    try:
        _wait_for(lambda: os.path.exists(os.path.join(out, "last_checkpoint")), first, "its first snapshot")
        os.kill(first.pid, signal.SIGSTOP)
        env = dict(_env(), PYTHONWARNINGS="ignore", PYTHONPATH=os.pathsep.join([os.path.join(ROOT, "pretrain"),
                                                       os.path.join(ROOT, "projects", "GreenMIM")]))
        second = subprocess.run([sys.executable, os.path.join(ROOT, "tools", "train_net.py"), *argv],
                                env=env, capture_output=True, text=True, timeout=120)
        assert second.returncode == 2, second.stderr[-2000:]
        _assert_refusal(second.stderr, out, first.pid, "train.output_dir")
    finally:
        os.kill(first.pid, signal.SIGKILL)  # the holder dies mid-run, frozen or not
        os.kill(first.pid, signal.SIGCONT)
        first.join(30)
    assert first.exitcode == -signal.SIGKILL
    trainer = train(["--resume", *argv])  # no clean-up in between
    assert trainer.start_iter >= 2 and trainer.iter == max_iter
