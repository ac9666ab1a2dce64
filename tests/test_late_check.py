"""The step check read one step late (engine/late_check.py): the same training as a check before
each update, no host read of a step before the next step is launched, and a non-finite step
skipped on the device, reported with its own number, its hook never run."""
from __future__ import annotations

import pytest
import torch

from greenmim.config import load_config
from greenmim.data.masking import MaskGenerator
from greenmim.engine import late_check
from greenmim.engine.build import build_model
from greenmim.engine.data import build_dataset, build_loader
from greenmim.engine.logger import TrainLogger
from greenmim.engine.mask_collate import collator_for
from greenmim.engine.optim import build_optimizer
from greenmim.engine.train import StepConfig, TrainingError, TrainState, train_one_epoch

from test_pretrain import TINY_CFG, tiny_overrides

pytestmark = pytest.mark.usefixtures("one_thread")
STEPS = 4  # 8 images, batch 2


def _train(late: bool, clip=None, poison_step=None, events=None, masks_in_workers=True):
    """One epoch of the tiny pretraining model; returns (a weight after each checked step, the
    optimiser, the error raised or None, that weight at the end). poison_step: that step's
    gradient is made inf."""
    torch.manual_seed(0)
    cfg = load_config(TINY_CFG, tiny_overrides("unused"))
    model = build_model(cfg)
    collate = collator_for(model, 64, 0.75, True, 0) if masks_in_workers else None
    loader = build_loader(build_dataset(cfg), 2, 1, 0, 1, 0, 0, collate=collate)
    weight = model.encoder.patch_embed.proj.weight
    calls = {"backward": 0}

    def hook(grad):
        calls["backward"] += 1
        return grad * float("inf") if calls["backward"] == poison_step else grad

    weight.register_hook(hook)
    if events is not None:
        model.register_forward_pre_hook(lambda *_: events.append(("forward", calls["backward"] + 1)))
    opt = build_optimizer(model, lr=1e-3)
    snapshots = [weight.detach().clone()]

    def on_step(s):
        assert s.step == len(snapshots)
        snapshots.append(weight.detach().clone())

    sc = StepConfig(micro_batch=2, total_steps=STEPS, clip_grad=clip, late_checks=late)
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    try:
        train_one_epoch(model, loader, opt, scaler, MaskGenerator(64, 0.75, seed=0), TrainState(), sc,
                        torch.device("cpu"), TrainLogger(None, enabled=False), on_step=on_step)
    except TrainingError as e:
        return snapshots, opt, e, weight.detach().clone()
    return snapshots, opt, None, weight.detach().clone()


@pytest.mark.parametrize("clip", [None, 1e-3])
def test_late_check_trains_exactly_as_a_check_before_each_update(clip):
    late, _, err_late, _ = _train(True, clip)
    now, _, err_now, _ = _train(False, clip)
    assert err_late is None and err_now is None
    assert len(late) == len(now) == STEPS + 1
    for a, b in zip(late, now):
        assert torch.equal(a, b)
    assert not torch.equal(late[-1], late[0])


def test_the_host_reads_a_step_only_after_the_next_step_is_launched(monkeypatch):
    events = []
    real_read = late_check.StepOutcome.read

    def read(self):
        events.append(("read", self.step))
        return real_read(self)

    monkeypatch.setattr(late_check.StepOutcome, "read", read)
    _train(True, events=events)
    expected = [("forward", 1)]
    for step in range(2, STEPS + 1):
        expected += [("forward", step), ("read", step - 1)]
    assert events == expected + [("read", STEPS)]
    # the reference path reads each step before the next one starts; so does a run whose masks
    # the engine draws (its generator's state goes into the step's checkpoint)
    in_order = [e for s in range(1, STEPS + 1) for e in (("forward", s), ("read", s))]
    for late, in_workers in ((False, True), (True, False)):
        events.clear()
        _train(late, events=events, masks_in_workers=in_workers)
        assert events == in_order, (late, in_workers)


