"""What every GreenMIM encoder shares, whatever its blocks (Swin, Twins): the forward contract and
timm's uniform model surface.

    encoder(images)                       -> [B, C_i, H/2^(i+2), W/2^(i+2)] for each stage i (dense)
    encoder(images, mask)                 -> [B, N_i, C_i] visible tokens, row-major (sparse)
    encoder(images, mask, mask_token=t)   -> dense maps with masked patches replaced by t (SimMIM)
    encoder(images, mask, plans=plans)    -> sparse, planned ahead (no host sync)
    encoder.forward_masked_reference(images, mask)  dense maps the sparse path equals where visible

mask: bool [B, H/32, W/32] (True = masked 32 px unit, the same visible count in every sample) or a
data.masking.UnitMask, which was checked when it was made.
"""
from __future__ import annotations

from typing import List, Optional, Tuple

import torch
from timm.layers import trunc_normal_
from torch import nn

from ..data.masking import MASK_UNIT, UnitMask, as_unit_mask, upsample_mask
from .sparse_plans import SparsePlans

ATTENTION_MODES = ("auto", "group", "ragged")


def pair(v) -> Tuple[int, int]:
    """An int or an (H, W) pair -> (H, W)."""
    return (int(v), int(v)) if isinstance(v, int) else (int(v[0]), int(v[1]))


def check_img_size(img_size: Tuple[int, int]) -> None:
    for s in img_size:
        if s <= 0 or s % MASK_UNIT:
            raise ValueError(f"img_size {img_size} must be positive multiples of {MASK_UNIT}")


def init_transformer_weights(m: nn.Module) -> None:
    """Swin's / Twins' initialisation of linears (truncated normal, std 0.02) and LayerNorms."""
    if isinstance(m, nn.Linear):
        trunc_normal_(m.weight, std=0.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, nn.LayerNorm):
        nn.init.ones_(m.weight)
        nn.init.zeros_(m.bias)


class GreenEncoder(nn.Module):
    """Base of the green encoders: forward dispatch, the masked reference, input checks, weight
    init, layer ids for layer decay, frozen modules and gradient checkpointing.

    A subclass sets `in_chans`, `tokens_per_unit` (= MASK_UNIT // patch size) and `depths`, and
    provides:
        embed(images [B, C, H, W]) -> [B, H/4, W/4, C_0] patch tokens (dense path)
        forward_dense(x [B, H/4, W/4, C_0], unit_mask bool [B, Hu, Wu] or None) -> per-stage maps;
            with unit_mask, masked tokens are removed from every attention's keys
        forward_sparse(images, plans) -> per-stage visible tokens [B, N_i, C_i]
        planner() -> a picklable callable unit_mask [P, Hu, Wu] -> plans (P = 1: shared by the batch)
        stem_module() and stage_modules(i): what freezing stage i means (frozen_modules)
        layer_id(name): layer-decay id of a parameter name
    and may override `no_decay_keywords` and `_init_weights`.
    """

    in_chans: int
    tokens_per_unit: int
    depths: Tuple[int, ...]
    no_decay_keywords: Tuple[str, ...] = ()  # parameters whose names contain one train without decay

    _init_weights = staticmethod(init_transformer_weights)

    def init_weights(self) -> None:
        self.apply(self._init_weights)

    # ---- timm-style model surface -------------------------------------------------------------
    def no_weight_decay_keywords(self) -> set:
        return set(self.no_decay_keywords)

    def no_weight_decay(self) -> set:
        return {n for n, _ in self.named_parameters() if any(k in n for k in self.no_decay_keywords)}

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute every block in the backward (less memory); each module with a
        `grad_checkpointing` flag (the encoder or its stages) honours it."""
        for m in self.modules():
            if hasattr(m, "grad_checkpointing"):
                m.grad_checkpointing = enable

    @property
    def num_layers(self) -> int:
        """Layer-decay depth: encoder parameters have ids 0 .. num_layers - 1, whatever sits on
        top of the encoder (a classifier head, FPN) has id num_layers."""
        return sum(self.depths) + 1

    def layer_id(self, name: str) -> int:
        raise NotImplementedError

    def stem_module(self) -> nn.Module:
        raise NotImplementedError

    def stage_modules(self, i: int) -> List[nn.Module]:
        raise NotImplementedError

    def frozen_modules(self, frozen_stages: int) -> List[nn.Module]:
        """Modules to freeze for detection: 0 = the first patch embedding, k >= 1 also stages
        0..k-1 with what leaves them (patch merging / the next patch embedding; mmdet's convention)."""
        modules: List[nn.Module] = [self.stem_module()] if frozen_stages >= 0 else []
        for i in range(max(frozen_stages, 0)):
            modules += self.stage_modules(i)
        return modules

    # ---- forward --------------------------------------------------------------------------------
    def forward(self, images: torch.Tensor, mask=None, mask_token: Optional[torch.Tensor] = None,
                plans: Optional[SparsePlans] = None) -> List[torch.Tensor]:
        """plans: optional result of `self.planner()(mask)`, made ahead, e.g. in a DataLoader
        worker; by default the sparse path plans here, once per call."""
        self._check_images(images)
        if mask is None:
            return self.forward_dense(self.embed(images))
        unit_mask = as_unit_mask(mask, images.shape[0], self._unit_grid(images), plans)
        if mask_token is not None:
            return self.forward_dense(self._replace_masked(self.embed(images), unit_mask.mask, mask_token))
        return self.forward_sparse(images, self._sparse_plans(images, unit_mask, plans))

    def forward_masked_reference(self, images: torch.Tensor, mask) -> List[torch.Tensor]:
        """Dense path with masked tokens removed from every attention's keys (and zeroed for
        convolutions): what the sparse path must equal at visible positions. Slow (computes
        masked tokens too); for tests."""
        self._check_images(images)
        unit_mask = as_unit_mask(mask, images.shape[0], self._unit_grid(images))
        return self.forward_dense(self.embed(images), unit_mask=unit_mask.mask)

    def _replace_masked(self, x: torch.Tensor, mask: torch.Tensor, mask_token: torch.Tensor) -> torch.Tensor:
        """SimMIM input: x [B, H, W, C] patch tokens, mask bool [B, Hu, Wu] -> masked tokens replaced
        by mask_token [C] (every token of a masked unit)."""
        w = upsample_mask(mask.to(x.device, non_blocking=True), self.tokens_per_unit).unsqueeze(-1).to(x.dtype)
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

    def _sparse_plans(self, images: torch.Tensor, unit_mask: UnitMask,
                      plans: Optional[SparsePlans]) -> SparsePlans:
        """The plans of this step: made here from the mask (on the host, once per step, one plan
        when the batch shares its mask) unless given; moved to the images' device (a no-op for
        plans the engine moved with the batch)."""
        if plans is None:
            plans = self.plan_sparse(unit_mask, device=images.device)
        elif plans.device != images.device:
            plans = plans.to(images.device)
        p = plans.plan_samples
        if p not in (1, images.shape[0]):
            raise ValueError(f"plans were made for {p} masks; this batch has {images.shape[0]} samples")
        return plans

    def planner(self):
        """This encoder's planner: a picklable callable of plain values, unit_mask [P, Hu, Wu] ->
        plans (P = 1: shared by the batch), that DataLoader workers run ahead of the step."""
        raise NotImplementedError

    def plan_sparse(self, unit_mask, device=None) -> SparsePlans:
        """Every index the sparse path needs, from a UnitMask or a bool unit mask [P, Hu, Wu]
        (P = 1: shared by the batch): made once per step on the host; blocks only read it."""
        return self.planner()(unit_mask, device)
