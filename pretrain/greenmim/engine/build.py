"""Config -> model: the one place that turns the `model` section into modules."""
from __future__ import annotations

from typing import Any, Dict

from torch import nn

from ..config import ConfigError


def encoder_kwargs(cfg: Dict[str, Any]) -> Dict[str, Any]:
    """build_encoder overrides of a config: model.encoder plus img_size = data.img_size."""
    kwargs = dict(cfg["model"]["encoder"] or {})
    img = cfg["data"]["img_size"]
    if kwargs.get("img_size", img) != img:
        raise ConfigError(f"model.encoder.img_size={kwargs['img_size']} differs from data.img_size={img}; "
                          "set data.img_size only")
    kwargs["img_size"] = img
    return kwargs


def build_encoder_from_config(cfg: Dict[str, Any]) -> nn.Module:
    from .. import build_encoder
    arch = cfg["model"]["arch"]
    kwargs = encoder_kwargs(cfg)
    # Static shapes only matter for the sparse path; the dense baseline has one shape anyway.
    if cfg["model"]["static_shapes"] and cfg["model"]["type"] == "green":
        kwargs["static_shapes"] = True
    try:
        return build_encoder(arch, **kwargs)
    except (TypeError, KeyError, ValueError) as e:
        msg = str(e).strip("'\"").splitlines()[0] if str(e) else type(e).__name__
        raise ConfigError(f"cannot build encoder {arch!r} with model.encoder={cfg['model']['encoder']}: "
                          f"{msg}") from None


def build_model(cfg: Dict[str, Any]) -> nn.Module:
    """GreenMIM (model.type=green) or the dense SimMIM baseline (model.type=simmim)."""
    from ..models.mim import GreenMIM
    from ..models.simmim import SimMIM
    m = cfg["model"]
    encoder = build_encoder_from_config(cfg)
    if cfg["train"]["grad_checkpointing"]:
        encoder.set_grad_checkpointing(True)
    if m["type"] == "green":
        return GreenMIM(encoder, img_size=cfg["data"]["img_size"], decoder_dim=m["decoder_dim"],
                        decoder_depth=m["decoder_depth"], decoder_num_heads=m["decoder_num_heads"],
                        decoder_mlp_ratio=m["decoder_mlp_ratio"], norm_pix_loss=m["norm_pix_loss"])
    try:
        return SimMIM(encoder, loss=m["simmim_loss"])
    except ValueError as e:
        raise ConfigError(f"model.simmim_loss: {e}") from None
