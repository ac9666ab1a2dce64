"""Layer-wise learning-rate decay and weight-decay exclusions for AdamW, for every greenmim
encoder (Swin and Twins-SVT): the layer ids come from the encoder's own `layer_id(name)`.

For Swin, layer ids run across stages: the patch embedding is 0, block j of stage i is
``sum(depths[:i]) + j + 1``, the patch merging after stage i shares the id of that stage's last
block, and the last block has id ``sum(depths)``. A parameter with id ``l`` gets
``lr = base_lr * layer_decay ** (sum(depths) + 1 - l)``; everything outside the encoder (output
norms, FPN, heads) has id ``sum(depths) + 1`` and the full ``base_lr``.

Weight decay is 0 for norms, biases (any parameter with fewer than 2 dims), relative position
bias tables and whatever the encoder's ``no_weight_decay()`` names (Twins: its PEG weights).

`get_encoder_layer_decay_param_groups` plays the role of detectron2's
`get_default_optimizer_params` (whose ``lr_factor_func`` argument does not exist in v0.6):

    optimizer = L(torch.optim.AdamW)(
        params=L(get_encoder_layer_decay_param_groups)(base_lr="${..lr}", weight_decay="${..weight_decay}",
                                                       layer_decay=0.9),
        lr=1e-4, betas=(0.9, 0.999), weight_decay=0.05)
    # train_net sets optimizer.params.model = model before instantiating
"""
from __future__ import annotations

import re
from typing import Any, Dict, List, Optional, Sequence, Tuple

from torch import nn

from greenmim.engine.layer_decay import layer_scales

__all__ = [
    "get_encoder_layer_decay_param_groups",
    "swin_layer_id",
    "swin_lr_decay_factors",
    "get_swin_layer_decay_param_groups",
]

_BLOCK = re.compile(r"^layers\.(\d+)\.blocks\.(\d+)\.")
_DOWNSAMPLE = re.compile(r"^layers\.(\d+)\.downsample\.")
_NO_DECAY_NAMES = ("relative_position_bias_table", "absolute_pos_embed", "mask_token", "pos_embed")


def swin_layer_id(name: str, depths: Sequence[int]) -> int:
    """Layer id of an encoder parameter name (relative to the encoder, Microsoft Swin layout)."""
    total = sum(depths)
    if name.startswith("patch_embed.") or name in ("mask_token", "absolute_pos_embed"):
        return 0
    m = _BLOCK.match(name)
    if m:
        stage, block = int(m.group(1)), int(m.group(2))
        return sum(depths[:stage]) + block + 1
    m = _DOWNSAMPLE.match(name)
    if m:
        return sum(depths[: int(m.group(1)) + 1])
    # final norm and anything else the encoder may hold: treat as the top of the encoder
    return total


def swin_lr_decay_factors(depths: Sequence[int], layer_decay: float) -> List[float]:
    """lr factor per layer id 0..sum(depths)+1 (the last entry, 1.0, is for non-encoder params)."""
    n = sum(depths) + 1
    return [layer_decay ** (n - i) for i in range(n + 1)]


def _find_encoder(model: nn.Module) -> Tuple[str, Optional[nn.Module]]:
    """(prefix, encoder) of the first greenmim encoder (Swin or Twins: it numbers its own layers)
    inside the model, ("", None) if there is none."""
    for name, module in model.named_modules():
        encoder = getattr(module, "encoder", None)
        if encoder is not None and hasattr(encoder, "layer_id"):
            return (name + "." if name else "") + "encoder.", encoder
    return "", None


def get_encoder_layer_decay_param_groups(
    model: nn.Module,
    base_lr: float,
    weight_decay: float,
    layer_decay: float = 1.0,
    weight_decay_norm: float = 0.0,
    overrides: Optional[Dict[str, Dict[str, float]]] = None,
) -> List[Dict[str, Any]]:
    """Parameter groups for torch.optim.AdamW (or any optimizer) with layer-wise lr decay.

    Args:
        model: the detector (or a bare GreenBackbone / encoder).
        base_lr: learning rate of the top layers and the detection heads.
        weight_decay: weight decay of weight matrices / conv kernels.
        layer_decay: per-layer lr multiplier (1.0 disables layer decay).
        weight_decay_norm: weight decay of norms, biases and the excluded tables (usually 0).
        overrides: {param name suffix: {"lr": ..., "weight_decay": ...}} applied last.

    Returns:
        list of {"params": [...], "lr": ..., "weight_decay": ...}, one per distinct (lr, wd).
    """
    # the lr factors come from the encoder's own layer ids (greenmim's one layer-decay rule)
    scales = layer_scales(model, layer_decay)  # raises ValueError outside (0, 1]
    prefix, encoder = _find_encoder(model)
    if encoder is None and hasattr(model, "layer_id"):
        prefix, encoder = "", model
    no_decay = set()
    if encoder is not None and hasattr(encoder, "no_weight_decay"):
        no_decay = {prefix + n for n in encoder.no_weight_decay()}
    overrides = overrides or {}

    groups: Dict[Tuple[float, float], List[nn.Parameter]] = {}
    seen = set()
    for name, param in model.named_parameters():
        if not param.requires_grad or id(param) in seen:
            continue
        seen.add(id(param))
        lr = base_lr * scales[name]
        exclude = param.ndim <= 1 or name in no_decay or any(n in name for n in _NO_DECAY_NAMES)
        wd = weight_decay_norm if exclude else weight_decay
        for suffix, values in overrides.items():
            if name.endswith(suffix):
                lr = values.get("lr", lr)
                wd = values.get("weight_decay", wd)
        groups.setdefault((lr, wd), []).append(param)
    return [
        {"params": params, "lr": lr, "weight_decay": wd}
        for (lr, wd), params in sorted(groups.items(), key=lambda kv: (kv[0][0], kv[0][1]))
    ]


# The name projects/GreenMIM/README.md documented for LazyConfig files (`L(...)(...)` in users'
# own configs imports it), so it stays importable; it serves Twins encoders as well.
get_swin_layer_decay_param_groups = get_encoder_layer_decay_param_groups
