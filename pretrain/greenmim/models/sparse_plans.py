"""What an encoder's planner hands its sparse path: a typed object per encoder family.

The engine and the shared code read only the fields of `SparsePlans`; each encoder reads its own
subclass (swin.SwinPlans, twins_plans.TwinsPlans). Plans are made on the host, in the loader's
workers, pinned there and moved to the device once, with the batch.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .tensor_tree import map_tensors


@dataclass
class SparsePlans:
    """embed_index: long [P*N_0], the visible first-stage patches in P stacked patch grids.
    plan_samples: P, 1 when the batch shares one mask, else the batch size.
    static_fallback: the mask did not fit the tight static table and took the bound one (always
    False without static shapes)."""
    embed_index: torch.Tensor
    plan_samples: int
    static_fallback: bool

    @property
    def device(self) -> torch.device:
        return self.embed_index.device

    def to(self, device, non_blocking: bool = True) -> "SparsePlans":
        """The same plans with every tensor on `device`."""
        return map_tensors(self, lambda t: t.to(device, non_blocking=non_blocking))

    def pin_memory(self) -> "SparsePlans":
        """A copy in pinned host memory (DataLoader's pin_memory calls this)."""
        return map_tensors(self, torch.Tensor.pin_memory)
