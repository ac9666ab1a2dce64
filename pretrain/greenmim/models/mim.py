"""GreenMIM: the green encoder on visible units + the light decoder + per-unit pixel loss.

Like MAE's model, it returns its own loss, so the engine stays generic:

    out = model(images, mask)      # images [B, 3, H, W] normalised, mask bool [B, H/32, W/32]
    out["loss"].backward()

The mask is data: the engine draws it once per step (MaskGenerator.draw: a UnitMask, which says
whether the batch shares it) and passes it in; a plain bool tensor is checked here, once.
"""
from __future__ import annotations

from typing import Dict, Optional, Tuple

import torch
from torch import nn

from ..data.masking import MASK_UNIT, UnitMask, as_unit_mask, mask_grid_size
from .decoder import MIMDecoder
from .sparse_plans import SparsePlans


def patchify(images: torch.Tensor, unit: int = MASK_UNIT) -> torch.Tensor:
    """[B, C, H, W] -> [B, (H/unit)*(W/unit), unit*unit*C], each unit's pixels ordered (row, col, chan)."""
    b, c, h, w = images.shape
    x = images.reshape(b, c, h // unit, unit, w // unit, unit)
    x = torch.einsum("bchpwq->bhwpqc", x)
    return x.reshape(b, (h // unit) * (w // unit), unit * unit * c)


def unpatchify(units: torch.Tensor, grid: Tuple[int, int], unit: int = MASK_UNIT) -> torch.Tensor:
    """Inverse of patchify: [B, rows*cols, unit*unit*C] -> [B, C, rows*unit, cols*unit]."""
    b, _, d = units.shape
    rows, cols = grid
    c = d // (unit * unit)
    x = units.reshape(b, rows, cols, unit, unit, c)
    x = torch.einsum("bhwpqc->bchpwq", x)
    return x.reshape(b, c, rows * unit, cols * unit)


def unit_statistics(images: torch.Tensor, unit: int = MASK_UNIT, eps: float = 1e-6, units=None):
    """Per-unit mean and std (over its unit*unit*C values) -> ([B, L, 1], [B, L, 1]).
    `units`: patchify(images.float(), unit) when the caller has it already (saves a copy)."""
    target = patchify(images.float(), unit) if units is None else units
    var, mean = torch.var_mean(target, dim=-1, keepdim=True)
    return mean, (var + eps).sqrt()


def masked_unit_mse(pred: torch.Tensor, images: torch.Tensor, mask: torch.Tensor,
                    norm_pix: bool = True, unit: int = MASK_UNIT) -> torch.Tensor:
    """MSE between predicted and true unit pixels, averaged over the masked units only.

    With norm_pix the target of every unit is normalised by its own mean and variance (MAE's
    norm_pix_loss, eps 1e-6). Computed in float32 whatever the autocast dtype.
    """
    target = patchify(images.float(), unit)
    if norm_pix:
        mean, std = unit_statistics(images, unit, units=target)
        target = (target - mean) / std
    per_unit = (pred.float() - target).pow(2).mean(dim=-1)
    weight = mask.flatten(1).to(per_unit.dtype)
    return (per_unit * weight).sum() / weight.sum().clamp_min(1.0)


class GreenMIM(nn.Module):
    """Green encoder + MIM decoder.

    Args:
        encoder: a green encoder (greenmim.build_encoder): encoder(images, mask) returns the
            visible tokens of each stage, the last stage one token per visible unit in row-major
            order; encoder.norm is Swin's final LayerNorm, applied here to the last stage.
        img_size: training image size (multiple of 32), used to size the decoder's position table.
        decoder_dim, decoder_depth, decoder_num_heads, decoder_mlp_ratio: decoder size
            (paper: 512, 1, 16, 4).
        norm_pix_loss: normalise each unit's target pixels (paper: True).
    """

    def __init__(self, encoder: nn.Module, img_size: int = 224, decoder_dim: int = 512,
                 decoder_depth: int = 1, decoder_num_heads: int = 16, decoder_mlp_ratio: float = 4.0,
                 norm_pix_loss: bool = True, in_chans: int = 3, unit: int = MASK_UNIT):
        super().__init__()
        self.encoder = encoder
        self.unit = unit
        self.norm_pix_loss = norm_pix_loss
        self.decoder = MIMDecoder(encoder.num_features[-1], mask_grid_size(img_size, unit),
                                  dim=decoder_dim, depth=decoder_depth, num_heads=decoder_num_heads,
                                  mlp_ratio=decoder_mlp_ratio, unit=unit, in_chans=in_chans)

    host_mask = True  # forward plans the sparse layout from the mask on the host unless plans come with it

    def planner(self):
        """What the loader's workers run to plan this model's sparse path ahead of the step: the
        encoder's picklable planner (unit_mask [P, Hu, Wu] -> plans)."""
        return self.encoder.planner()

    def no_weight_decay(self) -> set:
        names = {"encoder." + n for n in getattr(self.encoder, "no_weight_decay", lambda: set())()}
        return names | {"decoder.mask_token"}

    def _encode_decode(self, images: torch.Tensor, mask: UnitMask, plans: Optional[SparsePlans]) -> torch.Tensor:
        # The encoder plans its sparse layout on the host: it gets the mask where it is (the engine
        # keeps masks on the CPU, so no device->host sync); the decoder gets it on the device.
        latent = self.encoder(images, mask, plans=plans)[-1]
        return self.decoder(self.encoder.norm(latent), mask.mask.to(latent.device, non_blocking=True))

    def _unit_mask(self, images: torch.Tensor, mask, plans: Optional[SparsePlans]) -> UnitMask:
        b, _, h, w = images.shape
        return as_unit_mask(mask, b, mask_grid_size((h, w), self.unit), plans)

    def predict(self, images: torch.Tensor, mask, plans: Optional[SparsePlans] = None) -> torch.Tensor:
        """[B, L, unit*unit*C] predicted (normalised, with norm_pix_loss) pixels of every unit.
        mask: bool [B, H/32, W/32] or a UnitMask. plans: the encoder planner's result for this
        mask, made ahead (then nothing here waits for the host: the mask was checked where it was
        planned)."""
        return self._encode_decode(images, self._unit_mask(images, mask, plans), plans)

    def forward(self, images: torch.Tensor, mask, plans: Optional[SparsePlans] = None) -> Dict[str, torch.Tensor]:
        """Returns {"loss": scalar, "pred": [B, L, unit*unit*C], "mask": bool [B, Hu, Wu] on the
        images' device}. The mask (a bool tensor or a UnitMask) may live on the CPU (preferred: no
        host sync) or on the images' device; plans as in predict."""
        unit_mask = self._unit_mask(images, mask, plans)
        pred = self._encode_decode(images, unit_mask, plans)
        on_device = unit_mask.mask.to(pred.device, non_blocking=True)
        loss = masked_unit_mse(pred, images, on_device, self.norm_pix_loss, self.unit)
        return {"loss": loss, "pred": pred, "mask": on_device}

    @torch.no_grad()
    def reconstruct(self, images: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Prediction in the input's (normalised image) space, [B, C, H, W]: each unit's
        normalised prediction is mapped back with the true unit's mean and std."""
        unit_mask = self._unit_mask(images, mask, None)
        pred = self._encode_decode(images, unit_mask, None).float()
        if self.norm_pix_loss:
            mean, std = unit_statistics(images, self.unit)
            pred = pred * std + mean
        return unpatchify(pred, unit_mask.mask.shape[1:], self.unit)
