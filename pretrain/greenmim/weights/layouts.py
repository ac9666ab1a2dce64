"""Key layouts of the weight files users hold, and the mapping to and from ours.

Our encoder names its tensors as the original releases do: Swin as Microsoft's Swin (patch
merging at the END of a stage: layers.{i}.downsample, i = 0..2), Twins-SVT as timm / the official
Twins release. Files are recognised by their keys, never by their name:

    ours / export        encoder keys, bare or under {"model": ...}
    GreenMIM / SimMIM    encoder under "encoder." next to a decoder and a mask token
    Microsoft Swin       ours, plus head.*, attn_mask and relative_position_index buffers
    timm / HF hub Swin   patch merging at the START of a stage (layers.{i+1}.downsample), head.fc.*
    timm Twins           ours, plus head.*
    detectron2 model     the encoder under "backbone.bottom_up.encoder." next to FPN and heads
Any of them may sit under "state_dict" / "module" or carry DDP's "module." prefix.
"""
from __future__ import annotations

import collections
import re
from dataclasses import dataclass
from typing import Any, Dict, Mapping, Optional, Tuple

import numpy as np
import torch

from .errors import CheckpointError, LayoutError

SWIN_PATCH_EMBED = "patch_embed.proj.weight"
TWINS_PATCH_EMBED = "patch_embeds.0.proj.weight"
DETECTRON2_PREFIX = "backbone.bottom_up.encoder."   # where our detectors hold the encoder
ENCODER_ROOTS = ("layers.", "patch_embed.", "patch_embeds.", "blocks.", "pos_block.")
# encoder entries never loaded: buffers the model rebuilds, and classification/MIM extras
REBUILT_BUFFERS = ("attn_mask", "relative_position_index", "relative_coords_table")
HEADS = ("head", "fc", "classifier", "avgpool")
_DOWNSAMPLE = re.compile(r"^layers\.(\d+)\.downsample\.")


@dataclass
class Layout:
    """A recognised file: family ("swin" | "twins"), `timm` when Swin's patch merging sits at the
    start of a stage, the encoder prefix, and the words for the report."""

    family: str
    timm: bool
    prefix: str
    name: str


def as_tensors(obj: Mapping) -> Dict[str, Any]:
    """numpy arrays (detectron2 .pkl files) as tensors; other values unchanged."""
    return {k: torch.from_numpy(np.ascontiguousarray(v)) if isinstance(v, np.ndarray) else v
            for k, v in obj.items()}


def _is_tensor_mapping(obj: Any) -> bool:
    return isinstance(obj, Mapping) and len(obj) > 0 and all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items())


def extract_state_dict(obj: Any, source: str = "checkpoint") -> Dict[str, torch.Tensor]:
    """The tensor dict of a loaded checkpoint: obj["model"] / ["state_dict"] / ["module"] / obj."""
    if isinstance(obj, Mapping):
        obj = as_tensors(obj)
        for key in ("model", "state_dict", "module", "model_state"):
            inner = as_tensors(obj[key]) if isinstance(obj.get(key), Mapping) else None
            if inner is not None and _is_tensor_mapping(inner):
                return dict(inner)
        if _is_tensor_mapping(obj):
            return dict(obj)
        # some checkpoints mix tensors with a few numbers at the top level
        tensors = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
        if any(k.endswith((SWIN_PATCH_EMBED, TWINS_PATCH_EMBED)) for k in tensors):
            return tensors
    raise CheckpointError(
        f"{source} is not a state dict: expected a dict of tensors or one under 'model'/'state_dict' "
        f"(found {type(obj).__name__}" + (f" with keys {sorted(map(str, obj))[:6]}" if isinstance(obj, Mapping) else "")
        + ")")


def find_encoder_prefix(keys) -> Optional[str]:
    """Prefix in front of the patch embedding weight ("" for a bare encoder), None if absent."""
    prefixes = [k[: -len(key)] for k in keys for key in (SWIN_PATCH_EMBED, TWINS_PATCH_EMBED)
                if k.endswith(key) and (len(k) == len(key) or k[-len(key) - 1] == ".")]
    if not prefixes:
        return None
    # the shortest one: e.g. "encoder." rather than a nested "teacher.encoder." in odd files
    return min(prefixes, key=len)


def drop_reason(name: str) -> Optional[str]:
    """Category of an encoder-relative key that is never loaded (a buffer, a head), else None."""
    last = name.rsplit(".", 1)[-1]
    if last in REBUILT_BUFFERS:
        return last
    top = name.split(".", 1)[0]
    if top in HEADS or top == "mask_token":
        return top
    return None


