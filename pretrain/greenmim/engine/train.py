"""One training epoch: masks drawn once per micro-batch, AMP, accumulation, DDP, NaN/inf guard
(loss and gradients)."""
from __future__ import annotations

import contextlib
import math
import time
from dataclasses import asdict, dataclass
from typing import Callable, Optional, Tuple

import torch
from torch.utils.data import DataLoader

from ..config import UserError
from ..data.masking import MaskGenerator, UnitMask
from ..data.seeds import step_seed  # noqa: F401 (finetune_epoch imports it from here)
from . import dist as gdist
from .. import faults
from .late_check import StepOutcome, gated_step, supports_late_check
from .logger import TrainLogger
from .checkpoint import unwrap
from .optim import set_lr
from ..models.swin import plans_to


class TrainingError(UserError):
    """Training cannot go on (e.g. the loss diverged)."""


@dataclass
class TrainState:
    step: int = 0          # optimiser steps done in the whole run
    epoch: int = 0         # epoch the next step belongs to
    epoch_step: int = 0    # optimiser steps already done in that epoch

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass
class StepConfig:
    """What train_one_epoch needs besides the objects; built once by main from the config."""
    micro_batch: int                   # samples per process per forward
    accum_iter: int = 1
    total_steps: int = 1               # for the schedule and the ETA
    lr_fn: Callable[[int], float] = lambda step: 1e-4
    amp_dtype: Optional[torch.dtype] = None
    clip_grad: Optional[float] = None
    max_steps: Optional[int] = None
    log_every: int = 20
    seed: int = 0
    # (images, mask, plans) -> detached loss, gradients left in p.grad (cuda_graph.GraphedStep);
    # None: forward under autocast + backward here
    forward_backward: Optional[Callable] = None
    # read each step's loss and gradient norm on the host during the next step, the update gated
    # on the device (late_check.py); used where the optimiser supports it and the loader's workers
    # draw the masks, else one sync per step
    late_checks: bool = True

    @classmethod
    def from_config(cls, cfg: dict, micro_batch: int, steps_per_epoch: int, lr: float,
                    amp_dtype: Optional[torch.dtype], **extra) -> "StepConfig":
        """The step settings of a pretraining or fine-tuning config (its `train` and `log`
        sections): warm-up + cosine lr over train.epochs, accumulation, clipping, max_steps."""
        from .optim import lr_at
        t = cfg["train"]
        total = steps_per_epoch * t["epochs"]
        warmup = int(round(t["warmup_epochs"] * steps_per_epoch))
        return cls(micro_batch=micro_batch, accum_iter=t["accum_iter"], total_steps=total,
                   lr_fn=lambda s: lr_at(s, total, warmup, lr, t["min_lr"]), amp_dtype=amp_dtype,
                   clip_grad=t["clip_grad"], max_steps=t["max_steps"],
                   log_every=max(1, int(cfg["log"]["every_steps"])), seed=cfg["seed"], **extra)


def draw_masks(generator: MaskGenerator, micro_batch: int, world_size: int, rank: int) -> UnitMask:
    """This rank's masks [micro_batch, rows, cols] (checked, with the generator's shared flag).
    Every rank advances the (identically seeded) generator the same way: per-sample masks are
    drawn for the global micro-batch and sliced, so N processes use exactly the masks one process
    would; shared masks are one per process."""
    if generator.shared:
        masks = [generator.draw(micro_batch) for _ in range(world_size)]
        return masks[rank]
    return UnitMask(generator(micro_batch * world_size)[rank * micro_batch:(rank + 1) * micro_batch], False)


def apply_update(model: torch.nn.Module, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler,
                 clip_grad: Optional[float], grad_norm: Optional[float]) -> Optional[float]:
    """Clip (optionally), step through the GradScaler, free the gradients. Returns the gradient
    norm to log: the pre-clip norm from clip_grad_norm_ when clipping, else `grad_norm`."""
    if clip_grad:
        scaler.unscale_(optimizer)
        grad_norm = float(torch.nn.utils.clip_grad_norm_(model.parameters(), clip_grad))
    scaler.step(optimizer)
    scaler.update()
    optimizer.zero_grad(set_to_none=True)
    return grad_norm


