"""What every GreenMIM encoder does with its input images, whatever its blocks (Swin, Twins)."""
from __future__ import annotations

from typing import Tuple

import torch

from ..data.masking import MASK_UNIT, upsample_mask


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
