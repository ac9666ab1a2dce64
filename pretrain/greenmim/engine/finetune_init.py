"""Weights into a classifier: `model.init` (any pretrained encoder, optionally with a head) and the
fine-tuned checkpoint of `--eval-only`, each problem one line."""
from __future__ import annotations

from typing import Any, Dict, List, Mapping

import torch
from torch import nn

from ..config import ConfigError, UserError
from . import checkpoint as ckpt
from ..weights import load_encoder_weights, read_file
from .program import first_error_line

_BUFFERS = ("relative_position_index", "attn_mask", "relative_coords_table")


def state_dict_of(obj: Any) -> Dict[str, torch.Tensor]:
    """The tensors of a checkpoint object ({"model": ...}, {"state_dict": ...} or a bare state dict),
    without a DDP "module." prefix; {} when there are none."""
    if isinstance(obj, Mapping):
        for key in ("model", "state_dict"):
            if isinstance(obj.get(key), Mapping):
                obj = obj[key]
                break
    if not isinstance(obj, Mapping):
        return {}
    return {(k[len("module."):] if k.startswith("module.") else k): v
            for k, v in obj.items() if isinstance(v, torch.Tensor)}


def init_classifier(model: nn.Module, path: str, encoder: nn.Module) -> str:
    """Loads the encoder weights of `path` into `model` (via `encoder`, a fresh encoder of the same
    architecture: the weights module checks and converts them), and the head when the file has one
    of the right size. Returns the one-line summary. Raises ConfigError."""
    obj = read_file(path)  # any supported suffix; weights_only, one-line errors
    try:
        report = load_encoder_weights(encoder, obj, strict=True)
    except (UserError, RuntimeError, KeyError, ValueError) as e:
        raise ConfigError(f"model.init={path}: {first_error_line(e)}") from None
    missing, unexpected = model.load_state_dict(encoder.state_dict(), strict=False)
    missing = [k for k in missing if not k.startswith("head.")]
    if missing or unexpected:  # the classifier is its encoder plus a head: cannot happen
        raise ConfigError(f"model.init={path}: the classifier does not match its encoder "
                          f"(missing {missing[:3]}, unexpected {unexpected[:3]})")
    return f"model.init: {report.summary()}; {_load_head(model, state_dict_of(obj))}"


def _load_head(model: nn.Module, sd: Dict[str, torch.Tensor]) -> str:
    w = sd.get("head.weight", sd.get("head.fc.weight"))
    b = sd.get("head.bias", sd.get("head.fc.bias"))
    if w is None:
        return "head: random init (the file has none)"
    if w.shape != model.head.weight.shape or b is None or b.shape != model.head.bias.shape:
        return (f"head dropped: the file's head has {w.shape[0]} classes of {w.shape[-1]} features, "
                f"this model {model.head.weight.shape[0]} of {model.head.weight.shape[1]} (random init)")
    with torch.no_grad():
        model.head.weight.copy_(w)
        model.head.bias.copy_(b)
    return "head loaded"


def load_finetuned(model: nn.Module, path: str, cfg: Dict[str, Any], classes: List[str]) -> Dict[str, Any]:
    """Loads a fine-tuned classifier checkpoint for evaluation; returns the file's object.
    One-line ConfigError for another architecture, another class count or class list, a file
    without a head (a pretraining checkpoint) and weights that do not fit."""
    c = ckpt.load(path)
    sd = state_dict_of(c)
    old = c.get("config", {}).get("model") if isinstance(c, dict) and isinstance(c.get("config"), dict) else None
    if isinstance(old, dict):
        def arch(m: Dict[str, Any]) -> Dict[str, Any]:
            enc = m.get("encoder") or {}
            return {"arch": m.get("arch"), **{k: enc.get(k) for k in ("embed_dim", "depths", "num_heads",
                                                                     "window_size")}}
        a, b = arch(old), arch(cfg["model"])
        diff = [f"{k}: checkpoint {a[k]!r} vs config {b[k]!r}" for k in a if a[k] != b[k]]
        if diff:
            raise ConfigError(f"checkpoint {path} is a classifier of another architecture "
                              f"({'; '.join(diff[:3])}); evaluate it with the config it was trained with")
    head = sd.get("head.weight")
    if head is None:
        raise ConfigError(f"checkpoint {path} has no classification head (head.weight); --eval-only "
                          "needs a fine-tuned checkpoint such as output_dir/checkpoint-best.pth")
    if head.shape[0] != len(classes):
        raise ConfigError(f"checkpoint {path} classifies {head.shape[0]} classes but data.path has "
                          f"{len(classes)} class folders; evaluate on the dataset it was trained for")
    saved = c.get("classes") if isinstance(c, dict) else None
    if saved is not None and list(saved) != list(classes):
        first = next(i for i, (x, y) in enumerate(zip(saved, classes)) if x != y)
        raise ConfigError(f"checkpoint {path} was trained on other classes (label {first}: "
                          f"{saved[first]!r} there, {classes[first]!r} in data.path); use its dataset")
    try:
        model.load_state_dict({k: v for k, v in sd.items() if k.rsplit(".", 1)[-1] not in _BUFFERS})
    except (RuntimeError, ValueError) as e:
        raise ConfigError(f"checkpoint {path} does not fit this config's classifier "
                          f"({first_error_line(e)}); use the config it was trained with") from None
    return c if isinstance(c, dict) else {}