def end_of_step(state, sc: StepConfig, logger: TrainLogger, on_step: Optional[Callable] = None) -> bool:
    """After an optimiser step: the step hook (periodic checkpoints), the fault-injection point,
    and whether sc.max_steps is reached (then the epoch's progress bar is closed)."""
    if on_step is not None:
        on_step(state)
    faults.maybe_fail_step()  # inert unless GREENMIM_FAULT asks for a crash here (tests)
    if sc.max_steps is not None and state.step >= sc.max_steps:
        logger.end_epoch()
        return True
    return False


def train_one_epoch(model: torch.nn.Module, loader: DataLoader, optimizer: torch.optim.Optimizer,
                    scaler: torch.amp.GradScaler, mask_generator: Optional[MaskGenerator], state: TrainState,
                    sc: StepConfig, device: torch.device, logger: TrainLogger,
                    on_step: Optional[Callable[[TrainState], None]] = None,
                    epochs: int = 1) -> bool:
    """Trains from state (epoch, epoch_step) to the end of the epoch or to sc.max_steps.

    Each optimiser step: seed the global RNG, set the lr, run accum_iter micro-batches
    (forward under autocast on CUDA, loss / accum_iter backward, DDP sync on the last only),
    check the loss over all processes and the gradient norm are finite, clip, step. With a fused
    AdamW, no GradScaler and masks from the loader's workers, the check is read on the host during
    the next step and the update is skipped on the device if it fails (late_check.py), so no step
    waits for the GPU. `on_step(state)` runs after every step once its check has passed (periodic
    checkpoints). Returns True when the epoch finished, False when max_steps hit.

    Raises:
        TrainingError: the loss or the gradient norm is NaN or infinite (no optimiser step is
            taken with it; with fp16 AMP the GradScaler skips such steps instead).
    """
    sampler = loader.batch_sampler
    sampler.set_epoch(state.epoch, state.epoch_step)
    world, rank = gdist.get_world_size(), gdist.get_rank()
    accum = sc.accum_iter
    ddp = hasattr(model, "no_sync")
    model.train()
    logger.start_epoch(state.epoch, epochs, sampler.steps_per_epoch, state.epoch_step)
    imgs_per_step = sc.micro_batch * world * accum
    clock = {"last": time.perf_counter(), "steps": 0, "time": 0.0}
    step_loss = torch.zeros((), device=device)
    lr = 0.0
    # the check read one step late needs masks from the loader's workers (see below)
    late = sc.late_checks and supports_late_check(optimizer, scaler)
    pending: Optional[StepOutcome] = None  # the last launched step, not yet read on the host

    def verified(outcome: StepOutcome) -> Tuple[float, float]:
        loss_value, raw_norm = outcome.read()
        if not math.isfinite(loss_value):
            logger.end_epoch()
            raise TrainingError(
                f"loss is {loss_value} at step {outcome.step} (epoch {outcome.epoch + 1}); training "
                f"stopped before applying it, the last checkpoint is left intact — lower "
                f"train.blr, set train.clip_grad or use train.amp=bf16, then resume")
        if not math.isfinite(raw_norm):
            logger.end_epoch()
            raise TrainingError(
                f"gradient norm is {raw_norm} at step {outcome.step} (epoch {outcome.epoch + 1}) with "
                f"a finite loss {loss_value:.4g}; training stopped before applying it, the last "
                f"checkpoint is left intact — lower train.blr, set train.clip_grad or use "
                f"train.amp=bf16, then resume")
        return loss_value, raw_norm

    def finish(outcome: StepOutcome, loss_value: float, grad_norm: Optional[float]) -> bool:
        """Logs a step whose update is applied (state.step == outcome.step) and runs its hook;
        True when sc.max_steps is reached."""
        now = time.perf_counter()
        dt, clock["last"] = now - clock["last"], now
        if state.epoch_step > 1 or clock["steps"]:  # the first step of an epoch includes loader start-up
            clock["steps"], clock["time"] = clock["steps"] + 1, clock["time"] + dt
        sec_per_step = clock["time"] / clock["steps"] if clock["steps"] else dt
        img_s = imgs_per_step / max(dt, 1e-9)
        eta = sec_per_step * (min(sc.total_steps, sc.max_steps or sc.total_steps) - state.step)
        logger.update_bar(1, loss_value, outcome.lr, img_s, eta)
        if state.step % sc.log_every == 0 or state.epoch_step == sampler.steps_per_epoch:
            record = {"step": state.step, "epoch": state.epoch + state.epoch_step / sampler.steps_per_epoch,
                      "loss": loss_value, "lr": outcome.lr, "img_per_s": img_s}
            if grad_norm is not None:
                record["grad_norm"] = grad_norm
            if scaler.is_enabled():
                record["loss_scale"] = float(scaler.get_scale())
            logger.log(record, state.step)
        return end_of_step(state, sc, logger, on_step)

    def settle_pending() -> None:
        """Reads the pending step (raises if it was not finite), logs it and runs its hook."""
        nonlocal pending
        outcome, pending = pending, None
        loss_value, raw_norm = verified(outcome)
        finish(outcome, loss_value, raw_norm)

    batches = iter(loader)
    try:
        for i, images in enumerate(batches):
            a = i % accum
            if a == 0:
                torch.manual_seed(step_seed(sc.seed, state.step, rank))
                lr = sc.lr_fn(state.step)
                set_lr(optimizer, lr)
                step_loss.zero_()
            if isinstance(images, (tuple, list)):  # (images, mask, plans) made by the loader's workers
                images, mask, plans = images
                plans = None if plans is None else plans_to(plans, device)
            else:  # masks stay on the CPU: the green encoder plans on the host
                # The engine's mask generator is checkpointed by the step hook, so each step is
                # read (and its hook run) before the next step draws its masks.
                late = False
                if pending is not None:
                    settle_pending()
                mask, plans = draw_masks(mask_generator, images.shape[0], world, rank), None
            images = images.to(device, non_blocking=True)
            if plans is not None or not getattr(unwrap(model), "host_mask", True):
                # Nothing reads this mask on the host any more: it travels with the images, so a
                # compiled or captured step has no host tensor inside.
                mask = mask.to(device, non_blocking=True)
            last = a == accum - 1
            sync = contextlib.nullcontext() if (last or not ddp) else model.no_sync()
            if sc.forward_backward is not None:
                loss = sc.forward_backward(images, mask, plans)
            else:
                with sync:
                    with torch.autocast(device.type, dtype=sc.amp_dtype or torch.float32,
                                        enabled=sc.amp_dtype is not None):
                        loss = (model(images, mask) if plans is None else model(images, mask, plans))["loss"]
                    scaler.scale(loss / accum).backward()
            step_loss += loss.detach().float() / accum
            if not last:
                continue

            # A finite loss can still give NaN/inf gradients (an overflow in backward), and one such
            # step would poison every weight. DDP has already averaged the gradients, so every rank
            # sees the same norm and all stop together. Under fp16 AMP the GradScaler does this
            # itself (it skips the step and lowers the loss scale), so the check is off there.
            check_grads = not scaler.is_enabled()
            grads = [p.grad for p in model.parameters() if p.grad is not None] if check_grads else []
            norm = torch.nn.utils.get_total_norm(grads).to(step_loss) if grads else torch.zeros_like(step_loss)
            outcome = StepOutcome(torch.stack([gdist.all_reduce_mean(step_loss), norm]), state.step + 1,
                                  state.epoch, lr)
            if late:
                # The previous step is read now, while this one runs; this step's update is
                # skipped on the device if it is not finite, and read during the next step.
                if pending is not None:
                    settle_pending()
                if sc.clip_grad:
                    torch.nn.utils.clip_grads_with_norm_(model.parameters(), sc.clip_grad, norm)
                gated_step(optimizer, outcome.skip_flag())
                optimizer.zero_grad(set_to_none=True)
                state.step += 1
                state.epoch_step += 1
                pending = outcome
                if sc.max_steps is not None and state.step >= sc.max_steps:
                    settle_pending()  # end_of_step closes the epoch's bar
                    return False
                continue
            # The loss and the norm come to the host in one transfer: one sync per step.
            loss_value, raw_norm = verified(outcome)
            grad_norm = apply_update(model, optimizer, scaler, sc.clip_grad, raw_norm if check_grads else None)
            state.step += 1
            state.epoch_step += 1
            if finish(outcome, loss_value, grad_norm):
                return False
        if pending is not None:
            settle_pending()
    finally:
        # A loader that decodes on the device is a generator holding a thread and the DataLoader
        # behind it: closing it stops both now, also when a step raised.
        close = getattr(batches, "close", None)
        if close is not None:
            close()
    logger.end_epoch()
    return True