def _refuse_transformers_layout(sd: Mapping[str, torch.Tensor], source: str) -> None:
    if any("embeddings.patch_embeddings.projection.weight" in k for k in sd):
        raise LayoutError(
            f"{source} is in Hugging Face transformers' layout (embeddings.patch_embeddings, "
            f"attention.self.query, ...), not timm's; use the timm checkpoint of the model "
            f"(the hub's timm/<name> repositories, e.g. timm/swin_base_patch4_window7_224.ms_in1k)")


def split_encoder(sd: Mapping[str, torch.Tensor], source: str = "checkpoint"
                  ) -> Tuple[Dict[str, torch.Tensor], Layout, collections.Counter]:
    """Encoder tensors of a flat state dict in OUR names, its layout, and what was dropped.

    Returns:
        (encoder state dict without prefix, Layout, Counter of dropped entries by category:
        decoder, mask_token, head, attn_mask, ...).
    """
    sd = {k[len("module."):] if k.startswith("module.") else k: v for k, v in sd.items()}
    _refuse_transformers_layout(sd, source)
    prefix = find_encoder_prefix(sd)
    if prefix is None:
        raise CheckpointError(
            f"{source} holds no Swin or Twins encoder (no '*{SWIN_PATCH_EMBED}' or '*{TWINS_PATCH_EMBED}' "
            f"among {len(sd)} tensors, e.g. {sorted(sd)[:3]})")
    dropped: collections.Counter = collections.Counter()
    encoder: Dict[str, torch.Tensor] = {}
    for k, v in sd.items():
        if not k.startswith(prefix):
            dropped[k.split(".", 1)[0] or k] += 1  # decoder*, mask_token, fpn, roi_heads, ...
            continue
        name = k[len(prefix):]
        reason = drop_reason(name)
        if reason is not None:
            dropped[reason] += 1
            continue
        encoder[name] = v
    family = "twins" if TWINS_PATCH_EMBED in encoder else "swin"
    stages = sorted({int(m.group(1)) for k in encoder for m in [_DOWNSAMPLE.match(k)] if m})
    timm = family == "swin" and bool(stages) and 0 not in stages
    if timm:
        encoder = {_shift_downsample(k, -1): v for k, v in encoder.items()}
    return encoder, Layout(family, timm, prefix, _layout_name(family, timm, prefix, sd)), dropped


def _layout_name(family: str, timm: bool, prefix: str, sd: Mapping[str, Any]) -> str:
    keys = "timm layout" if timm or family == "twins" and any(k.startswith("head.") for k in sd) else (
        "Twins layout" if family == "twins" else "Swin layout")
    if prefix == DETECTRON2_PREFIX:
        return f"detectron2 model, {keys}"
    if prefix == "encoder." and any(k.startswith(("decoder", "module.decoder")) for k in sd):
        return f"MIM pretraining checkpoint, {keys}"
    return keys + (f", encoder under '{prefix}'" if prefix else "")


def _shift_downsample(name: str, by: int) -> str:
    m = _DOWNSAMPLE.match(name)
    if m is None:
        return name
    return f"layers.{int(m.group(1)) + by}.downsample." + name[m.end():]


def to_timm(encoder: Mapping[str, torch.Tensor], family: str) -> Dict[str, torch.Tensor]:
    """Our encoder names -> timm's (Swin: patch merging moves to the start of the next stage)."""
    if family == "twins":
        return dict(encoder)
    return {_shift_downsample(k, +1): v for k, v in encoder.items()}


def timm_head_names(family: str) -> Tuple[str, str]:
    """(weight, bias) of timm's classifier for the family."""
    return ("head.fc.weight", "head.fc.bias") if family == "swin" else ("head.weight", "head.bias")


def classifier_head(sd: Mapping[str, torch.Tensor]) -> Optional[Tuple[torch.Tensor, torch.Tensor]]:
    """(weight [classes, C], bias [classes]) of a classification head next to the encoder (timm
    `head.fc.*`, Microsoft Swin / Twins `head.*`), None when the file has none."""
    sd = {k[len("module."):] if k.startswith("module.") else k: v for k, v in sd.items()}
    prefix = find_encoder_prefix(sd) or ""
    for w, b in (("head.fc.weight", "head.fc.bias"), ("head.weight", "head.bias")):
        if prefix + w in sd and prefix + b in sd and sd[prefix + w].dim() == 2:
            return sd[prefix + w], sd[prefix + b]
    return None
