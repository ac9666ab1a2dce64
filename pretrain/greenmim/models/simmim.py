"""Dense SimMIM-style baseline, for side-by-side comparison with GreenMIM.

The encoder runs on the WHOLE image: after patch embedding, the tokens of masked units are
replaced by a learned mask token (owned here) and every block computes on every token. A linear
head (1x1 conv to unit*unit*3, then PixelShuffle) predicts the pixels from the last stage.

Loss (choose with `loss`):
    "l1"            SimMIM's: L1 on the (dataset-normalised) pixels of masked units, averaged
                    over masked pixels and channels. Default, to reproduce the baseline.
    "norm_pix_mse"  GreenMIM's: per-unit normalised pixels, MSE over masked units; use it when
                    loss values must be comparable with the green model.
The compute of both is the same, so speed and memory comparisons do not depend on the choice.
"""
from __future__ import annotations

import inspect
from typing import Dict, Optional

import torch
import torch.nn.functional as F
from torch import nn

from ..data.masking import MASK_UNIT, UnitMask, as_unit_mask, mask_grid_size, upsample_mask
from .sparse_plans import SparsePlans
from .mim import masked_unit_mse, patchify, unit_statistics, unpatchify


class SimMIM(nn.Module):
    """Args:
        encoder: a greenmim encoder whose forward accepts `mask_token` (dense masked path):
            encoder(images, mask, mask_token=t) returns the 4 dense NCHW stage maps.
        loss: "l1" (SimMIM) or "norm_pix_mse" (GreenMIM's target).
    """

    LOSSES = ("l1", "norm_pix_mse")

    def __init__(self, encoder: nn.Module, loss: str = "l1", in_chans: int = 3, unit: int = MASK_UNIT):
        super().__init__()
        if loss not in self.LOSSES:
            raise ValueError(f"unknown SimMIM loss {loss!r}; use one of {', '.join(self.LOSSES)}")
        if "mask_token" not in inspect.signature(encoder.forward).parameters:
            raise TypeError(f"{type(encoder).__name__}.forward has no mask_token argument; the dense "
                            "SimMIM baseline needs an encoder that supports it")
        self.encoder = encoder
        self.loss_type = loss
        self.unit = unit
        self.in_chans = in_chans
        self.mask_token = nn.Parameter(torch.zeros(1, 1, encoder.embed_dim))
        nn.init.trunc_normal_(self.mask_token, std=0.02)
        self.decoder = nn.Sequential(
            nn.Conv2d(encoder.num_features[-1], unit * unit * in_chans, kernel_size=1),
            nn.PixelShuffle(unit))

    host_mask = False  # the dense path never reads the mask on the host: the engine may hand it over on the device

    def planner(self) -> None:
        """The dense path needs no plan: the loader's workers only draw the masks."""
        return None

    def no_weight_decay(self) -> set:
        names = {"encoder." + n for n in getattr(self.encoder, "no_weight_decay", lambda: set())()}
        return names | {"mask_token"}

    def _device_mask(self, images: torch.Tensor, mask, plans: Optional[SparsePlans]) -> UnitMask:
        """The mask checked once (a UnitMask, or a tensor with plans, was checked where it was
        drawn: nothing here waits for the host), on the images' device."""
        b, _, h, w = images.shape
        return as_unit_mask(mask, b, mask_grid_size((h, w), self.unit), plans).to(images.device, non_blocking=True)

    def _pixels(self, images: torch.Tensor, mask: UnitMask) -> torch.Tensor:
        z = self.encoder(images, mask, mask_token=self.mask_token)[-1]        # [B, C4, H/32, W/32]
        z = self.encoder.norm(z.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)      # Swin's final norm
        return self.decoder(z)

    def predict_pixels(self, images: torch.Tensor, mask, plans: Optional[SparsePlans] = None) -> torch.Tensor:
        """[B, C, H, W] predicted pixels of the whole image. mask: bool [B, H/32, W/32] or a
        UnitMask; plans: the dense model needs none (a dict means the mask was checked where it
        was drawn)."""
        return self._pixels(images, self._device_mask(images, mask, plans))

    def forward(self, images: torch.Tensor, mask, plans: Optional[SparsePlans] = None) -> Dict[str, torch.Tensor]:
        """Returns {"loss": scalar, "pred": [B, C, H, W] pixels, "mask": bool [B, Hu, Wu] on the
        images' device}."""
        unit_mask = self._device_mask(images, mask, plans)
        rec = self._pixels(images, unit_mask)
        mask = unit_mask.mask
        if self.loss_type == "l1":
            pix_mask = upsample_mask(mask, self.unit)
            pix_mask = pix_mask.unsqueeze(1).to(torch.float32)
            err = F.l1_loss(rec.float(), images.float(), reduction="none")
            loss = (err * pix_mask).sum() / (pix_mask.sum() + 1e-5) / self.in_chans
        else:
            loss = masked_unit_mse(patchify(rec, self.unit), images, mask, True, self.unit)
        return {"loss": loss, "pred": rec, "mask": mask}

    @torch.no_grad()
    def reconstruct(self, images: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Prediction in the input's (normalised image) space, [B, C, H, W]."""
        unit_mask = self._device_mask(images, mask, None)
        rec = self._pixels(images, unit_mask).float()
        if self.loss_type == "norm_pix_mse":
            mean, std = unit_statistics(images, self.unit)
            rec = patchify(rec, self.unit) * std + mean
            rec = unpatchify(rec, unit_mask.mask.shape[1:], self.unit)
        return rec
