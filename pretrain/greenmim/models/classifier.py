"""Image classifiers on the green encoders: dense path, final LayerNorm, global average pool, linear
head — Swin's and Twins' own classification model.

    model = build_classifier("swin_base", num_classes=1000, drop_path_rate=0.1)
    logits = model(images)             # images [B, 3, H, W] -> logits [B, num_classes]

The classifier subclasses its encoder (as Hiera's MAE subclasses Hiera) instead of wrapping it,
so its state dict has the original names (patch_embed.*, layers.*, norm.*, head.*): a fine-tuned
checkpoint loads into timm's / Microsoft's Swin classifier and, without the head, into detection.
"""
from __future__ import annotations

from typing import Dict, Type

import torch
from timm.layers import trunc_normal_
from torch import nn

from .swin import GreenSwinTransformer
from .twins import TWINS_ARCHS, GreenTwinsSVT
from .factory import SWIN_ARCHS


class ClassifierMixin:
    """Adds `head` and the classification forward to an encoder class (put it first in the bases).

    The encoder's `norm` (its final LayerNorm, channels last) is the classifier's final norm; the
    head has layer-decay id num_layers, i.e. the full learning rate."""

    def _add_head(self, num_classes: int) -> None:
        self.num_classes = int(num_classes)
        self.head = nn.Linear(self.num_features[-1], self.num_classes)
        trunc_normal_(self.head.weight, std=0.02)
        nn.init.zeros_(self.head.bias)

    def layer_id(self, name: str) -> int:
        return self.num_layers if name.startswith("head.") else super().layer_id(name)

    def forward_features(self, images: torch.Tensor) -> torch.Tensor:
        """images [B, 3, H, W] -> pooled features [B, C] (normed last stage, averaged over H x W)."""
        last = super().forward(images)[-1]            # dense path: [B, C, H/32, W/32]
        return self.norm(last.permute(0, 2, 3, 1)).mean(dim=(1, 2))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """images [B, 3, H, W] -> logits [B, num_classes]."""
        return self.head(self.forward_features(images))


class GreenSwinClassifier(ClassifierMixin, GreenSwinTransformer):
    """GreenSwinTransformer + head. Args: num_classes, then GreenSwinTransformer's."""

    def __init__(self, num_classes: int = 1000, **encoder_kwargs):
        GreenSwinTransformer.__init__(self, **encoder_kwargs)
        self._add_head(num_classes)


class GreenTwinsClassifier(ClassifierMixin, GreenTwinsSVT):
    """GreenTwinsSVT + head. Args: num_classes, then GreenTwinsSVT's."""

    def __init__(self, num_classes: int = 1000, **encoder_kwargs):
        GreenTwinsSVT.__init__(self, **encoder_kwargs)
        self._add_head(num_classes)


_FAMILIES: Dict[str, tuple] = {
    **{name: (GreenSwinClassifier, d) for name, d in SWIN_ARCHS.items()},
    **{name: (GreenTwinsClassifier, d) for name, d in TWINS_ARCHS.items()},
}


def classifier_class(arch: str) -> Type[nn.Module]:
    if arch not in _FAMILIES:
        raise ValueError(f"no classifier for encoder '{arch}'; choose one of {', '.join(sorted(_FAMILIES))}")
    return _FAMILIES[arch][0]


def build_classifier(arch: str, num_classes: int, **overrides) -> nn.Module:
    """Classifier of encoder `arch` (a name of greenmim.list_encoders()) with build_encoder-style
    keyword overrides (img_size, window_size, drop_path_rate, depths, ...)."""
    cls = classifier_class(arch)
    return cls(num_classes=num_classes, **{**_FAMILIES[arch][1], **overrides})
