"""Pretraining under faults: SIGKILL at any moment (also inside the checkpoint writer), disk full,
NaN/inf gradients, a lost process in a 2-process torchrun job.

Kills use the GREENMIM_FAULT hook (greenmim.faults) or a SIGKILL from the test at a random
moment. To stay fast, single-process runs are forks of this (already imported) test process calling
the `main()` that pretrain/main_pretrain.py calls; the distributed runs start main_pretrain.py
with torchrun.
"""
from __future__ import annotations

import glob
import multiprocessing
import os
import random
import re
import signal
import subprocess
import sys
import time

import pytest
from greenmim import faults
import torch

from greenmim.config import load_config
from greenmim.engine import checkpoint as ckpt
from greenmim.engine.pretrain import main, run

from test_pretrain import ROOT, TINY_CFG, _env, read_log, tiny_overrides

STEPS = 16  # 4 epochs x 4 steps


def _overrides(out):
    return tiny_overrides(out, "train.epochs=4", "checkpoint.every_steps=1")


def _fork_main(argv, fault=None, wait=True):
    """Runs main(argv) — what pretrain/main_pretrain.py runs — in a forked child (with
    GREENMIM_FAULT=fault); returns its exit code (negative: killed by that signal), or the
    running process when wait=False. Forking skips the ~5 s import of a fresh interpreter."""
    def target():
        if fault:
            os.environ["GREENMIM_FAULT"] = fault
        torch.set_num_threads(1)
        sys.exit(main(argv))

    p = multiprocessing.get_context("fork").Process(target=target)
    p.start()
    if not wait:
        return p
    p.join(120)
    assert p.exitcode is not None, "child did not finish"
    return p.exitcode


def _checkpoints_load(out):
    """Every checkpoint in out loads (none is corrupt); returns the step of checkpoint-last.pth."""
    for path in glob.glob(os.path.join(out, "*.pth")):
        ckpt.load(path)
    return ckpt.load(os.path.join(out, ckpt.LAST))["state"]["step"]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    torch.set_num_threads(1)
    out = str(tmp_path_factory.mktemp("reference"))
    run(load_config(TINY_CFG, _overrides(out)))
    return read_log(out), ckpt.load(os.path.join(out, ckpt.LAST))["model"]


def test_sigkill_anywhere_then_resume_equals_an_uninterrupted_run(tmp_path, reference):
    out = str(tmp_path / "run")
    argv = ["--config", TINY_CFG, *_overrides(out)]
    # 1. killed between writing the temporary file and the rename of the 3rd save (step 3)
    assert _fork_main(argv, "save_before_rename:3") == -signal.SIGKILL
    assert _checkpoints_load(out) == 2
    assert glob.glob(os.path.join(out, ".checkpoint-last.pth.tmp*"))  # the crash's leftover
    # 2. resumed, then killed half-way through writing its 3rd save (step 5)
    assert _fork_main(argv, "save_mid_write:3") == -signal.SIGKILL
    assert _checkpoints_load(out) == 4
    # 3. resumed, then SIGKILLed by us at a random moment after step 6
    proc = _fork_main(argv, wait=False)
    deadline = time.time() + 90
    while max(_safe_log(out), default=0) < 6 and proc.is_alive() and time.time() < deadline:
        time.sleep(0.02)
    time.sleep(random.Random().uniform(0.0, 0.15))
    os.kill(proc.pid, signal.SIGKILL)
    proc.join(30)
    assert proc.exitcode == -signal.SIGKILL, "the run finished before the kill; slow the run down"
    killed_at = _checkpoints_load(out)
    assert 5 <= killed_at < STEPS
    # 4. resumed to the end: every step's loss and the final weights equal the uninterrupted run
    assert main(argv) == 0
    losses, weights = reference
    got = read_log(out)
    assert sorted(got) == sorted(losses) == list(range(1, STEPS + 1))
    for step in losses:
        assert abs(got[step] - losses[step]) <= 1e-6, (step, got[step], losses[step])
    final = ckpt.load(os.path.join(out, ckpt.LAST))
    assert final["state"]["step"] == STEPS
    assert all(torch.equal(final["model"][k], weights[k]) for k in weights)
    assert not glob.glob(os.path.join(out, ".*.tmp*"))  # crash leftovers were cleaned up


def _safe_log(out):
    try:
        return read_log(out)
    except (OSError, ValueError):  # not there yet, or a line being written
        return {}


