"""Naming the architecture of a state dict, from the factory's tables (for messages and timm)."""
from __future__ import annotations

import collections
import re
from typing import Dict, Mapping, Optional

import torch

from ..models.factory import SWIN_ARCHS, TWINS_ARCHS
from .bias_table import window_of
from .errors import CheckpointError
from .layouts import TWINS_PATCH_EMBED

# timm model names by (our arch, window); timm's Swin-L at window 12 is its 384 px model
_TIMM_SWIN = {"swin_tiny": "swin_tiny_patch4_window7_224", "swin_small": "swin_small_patch4_window7_224",
              "swin_base": "swin_base_patch4_window{w}_{s}", "swin_large": "swin_large_patch4_window{w}_{s}"}


def _known(table: Dict[str, dict], embed_dim, depths) -> Optional[str]:
    for name, kw in table.items():
        if kw["embed_dim"] == embed_dim and tuple(kw["depths"]) == tuple(depths):
            return name
    return None


def swin_shape(sd: Mapping[str, torch.Tensor]) -> dict:
    """embed_dim, depths, num_heads and window of a Swin state dict in our names."""
    w = sd.get("patch_embed.proj.weight")
    blocks: Dict[int, set] = collections.defaultdict(set)
    heads: Dict[int, int] = {}
    window = None
    for k, v in sd.items():
        m = re.match(r"layers\.(\d+)\.blocks\.(\d+)\.", k)
        if m:
            i, j = int(m.group(1)), int(m.group(2))
            blocks[i].add(j)
            if k.endswith("relative_position_bias_table") and v.dim() == 2:
                heads.setdefault(i, int(v.shape[1]))
                if window is None:
                    try:
                        window = window_of(v.shape[0])
                    except CheckpointError:
                        pass
    return dict(embed_dim=int(w.shape[0]) if w is not None else None,
                depths=[len(blocks[i]) for i in sorted(blocks)],
                num_heads=[heads.get(i) for i in sorted(blocks)], window=window)


def twins_shape(sd: Mapping[str, torch.Tensor]) -> dict:
    """embed_dims and depths of a Twins state dict."""
    dims = [int(sd[f"patch_embeds.{i}.proj.weight"].shape[0]) for i in range(4) if f"patch_embeds.{i}.proj.weight" in sd]
    blocks: Dict[int, set] = collections.defaultdict(set)
    for k in sd:
        m = re.match(r"blocks\.(\d+)\.(\d+)\.", k)
        if m:
            blocks[int(m.group(1))].add(int(m.group(2)))
    return dict(embed_dims=dims, depths=[len(blocks[i]) for i in sorted(blocks)])


def arch_name(sd: Mapping[str, torch.Tensor]) -> Optional[str]:
    """The factory's name for the encoder in sd (our names), None for a custom one."""
    if TWINS_PATCH_EMBED in sd:
        s = twins_shape(sd)
        return _known(TWINS_ARCHS, s["embed_dims"][0] if s["embed_dims"] else None, s["depths"])
    s = swin_shape(sd)
    return _known(SWIN_ARCHS, s["embed_dim"], s["depths"])


def describe_encoder_arch(sd: Mapping[str, torch.Tensor]) -> str:
    """"swin_base (embed_dim=128, depths=[2, 2, 18, 2], num_heads=[4, 8, 16, 32], window=7)"."""
    name = arch_name(sd)
    if TWINS_PATCH_EMBED in sd:
        s = twins_shape(sd)
        return f"{name or 'custom twins'} (embed_dims={s['embed_dims']}, depths={s['depths']})"
    s = swin_shape(sd)
    return (f"{name or 'custom swin'} (embed_dim={s['embed_dim']}, depths={s['depths']}, "
            f"num_heads={s['num_heads']}, window={s['window']})")


def timm_model_name(sd: Mapping[str, torch.Tensor]) -> Optional[str]:
    """The timm model whose pretrained loading takes sd (our names), None if timm has none."""
    name = arch_name(sd)
    if name is None:
        return None
    if name.startswith("twins"):
        return name
    window = swin_shape(sd)["window"]
    if window not in (7, 12) or (window == 12 and name in ("swin_tiny", "swin_small")):
        return None
    return _TIMM_SWIN[name].format(w=window, s=224 if window == 7 else 384)
