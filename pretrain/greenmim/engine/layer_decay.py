"""Layer-wise learning-rate decay that asks the encoder for its layer ids.

An encoder (GreenSwinTransformer, GreenTwinsSVT) says which layer a parameter belongs to,
`encoder.layer_id(name)` in 0 .. num_layers - 1, and how deep it is, `encoder.num_layers`.
A parameter of layer l trains with lr * layer_decay ** (num_layers - l); whatever sits outside the
encoder (a classifier head, FPN, detection heads) has id num_layers and the full lr. Fine-tuning
and detection both build their optimiser groups from `layer_scales`, so the rule exists once.
"""
from __future__ import annotations

from typing import Dict, Iterable, List, Optional, Tuple

from torch import nn

from .optim import NO_DECAY_KEYWORDS


def find_encoder(model: nn.Module) -> Tuple[str, Optional[nn.Module]]:
    """(name prefix, module) of the first module (the model itself included) that has `layer_id`
    and `num_layers`; ("", None) when there is none."""
    for name, module in model.named_modules():
        if callable(getattr(module, "layer_id", None)) and hasattr(module, "num_layers"):
            return (name + "." if name else ""), module
    return "", None


def layer_scales(model: nn.Module, layer_decay: float) -> Dict[str, float]:
    """lr multiplier of every named parameter: layer_decay ** (num_layers - layer_id) inside the
    encoder, 1.0 outside it (and everywhere when layer_decay is 1 or no encoder is found)."""
    if not 0.0 < layer_decay <= 1.0:
        raise ValueError(f"layer_decay must be in (0, 1], got {layer_decay}")
    prefix, encoder = find_encoder(model)
    scales = {}
    for name, _ in model.named_parameters():
        if encoder is not None and name.startswith(prefix):
            layer = encoder.layer_id(name[len(prefix):])
            scales[name] = float(layer_decay ** (encoder.num_layers - layer))
        else:
            scales[name] = 1.0
    return scales


def layer_decay_param_groups(model: nn.Module, weight_decay: float, layer_decay: float = 1.0,
                             skip: Iterable[str] = ()) -> List[dict]:
    """AdamW groups, one per distinct (lr scale, weight decay): {"params", "weight_decay",
    "lr_scale"}; optim.set_lr multiplies the scheduled lr by "lr_scale".

    Weight decay is 0 for 1-D parameters (biases, norms), tokens, position embeddings and bias
    tables, and for what the model's or the encoder's no_weight_decay() names (or `skip`)."""
    scales = layer_scales(model, layer_decay)
    prefix, encoder = find_encoder(model)
    skip = set(skip)
    if hasattr(model, "no_weight_decay"):
        skip |= set(model.no_weight_decay())
    if encoder is not None and encoder is not model and hasattr(encoder, "no_weight_decay"):
        skip |= {prefix + n for n in encoder.no_weight_decay()}
    groups: Dict[Tuple[float, float], List[nn.Parameter]] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        excluded = (p.ndim <= 1 or any(k in name for k in NO_DECAY_KEYWORDS)
                    or any(name == s or name.endswith("." + s) for s in skip))
        groups.setdefault((scales[name], 0.0 if excluded else weight_decay), []).append(p)
    return [{"params": params, "weight_decay": wd, "lr_scale": scale}
            for (scale, wd), params in sorted(groups.items(), key=lambda kv: kv[0])]
