"""What every GreenMIM encoder does with its input images, whatever its blocks (Swin, Twins)."""
from __future__ import annotations

import dataclasses
from typing import Callable, Optional, Tuple

import torch
from timm.layers import trunc_normal_
from torch import nn

from ..data.masking import MASK_UNIT, upsample_mask


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


def plans_to(plans: dict, device: torch.device) -> dict:
    """Plans with every tensor moved to `device` (non-blocking)."""
    return map_tensors(plans, lambda t: t.to(device, non_blocking=True))


def init_transformer_weights(m: nn.Module) -> None:
    """Swin's / Twins' initialisation of linears (truncated normal, std 0.02) and LayerNorms."""
    if isinstance(m, nn.Linear):
        trunc_normal_(m.weight, std=0.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, nn.LayerNorm):
        nn.init.ones_(m.weight)
        nn.init.zeros_(m.bias)


class MaskedImageInput:
    """Mixin for encoders with `in_chans` and `tokens_per_unit` (= MASK_UNIT // patch size)."""

    in_chans: int
    tokens_per_unit: int

    def _replace_masked(self, x: torch.Tensor, mask: torch.Tensor, mask_token: torch.Tensor) -> torch.Tensor:
        """SimMIM input: x [B, H, W, C] patch tokens, mask bool [B, Hu, Wu] -> masked tokens replaced
        by mask_token [C] (every token of a masked unit)."""
        per_unit = self.tokens_per_unit
        w = upsample_mask(mask, per_unit).unsqueeze(-1).to(x.dtype)
        return x * (1 - w) + mask_token.reshape(1, 1, 1, -1).to(x.dtype) * w

    @staticmethod
    def _unit_grid(images: torch.Tensor) -> Tuple[int, int]:
        """Mask-unit grid (Hu, Wu) of images [B, C, H, W]."""
        return images.shape[-2] // MASK_UNIT, images.shape[-1] // MASK_UNIT

    def _check_images(self, images: torch.Tensor) -> None:
        """One clear ValueError for a wrong layout or a size the mask unit does not divide."""
        if images.dim() != 4 or images.shape[1] != self.in_chans:
            raise ValueError(f"expected images [B, {self.in_chans}, H, W], got {tuple(images.shape)}")
        h, w = images.shape[-2:]
        if h % MASK_UNIT or w % MASK_UNIT:
            raise ValueError(f"image size {h}x{w} is not a multiple of {MASK_UNIT}; resize or pad "
                             f"to e.g. {-(-h // MASK_UNIT) * MASK_UNIT}x{-(-w // MASK_UNIT) * MASK_UNIT}")

    def _sparse_plans(self, images: torch.Tensor, mask: torch.Tensor, plans: Optional[dict]) -> dict:
        """The plans of this step: made here from the mask (on the host, once per step, one plan
        when every sample has the same mask) unless given; moved to the images' device."""
        if plans is None:
            mask = mask.cpu()
            plan_mask = mask[:1] if bool((mask == mask[:1]).all()) else mask
            plans = self.plan_sparse(plan_mask, device=images.device)
        elif plans["embed_index"].device != images.device:
            plans = plans_to(plans, images.device)
        p = plans["plan_samples"]
        if p not in (1, images.shape[0]):
            raise ValueError(f"plans were made for {p} masks; this batch has {images.shape[0]} samples")
        return plans
