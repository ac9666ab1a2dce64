"""Two processes (torchrun, gloo on the CPU) train exactly like one process on the same global batch."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from greenmim.config import load_config
from greenmim.engine import checkpoint as ckpt
from greenmim.engine.pretrain import run

from test_pretrain import ROOT, TINY_CFG, _env, read_log, tiny_overrides

pytestmark = pytest.mark.skipif(not torch.distributed.is_available(), reason="no torch.distributed")


def test_two_gloo_processes_match_one_process(tmp_path):
    # Per-sample masks are drawn for the global batch and sliced per rank, so both runs see the same
    # images with the same masks; DDP's gradient mean then equals the one-process gradient.
    common = ["mask.shared=false", "train.batch_size=4", "train.epochs=1", "data.synthetic_size=12",
              "checkpoint.every_steps=1"]
    one, two = str(tmp_path / "one"), str(tmp_path / "two")
    torch.set_num_threads(1)
    run(load_config(TINY_CFG, tiny_overrides(one, *common)))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           os.path.join(ROOT, "pretrain", "main_pretrain.py"), "--config", TINY_CFG,
           *tiny_overrides(two, *common)]
    res = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    a, b = read_log(one), read_log(two)
    assert sorted(a) == sorted(b) == [1, 2, 3]
    for s in a:
        assert abs(a[s] - b[s]) < 1e-5, (s, a[s], b[s])
    wa = ckpt.load(os.path.join(one, ckpt.LAST))["model"]
    wb = ckpt.load(os.path.join(two, ckpt.LAST))["model"]
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], atol=2e-5, rtol=1e-4, msg=k)
    assert os.path.isfile(os.path.join(two, "encoder.pth"))


def test_batch_not_divisible_by_processes_is_one_line(tmp_path):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           os.path.join(ROOT, "pretrain", "main_pretrain.py"), "--config", TINY_CFG,
           *tiny_overrides(str(tmp_path), "train.batch_size=3")]
    res = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=300)
    assert res.returncode != 0
    lines = [line for line in res.stderr.splitlines() if line.startswith("error: ")]
    assert lines == ["error: train.batch_size=3 is not divisible by 2 processes x "
                     "train.accum_iter=1; use a multiple of 2"], res.stderr[-2000:]
