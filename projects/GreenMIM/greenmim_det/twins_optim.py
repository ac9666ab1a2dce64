"""Layer-wise lr decay for encoders that number their own layers (Green Twins-SVT).

Both this and optim.get_swin_layer_decay_param_groups ask the encoder which layer a parameter
belongs to (`encoder.layer_id(name)`, `encoder.num_layers`) through greenmim.engine.layer_decay;
this one finds any encoder with `layer_id` (Twins-SVT's layout: patch_embeds.i, blocks.i.j,
pos_block.i) and excludes only 1-D parameters and what encoder.no_weight_decay() names:

    lr = base_lr * layer_decay ** (sum(depths) + 1 - layer_id)     (heads, FPN, out norms: base_lr)
    weight decay 0 for norms, biases (< 2 dims) and what encoder.no_weight_decay() names (PEG).

    optimizer = L(torch.optim.AdamW)(
        params=L(get_encoder_layer_decay_param_groups)(base_lr="${..lr}", weight_decay="${..weight_decay}",
                                                       layer_decay=0.9),
        lr=1e-4, betas=(0.9, 0.999), weight_decay=0.05)
    # train_net sets optimizer.params.model = model before instantiating
"""
from __future__ import annotations

from typing import Any, Dict, List, Optional, Tuple

from torch import nn

from greenmim.engine.layer_decay import layer_scales

__all__ = ["get_encoder_layer_decay_param_groups"]


def _find_encoder(model: nn.Module) -> Tuple[str, nn.Module]:
    """(prefix, encoder) of the first sub-module named `encoder` that has layer_id and depths."""
    for name, module in model.named_modules():
        encoder = getattr(module, "encoder", None)
        if encoder is not None and hasattr(encoder, "layer_id") and hasattr(encoder, "depths"):
            return (name + "." if name else "") + "encoder.", encoder
    if hasattr(model, "layer_id") and hasattr(model, "depths"):
        return "", model
    raise ValueError(f"{type(model).__name__} holds no encoder with layer_id(); use "
                     "get_swin_layer_decay_param_groups for Swin encoders")


def get_encoder_layer_decay_param_groups(
    model: nn.Module,
    base_lr: float,
    weight_decay: float,
    layer_decay: float = 1.0,
    weight_decay_norm: float = 0.0,
    overrides: Optional[Dict[str, Dict[str, float]]] = None,
) -> List[Dict[str, Any]]:
    """Parameter groups ({"params", "lr", "weight_decay"}, one per distinct pair) with layer decay
    taken from the encoder's own `layer_id`. Arguments as in get_swin_layer_decay_param_groups."""
    prefix, encoder = _find_encoder(model)
    scales = layer_scales(model, layer_decay)  # greenmim's one layer-decay rule; ValueError outside (0, 1]
    no_decay = {prefix + n for n in getattr(encoder, "no_weight_decay", lambda: set())()}
    groups: Dict[Tuple[float, float], List[nn.Parameter]] = {}
    seen = set()
    for name, param in model.named_parameters():
        if not param.requires_grad or id(param) in seen:
            continue
        seen.add(id(param))
        lr = base_lr * scales[name]
        wd = weight_decay_norm if (param.ndim <= 1 or name in no_decay) else weight_decay
        for suffix, values in (overrides or {}).items():
            if name.endswith(suffix):
                lr, wd = values.get("lr", lr), values.get("weight_decay", wd)
        groups.setdefault((lr, wd), []).append(param)
    return [{"params": params, "lr": lr, "weight_decay": wd}
            for (lr, wd), params in sorted(groups.items(), key=lambda kv: kv[0])]
