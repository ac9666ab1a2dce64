"""Reconstruction figure: original | masked input | prediction | prediction with visible pasted."""
from __future__ import annotations

import os
from typing import Sequence

import numpy as np
import torch
from PIL import Image, ImageDraw
from timm.data.constants import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

from ..data.masking import MASK_UNIT, upsample_mask

COLUMNS = ("original", "masked", "prediction", "pred + visible")


def unit_mask_to_pixels(mask: torch.Tensor, unit: int = MASK_UNIT) -> torch.Tensor:
    """bool [B, rows, cols] -> bool [B, 1, rows*unit, cols*unit]."""
    return upsample_mask(mask, unit).unsqueeze(1)


@torch.no_grad()
def reconstruction_panels(model: torch.nn.Module, images: torch.Tensor, mask: torch.Tensor,
                          mean: Sequence[float] = IMAGENET_DEFAULT_MEAN,
                          std: Sequence[float] = IMAGENET_DEFAULT_STD) -> torch.Tensor:
    """[B, 4, 3, H, W] images in 0..1: original, masked (masked units grey), prediction, and the
    prediction with the visible units replaced by the original. `model` has reconstruct()."""
    was_training = model.training
    model.eval()
    try:
        rec = model.reconstruct(images, mask).float()
    finally:
        model.train(was_training)
    m = torch.tensor(mean, device=images.device).view(1, 3, 1, 1)
    s = torch.tensor(std, device=images.device).view(1, 3, 1, 1)
    orig = (images.float() * s + m).clamp(0, 1)
    pred = (rec * s + m).clamp(0, 1)
    pix = unit_mask_to_pixels(mask.to(images.device))
    masked = torch.where(pix, torch.full_like(orig, 0.5), orig)
    pasted = torch.where(pix, pred, orig)
    return torch.stack([orig, masked, pred, pasted], dim=1).cpu()


def save_panels(panels: torch.Tensor, path: str, pad: int = 2, header: int = 14) -> str:
    """Writes [B, 4, 3, H, W] panels as one PNG grid (rows = samples) with column titles."""
    b, ncol, _, h, w = panels.shape
    canvas = np.full((header + b * (h + pad) + pad, ncol * (w + pad) + pad, 3), 255, np.uint8)
    arr = (panels.permute(0, 1, 3, 4, 2).numpy() * 255).round().astype(np.uint8)
    for i in range(b):
        for j in range(ncol):
            y, x = header + pad + i * (h + pad), pad + j * (w + pad)
            canvas[y:y + h, x:x + w] = arr[i, j]
    img = Image.fromarray(canvas)
    draw = ImageDraw.Draw(img)
    for j, title in enumerate(COLUMNS[:ncol]):
        draw.text((pad + j * (w + pad) + 2, 1), title, fill=(0, 0, 0))
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    img.save(path)
    return path


def save_reconstruction(model: torch.nn.Module, images: torch.Tensor, mask: torch.Tensor,
                        path: str) -> str:
    return save_panels(reconstruction_panels(model, images, mask), path)
