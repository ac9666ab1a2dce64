"""Moving what encoders take besides images (plans, batches) from device to device."""
from __future__ import annotations

import dataclasses
from typing import Callable

import torch


def map_tensors(obj, fn: Callable[[torch.Tensor], torch.Tensor]):
    """obj with fn applied to every tensor inside its dicts, lists, tuples and dataclasses (plans,
    batches); everything else is returned as it is."""
    if isinstance(obj, torch.Tensor):
        return fn(obj)
    if isinstance(obj, dict):
        return {k: map_tensors(v, fn) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(map_tensors(o, fn) for o in obj)
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return dataclasses.replace(obj, **{f.name: map_tensors(getattr(obj, f.name), fn)
                                           for f in dataclasses.fields(obj) if f.init})
    return obj


def plans_to(plans, device: torch.device):
    """Plans with every tensor moved to `device` (non-blocking)."""
    return map_tensors(plans, lambda t: t.to(device, non_blocking=True))