def test_a_non_finite_step_is_skipped_on_the_device_and_stops_with_its_number():
    snapshots, opt, err, weight = _train(True, poison_step=3)
    assert err is not None and "gradient norm is" in str(err) and "at step 3" in str(err), err
    assert len(snapshots) == 3  # the hooks of steps 1 and 2 ran, step 3's never did
    # step 3's update was skipped on the device: the weights and the optimiser's own step
    # counts are those after step 2
    assert torch.equal(weight, snapshots[2]) and not torch.equal(weight, snapshots[1])
    states = list(opt.state.values())
    assert states and all(float(s["step"]) == 2.0 for s in states)


def test_the_late_check_is_used_only_where_the_update_can_be_skipped_on_the_device():
    p = [torch.nn.Parameter(torch.zeros(2))]
    off = torch.amp.GradScaler("cpu", enabled=False)
    assert late_check.supports_late_check(torch.optim.AdamW(p, fused=True), off)
    assert not late_check.supports_late_check(torch.optim.AdamW(p), off)  # foreach: no skip flag
    assert not late_check.supports_late_check(torch.optim.SGD(p, lr=0.1), off)
    assert not late_check.supports_late_check(torch.optim.AdamW(p, fused=True),
                                              torch.amp.GradScaler("cpu", enabled=True))


def test_gated_step_leaves_everything_untouched_when_told_to_skip():
    p = torch.nn.Parameter(torch.ones(3))
    opt = torch.optim.AdamW([p], lr=0.1, fused=True)
    p.grad = torch.ones(3)
    late_check.gated_step(opt, torch.ones(()))
    assert torch.equal(p.detach(), torch.ones(3)) and float(opt.state[p]["step"]) == 0.0
    assert not hasattr(opt, "found_inf") and not hasattr(opt, "grad_scale")
    late_check.gated_step(opt, torch.zeros(()))
    assert not torch.equal(p.detach(), torch.ones(3)) and float(opt.state[p]["step"]) == 1.0


@pytest.mark.parametrize("mask_in_workers", ["true", "false"])
def test_a_crash_after_a_periodic_checkpoint_resumes_step_exactly(tmp_path, mask_in_workers):
    """Checkpoints are written in the step hook, which now runs during the next step: what they
    hold (weights, optimiser, the engine's mask generator when it draws the masks) must still be
    the state after their own step."""
    import multiprocessing
    import os
    import signal
    import sys

    from greenmim.engine import checkpoint as ckpt
    from greenmim.engine.pretrain import main, run
    from test_pretrain import read_log

    def overrides(out):
        return tiny_overrides(out, "train.epochs=2", "checkpoint.every_steps=1", "mask.shared=false",
                              f"mask.in_workers={mask_in_workers}")

    straight, crashed = str(tmp_path / "straight"), str(tmp_path / "crashed")
    run(load_config(TINY_CFG, overrides(straight)))

    def killed_at_step_5():
        os.environ["GREENMIM_FAULT"] = "kill_at_step:5"
        torch.set_num_threads(1)
        sys.exit(main(["--config", TINY_CFG, *overrides(crashed)]))

    child = multiprocessing.get_context("fork").Process(target=killed_at_step_5)
    child.start()
    child.join(120)
    assert child.exitcode == -signal.SIGKILL
    assert ckpt.load(os.path.join(crashed, ckpt.LAST))["state"]["step"] == 5
    assert main(["--config", TINY_CFG, *overrides(crashed)]) == 0
    a, b = read_log(straight), read_log(crashed)
    assert sorted(a) == sorted(b) == list(range(1, 2 * STEPS + 1))
    assert all(abs(a[s] - b[s]) <= 1e-6 for s in a), (a, b)
    wa = ckpt.load(os.path.join(straight, ckpt.LAST))["model"]
    wb = ckpt.load(os.path.join(crashed, ckpt.LAST))["model"]
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
