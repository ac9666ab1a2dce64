"""Writing an encoder state dict (our names) for the tool that will read it.

    encoder     {"model": encoder state dict}, our layout (greenmim, GreenCheckpointer, ...)
    timm        timm's layout, loadable by timm.create_model(name, pretrained=True,
                pretrained_cfg_overlay=dict(file=OUT)); the head is the file's own or fresh
    detectron2  {"model": {"backbone.bottom_up.encoder.<name>": ...}}: the keys of our detectors,
                so detectron2's stock DetectionCheckpointer(model).load(OUT) fills the backbone

The suffix of the output picks the container: .safetensors (flat, no pickle) or .pth.
"""
from __future__ import annotations

import json
import os
from typing import Dict, Mapping, Optional, Tuple

import torch

from ..file_io import atomic_save, atomic_write
from .errors import CheckpointError
from .layouts import DETECTRON2_PREFIX, TWINS_PATCH_EMBED, timm_head_names, to_timm

FORMATS = ("encoder", "timm", "detectron2")
TIMM_CLASSES = 1000  # timm's pretrained configs: a head of another size makes timm load non-strictly


def _family(sd: Mapping[str, torch.Tensor]) -> str:
    return "twins" if TWINS_PATCH_EMBED in sd else "swin"


def _final_width(sd: Mapping[str, torch.Tensor]) -> int:
    """Channels of the last stage: the width of the final norm and of a classification head."""
    if "norm.weight" in sd:
        return int(sd["norm.weight"].shape[0])
    if _family(sd) == "twins":
        last = max(int(k.split(".")[1]) for k in sd if k.startswith("patch_embeds."))
        return int(sd[f"patch_embeds.{last}.proj.weight"].shape[0])
    return int(sd["patch_embed.proj.weight"].shape[0]) * 2 ** (
        1 + max(int(k.split(".")[1]) for k in sd if k.startswith("layers.") and ".downsample." in k))


def timm_state_dict(encoder: Mapping[str, torch.Tensor], head: Optional[Tuple[torch.Tensor, torch.Tensor]] = None,
                    seed: int = 0) -> Tuple[Dict[str, torch.Tensor], str]:
    """Our encoder -> the complete state dict of timm's model (final norm and head included).

    Returns (state dict, words on what was added): a missing final norm is written as a fresh
    LayerNorm (ones / zeros), a missing head as timm initialises one (truncated normal, std 0.02,
    zero bias; 1000 classes), drawn from `seed` so that converting twice gives the same file."""
    family = _family(encoder)
    out = to_timm(encoder, family)
    added = []
    width = _final_width(encoder)
    if "norm.weight" not in out:
        out["norm.weight"], out["norm.bias"] = torch.ones(width), torch.zeros(width)
        added.append("a fresh final norm")
    w_name, b_name = timm_head_names(family)
    if head is None:
        gen = torch.Generator().manual_seed(seed)
        w = torch.empty(TIMM_CLASSES, width)
        torch.nn.init.trunc_normal_(w, std=0.02, generator=gen)  # as timm initialises heads
        head = (w, torch.zeros(TIMM_CLASSES))
        added.append(f"a fresh {TIMM_CLASSES}-class head")
    else:
        added.append(f"the file's {head[0].shape[0]}-class head")
    out[w_name], out[b_name] = head
    return out, ", ".join(added)


def write_weights(encoder: Mapping[str, torch.Tensor], path: str, fmt: str = "encoder", *,
                  head: Optional[Tuple[torch.Tensor, torch.Tensor]] = None,
                  metadata: Optional[Dict[str, str]] = None) -> str:
    """Writes `encoder` (our names, no prefix) to path in format fmt (see the module docstring),
    atomically; returns a few words on what was written besides the encoder."""
    if fmt not in FORMATS:
        raise CheckpointError(f"unknown weight format '{fmt}'; choose one of {', '.join(FORMATS)}")
    safetensors = os.fspath(path).endswith(".safetensors")
    note = ""
    if fmt == "encoder":
        tensors = dict(encoder)
    elif fmt == "timm":
        tensors, note = timm_state_dict(encoder, head)
    else:
        if safetensors:
            raise CheckpointError(f"--format detectron2 writes a .pth file (detectron2's checkpointer "
                                  f"reads no .safetensors); name the output {os.path.splitext(path)[0]}.pth")
        # the final classification norm is not part of a detection backbone
        tensors = {DETECTRON2_PREFIX + k: v for k, v in encoder.items() if not k.startswith("norm.")}
        note = f"keys under '{DETECTRON2_PREFIX}', the final classification norm left out"
    tensors = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    if safetensors:
        save_safetensors(tensors, path, dict(metadata or {}, format="pt", layout=fmt))
    elif fmt == "timm":
        atomic_save(tensors, path)  # timm reads a flat state dict
    else:
        atomic_save({"model": tensors}, path)
    return note


def save_safetensors(tensors: Mapping[str, torch.Tensor], path: str, metadata: Optional[Dict[str, str]] = None) -> None:
    """safetensors.torch.save through atomic_write; metadata values must be strings."""
    from safetensors.torch import save

    meta = {k: v if isinstance(v, str) else json.dumps(v) for k, v in (metadata or {}).items()}
    data = save({k: v.contiguous() for k, v in tensors.items()}, metadata=meta)
    atomic_write(path, lambda f: f.write(data))
