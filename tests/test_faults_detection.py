"""Detectron2 fine-tuning (tools/train_net.py) under faults: SIGKILL inside the checkpoint writer and
at a random moment, then --resume continues from the last complete snapshot at the right
iteration; disk full is one clear line. Runs are forks of this test process calling train_net's
main() (what `python tools/train_net.py` calls), so no detectron2 import is paid per run."""
from __future__ import annotations

import glob
import json
import multiprocessing
import os
import random
import signal
import sys
import time

import pytest
from greenmim import faults
import torch

pytest.importorskip("detectron2")

from conftest import SIDE, coco_overrides, load_tool  # noqa: E402
from test_detection import T1X, TINY  # noqa: E402

MAX_ITER = 12


@pytest.fixture(scope="module")
def coco(make_coco):
    return make_coco(num_train=4, num_val=1, img_size=64)


def _own_data(coco):
    """The data overrides under dataset names of this module: detectron2's catalog is global, and
    test_detection registers its own files under the default names."""
    return coco_overrides(coco, dataset="greenmim_faults_shapes")


def _args(coco, out, *extra):
    opts = TINY + _own_data(coco) + [
        f"dataloader.train.mapper.augmentations.0.short_edge_length={SIDE}",
        f"train.max_iter={MAX_ITER}", "train.eval_period=0", "train.log_period=1", "train.seed=0",
        "train.checkpointer.period=2", "train.checkpointer.max_to_keep=2", f"train.output_dir={out}",
        *extra]
    return ["--config-file", T1X, *opts]


def _fork_train(argv, fault=None):
    """train_net.main in a forked child; returns (process, started) without waiting."""
    def target():
        if fault:
            os.environ["GREENMIM_FAULT"] = fault
        torch.set_num_threads(1)
        import greenmim_det.train_net as program  # what tools/train_net.py runs

        program.do_test = lambda cfg, model: {}  # evaluation is not under test here: skip it
        train_net = load_tool("train_net")
        train_net.main(train_net.parse_args(argv))
        sys.exit(0)

    p = multiprocessing.get_context("fork").Process(target=target)
    p.start()
    return p


def _snapshots_load(out):
    """Every .pth in out loads; returns the iteration of the snapshot last_checkpoint names."""
    for path in glob.glob(os.path.join(out, "*.pth")):
        torch.load(path, weights_only=True)
    with open(os.path.join(out, "last_checkpoint")) as f:
        return torch.load(os.path.join(out, f.read().strip()), weights_only=True)["iteration"]


def _last_logged_iter(out):
    try:
        with open(os.path.join(out, "metrics.json")) as f:
            lines = [json.loads(x) for x in f.read().splitlines() if x.endswith("}")]
        return max((r["iteration"] for r in lines), default=-1)
    except (OSError, ValueError):
        return -1


def test_train_net_killed_anywhere_resumes_at_the_right_iteration(coco, tmp_path, monkeypatch):
    out = str(tmp_path / "run")
    # 1. killed half-way through writing its 2nd snapshot (iteration 3; the 1st is iteration 1)
    p = _fork_train(_args(coco, out), "save_mid_write:2")
    p.join(120)
    assert p.exitcode == -signal.SIGKILL
    assert _snapshots_load(out) == 1
    # 2. resumed, then SIGKILLed by us at a random moment after iteration 5
    p = _fork_train(["--resume", *_args(coco, out)])
    deadline = time.time() + 90
    while _last_logged_iter(out) < 5 and p.is_alive() and time.time() < deadline:
        time.sleep(0.02)
    time.sleep(random.Random().uniform(0.0, 0.15))
    os.kill(p.pid, signal.SIGKILL)
    p.join(30)
    assert p.exitcode == -signal.SIGKILL, "the run finished before the kill"
    last = _snapshots_load(out)
    assert 3 <= last < MAX_ITER - 1
    # 3. resumed to the end here: it starts right after the last complete snapshot
    train_net = load_tool("train_net")
    monkeypatch.setattr("greenmim_det.train_net.do_test", lambda cfg, model: {})
    trainer = train_net.main(train_net.parse_args(["--resume", *_args(coco, out)]))
    assert trainer.start_iter == last + 1 and trainer.iter == MAX_ITER
    assert torch.load(os.path.join(out, "model_final.pth"), weights_only=True)["iteration"] == MAX_ITER - 1
    assert not glob.glob(os.path.join(out, ".*.tmp*"))


def test_disk_full_while_saving_a_snapshot_is_one_line(coco, tmp_path, monkeypatch):
    out = str(tmp_path / "full")
    monkeypatch.setenv("GREENMIM_FAULT", "save_enospc:2")
    faults.reset()
    train_net = load_tool("train_net")
    monkeypatch.setattr("greenmim_det.train_net.do_test", lambda cfg, model: {})
    with pytest.raises(SystemExit) as err:
        train_net.main(train_net.parse_args(_args(coco, out)))
    msg = str(err.value)
    assert msg.startswith("error: cannot write ") and "No space left on device" in msg and "\n" not in msg
    assert "the last complete snapshot model_0000001.pth is intact" in msg and "--resume" in msg
    assert _snapshots_load(out) == 1
