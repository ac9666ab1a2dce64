"""Image transforms for pretraining (the SimMIM / GreenMIM recipe)."""
from __future__ import annotations

from typing import Sequence, Tuple

from timm.data.constants import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from torchvision import transforms as T

from .crop import RandomResizedCropFlip


def build_pretrain_transform(img_size: int = 224, scale: Tuple[float, float] = (0.2, 1.0),
                             mean: Sequence[float] = IMAGENET_DEFAULT_MEAN,
                             std: Sequence[float] = IMAGENET_DEFAULT_STD, decode: str = "pil") -> T.Compose:
    """PIL RGB image -> normalised float tensor [3, img_size, img_size].

    RandomResizedCrop(img_size, scale, bicubic) + horizontal flip (one draw: crop.draw_crop, the
    same on every decoding path) + ToTensor + Normalize. The
    crop is the only strong augmentation: masking already makes the task hard, and colour jitter
    would change the pixels the model is asked to reconstruct.

    Args:
        img_size: output side in px; the green encoder needs a multiple of 32 (checked by the
            mask generator, not here, so the transform stays usable for other models).
        scale: area fraction range of the random crop.
        mean, std: per-channel normalisation (ImageNet defaults from timm).
        decode: "pil" or its synonym "cpu" (the transform gets decoded images) or "draft" (it
            gets file paths and decodes JPEGs at the smallest DCT scale the crop allows:
            fast_decode.py). Decoding on the training device is not a per-sample transform:
            see device_decode.py.
    """
    if decode not in ("pil", "cpu", "draft"):
        raise ValueError(f"decode must be 'pil' (or 'cpu') or 'draft', got {decode!r}")
    if decode == "draft":
        from .fast_decode import DraftRandomResizedCrop, FileTransform
        return FileTransform([
            DraftRandomResizedCrop(img_size, scale=tuple(scale)),  # flips too
            T.ToTensor(),
            T.Normalize(mean=tuple(mean), std=tuple(std)),
        ])
    return T.Compose([
        RandomResizedCropFlip(img_size, scale=tuple(scale)),
        T.ToTensor(),
        T.Normalize(mean=tuple(mean), std=tuple(std)),
    ])