def test_disk_full_keeps_the_previous_checkpoint_and_says_so(tmp_path, monkeypatch, capsys):
    out = str(tmp_path / "full")
    monkeypatch.setenv("GREENMIM_FAULT", "save_enospc:3")
    faults.reset()
    code = main(["--config", TINY_CFG, *_overrides(out)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and err[-1].startswith("error: cannot write ") and "No space left on device" in err[-1]
    assert "the previous checkpoint-last.pth is intact" in err[-1] and "resume" in err[-1]
    assert _checkpoints_load(out) == 2
    assert not glob.glob(os.path.join(out, ".*.tmp*"))


def test_nan_gradient_with_finite_loss_stops_and_keeps_last_checkpoint(tmp_path, monkeypatch, capsys):
    out = str(tmp_path / "nangrad")
    import greenmim.engine.pretrain as program
    real_build, calls = program.build_model, {"n": 0}

    def poisoned_build(cfg):
        model = real_build(cfg)

        def hook(grad):
            calls["n"] += 1
            return grad * float("inf") if calls["n"] == 3 else grad  # finite loss, inf gradient

        model.encoder.patch_embed.proj.weight.register_hook(hook)
        return model

    monkeypatch.setattr(program, "build_model", poisoned_build)
    code = main(["--config", TINY_CFG, *_overrides(out)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and err[-1].startswith("error: gradient norm is "), err
    assert "at step 3" in err[-1] and "finite loss" in err[-1]
    last = ckpt.load(os.path.join(out, ckpt.LAST))
    assert last["state"]["step"] == 2
    assert all(torch.isfinite(v).all() for v in last["model"].values() if v.is_floating_point())


@pytest.mark.skipif(not torch.distributed.is_available(), reason="no torch.distributed")
@pytest.mark.parametrize("fault, first_words", [
    # rank 1 SIGKILLed: torchrun's agent SIGTERMs rank 0, which says so — unless rank 0's
    # collective notices the closed connection first and says that
    ("kill_at_step:2@1", "stopped by SIGTERM|lost contact with the other processes"),
    # rank 1 stuck: rank 0's collective times out after dist_timeout_s (8 s: it also bounds the
    # start-up rendezvous, so it leaves room for a loaded machine), it says so and exits;
    # torchrun then stops rank 1
    ("hang_at_step:2@1", "lost contact with the other processes"),
])
def test_a_lost_or_stuck_process_stops_the_job_quickly_with_a_clear_message(tmp_path, fault, first_words):
    """torchrun, 2 processes (gloo, CPU). The survivor must not hang: one `error:` line, a
    bounded wall time, and the checkpoint intact."""
    out = str(tmp_path / "dist")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           os.path.join(ROOT, "pretrain", "main_pretrain.py"), "--config", TINY_CFG,
           *tiny_overrides(out, "checkpoint.every_steps=1", "dist_timeout_s=8")]
    start = time.time()
    res = subprocess.run(cmd, env=dict(_env(), GREENMIM_FAULT=fault), capture_output=True, text=True, timeout=150)
    wall = time.time() - start
    assert res.returncode != 0
    assert wall < 90, f"the job took {wall:.0f} s to stop"
    errors = [line for line in res.stderr.splitlines() if line.startswith("error: rank 0: ")]
    assert len(errors) == 1 and re.search(first_words, errors[0]) and "resume=auto" in errors[0], res.stderr[-3000:]
    assert _checkpoints_load(out) in (1, 2)


def test_fp16_grad_scaler_skips_an_inf_gradient_step_instead_of_stopping():
    """With fp16 AMP (CUDA) the GradScaler owns overflow handling: an inf gradient skips that
    step and halves the loss scale; training goes on. Run here with the CPU GradScaler."""
    from greenmim.data.masking import MaskGenerator
    from greenmim.engine.build import build_model
    from greenmim.engine.data import build_dataset, build_loader
    from greenmim.engine.logger import TrainLogger
    from greenmim.engine.train import StepConfig, TrainState, train_one_epoch

    torch.manual_seed(0)
    cfg = load_config(TINY_CFG, tiny_overrides("unused"))
    loader = build_loader(build_dataset(cfg), 2, 1, 0, 1, 0, 0)
    model = build_model(cfg)
    weight = model.encoder.patch_embed.proj.weight
    calls = {"n": 0}

    def hook(grad):
        calls["n"] += 1
        return grad * float("inf") if calls["n"] == 2 else grad

    weight.register_hook(hook)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 10)
    snapshots, scales = [weight.detach().clone()], []

    def on_step(s):
        snapshots.append(weight.detach().clone())
        scales.append(scaler.get_scale())

    train_one_epoch(model, loader, opt, scaler, MaskGenerator(64, 0.75, seed=0), TrainState(),
                    StepConfig(micro_batch=2, total_steps=4), torch.device("cpu"), TrainLogger(None, enabled=False),
                    on_step=on_step)
    assert len(snapshots) == 5  # every step ran, none raised
    assert not torch.equal(snapshots[1], snapshots[0]) and not torch.equal(snapshots[3], snapshots[2])
    assert torch.equal(snapshots[2], snapshots[1])  # the inf step was skipped
    assert scales[1] == scales[0] / 2  # and the loss scale lowered
    assert all(torch.isfinite(s).all() for s in snapshots)
