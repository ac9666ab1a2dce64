"""One fine-tuning epoch (Mixup / CutMix, AMP, accumulation, DDP, NaN/inf guard, EMA) and the
evaluation (top-1 / top-5 over every process's share of the val split)."""
from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass
from typing import Callable, Dict, Optional

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader

from . import dist as gdist
from .logger import TrainLogger
from .optim import set_lr
from .train import StepConfig, TrainingError, TrainState, apply_update, end_of_step, step_seed


@dataclass
class FinetuneState(TrainState):
    loss_sum: float = 0.0   # sum of this epoch's step losses so far (the epoch mean survives a resume)


def _check_finite(loss: float, norm: float, state: TrainState) -> None:
    where = f"at step {state.step + 1} (epoch {state.epoch + 1})"
    fix = ("training stopped before applying it, the last checkpoint is left intact — lower "
           "train.blr, set train.clip_grad or use train.amp=bf16, then resume")
    if not math.isfinite(loss):
        raise TrainingError(f"loss is {loss} {where}; {fix}")
    if not math.isfinite(norm):
        raise TrainingError(f"gradient norm is {norm} {where} with a finite loss {loss:.4g}; {fix}")


def train_one_epoch(model: nn.Module, loader: DataLoader, optimizer: torch.optim.Optimizer,
                    scaler: torch.amp.GradScaler, criterion: nn.Module, state: FinetuneState,
                    sc: StepConfig, device: torch.device, logger: TrainLogger,
                    mixup_fn: Optional[Callable] = None, ema=None,
                    on_step: Optional[Callable[[FinetuneState], None]] = None, epochs: int = 1) -> bool:
    """Trains from (state.epoch, state.epoch_step) to the end of the epoch or to sc.max_steps.

    Batches are (images [b, 3, H, W], labels [b]). Each optimiser step seeds torch's RNG from
    (seed, step, rank) (drop path, random erasing on the GPU) and numpy's from (seed, step), so
    Mixup / CutMix draw the same mixing on every rank and after a resume; mixup_fn turns the labels
    into soft targets [b, classes] for `criterion`. Returns True when the epoch finished.

    Raises:
        TrainingError: NaN/inf loss or gradient norm (no step is taken with it).
    """
    sampler = loader.batch_sampler
    sampler.set_epoch(state.epoch, state.epoch_step)
    rank, accum = gdist.get_rank(), sc.accum_iter
    ddp = hasattr(model, "no_sync")
    model.train()
    logger.start_epoch(state.epoch, epochs, sampler.steps_per_epoch, state.epoch_step)
    imgs_per_step = sc.micro_batch * gdist.get_world_size() * accum
    t_last = time.perf_counter()
    step_loss = torch.zeros((), device=device)
    lr = 0.0
    for i, (images, labels) in enumerate(loader):
        a = i % accum
        if a == 0:
            torch.manual_seed(step_seed(sc.seed, state.step, rank))
            np.random.seed(step_seed(sc.seed, state.step, 0) % (2 ** 32))
            lr = sc.lr_fn(state.step)
            set_lr(optimizer, lr)
            step_loss.zero_()
        images = images.to(device, non_blocking=True)
        labels = labels.to(device, non_blocking=True)
        if mixup_fn is not None:
            images, labels = mixup_fn(images, labels)
        last = a == accum - 1
        with contextlib.nullcontext() if (last or not ddp) else model.no_sync():
            with torch.autocast(device.type, dtype=sc.amp_dtype or torch.float32,
                                enabled=sc.amp_dtype is not None):
                loss = criterion(model(images), labels)
            scaler.scale(loss / accum).backward()
        step_loss += loss.detach().float() / accum
        if not last:
            continue
        # the loss and the gradient norm reach the host in one transfer (one sync per step)
        check_grads = not scaler.is_enabled()  # fp16: the GradScaler skips bad steps itself
        grads = [p.grad for p in model.parameters() if p.grad is not None] if check_grads else []
        norm = torch.nn.utils.get_total_norm(grads).to(step_loss) if grads else torch.zeros_like(step_loss)
        loss_value, grad_norm = torch.stack([gdist.all_reduce_mean(step_loss), norm]).tolist()
        if not math.isfinite(loss_value) or not math.isfinite(grad_norm):
            logger.end_epoch()
            _check_finite(loss_value, grad_norm, state)
        grad_norm = apply_update(model, optimizer, scaler, sc.clip_grad, grad_norm)
        state.step += 1
        state.epoch_step += 1
        state.loss_sum += loss_value
        if ema is not None:
            ema.update(model.module if ddp else model, step=state.step)

        now = time.perf_counter()
        dt, t_last = now - t_last, now
        eta = dt * (min(sc.total_steps, sc.max_steps or sc.total_steps) - state.step)
        logger.update_bar(1, loss_value, lr, imgs_per_step / max(dt, 1e-9), eta)
        if state.step % sc.log_every == 0 or state.epoch_step == sampler.steps_per_epoch:
            logger.log({"step": state.step,
                        "epoch": state.epoch + state.epoch_step / sampler.steps_per_epoch,
                        "loss": loss_value, "lr": lr, "grad_norm": grad_norm,
                        "img_per_s": imgs_per_step / max(dt, 1e-9)}, state.step)
        if end_of_step(state, sc, logger, on_step):
            return False
    logger.end_epoch()
    return True


@torch.no_grad()
def evaluate(model: nn.Module, loader: DataLoader, device: torch.device,
             amp_dtype: Optional[torch.dtype] = None) -> Dict[str, float]:
    """Top-1 / top-5 accuracy (%) and mean cross-entropy over every process's share of the val
    split (loader: this process's images, (images, labels) batches, no augmentation, no mixup).
    -> {"acc1", "acc5", "loss", "images"}."""
    was_training = model.training
    model.eval()
    totals = torch.zeros(4, dtype=torch.float64)  # correct@1, correct@5, loss sum, images
    for images, labels in loader:
        images, labels = images.to(device, non_blocking=True), labels.to(device, non_blocking=True)
        with torch.autocast(device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
            logits = model(images).float()
        top = logits.topk(min(5, logits.shape[1]), dim=1).indices
        hit = top.eq(labels[:, None])
        totals += torch.tensor([hit[:, :1].sum().item(), hit.sum().item(),
                                nn.functional.cross_entropy(logits, labels, reduction="sum").item(),
                                labels.numel()], dtype=torch.float64)
    if gdist.is_initialized():
        totals = totals.to(device)  # nccl reduces device tensors only
        dist.all_reduce(totals)
        totals = totals.cpu()
    model.train(was_training)
    n = max(totals[3].item(), 1.0)
    return {"acc1": 100.0 * totals[0].item() / n, "acc5": 100.0 * totals[1].item() / n,
            "loss": totals[2].item() / n, "images": int(totals[3].item())}
