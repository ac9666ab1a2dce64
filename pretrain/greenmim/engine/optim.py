"""AdamW with the usual weight-decay exclusions, and the per-iteration warm-up + cosine schedule."""
from __future__ import annotations

import math
from typing import Iterable, List, Optional, Sequence, Set

import torch
from torch import nn

# Parameters never decayed whatever their shape: tokens, position embeddings and bias tables.
NO_DECAY_KEYWORDS = ("mask_token", "cls_token", "pos_embed", "absolute_pos_embed",
                     "relative_position_bias_table")


def scaled_lr(blr: float, batch_size: int) -> float:
    """The linear scaling rule: lr = blr * global batch / 256."""
    return blr * batch_size / 256.0


def param_groups(model: nn.Module, weight_decay: float, skip: Iterable[str] = ()) -> List[dict]:
    """Two groups: decayed (>= 2-D weights) and not decayed (1-D params: biases and norms; tokens,
    position embeddings, relative position bias tables; names or name suffixes in `skip`)."""
    skip: Set[str] = set(skip)
    if hasattr(model, "no_weight_decay"):
        skip |= set(model.no_weight_decay())
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        excluded = (p.ndim <= 1 or any(k in name for k in NO_DECAY_KEYWORDS)
                    or any(name == s or name.endswith("." + s) for s in skip))
        (no_decay if excluded else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay},
            {"params": no_decay, "weight_decay": 0.0}]


def build_optimizer(model: nn.Module, lr: float, weight_decay: float = 0.05,
                    betas: Sequence[float] = (0.9, 0.95),
                    groups: Optional[List[dict]] = None) -> torch.optim.AdamW:
    """AdamW over `groups` (default param_groups(); fine-tuning passes layer-decay groups). The
    fused kernel (CPU and CUDA) is used where torch has it: on these CPUs it updates Swin-B's
    88 M parameters ~1.6x faster than the foreach version."""
    groups = param_groups(model, weight_decay) if groups is None else groups
    try:
        return torch.optim.AdamW(groups, lr=lr, betas=tuple(betas), fused=True)
    except (RuntimeError, TypeError, ValueError):
        return torch.optim.AdamW(groups, lr=lr, betas=tuple(betas))


def lr_at(step: int, total_steps: int, warmup_steps: int, base_lr: float, min_lr: float = 0.0) -> float:
    """Linear warm-up (base_lr * (step + 1) / warmup_steps) over warmup_steps, then half-cycle cosine from base_lr to min_lr.
    Steps are optimiser steps (the schedule is per iteration, not per epoch)."""
    if step < warmup_steps:
        return base_lr * (step + 1) / warmup_steps
    span = max(1, total_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / span)
    return min_lr + (base_lr - min_lr) * 0.5 * (1.0 + math.cos(math.pi * progress))


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_scale", 1.0)
