"""Checkpoints as plain data: atomic writes, weights_only loads, RNG states as tensors and lists.

A training checkpoint holds
    model       state_dict of the MIM model (encoder under "encoder.")
    optimizer   optimizer.state_dict()
    scaler      GradScaler state (empty when unused)
    step        optimiser steps done;  epoch / epoch_step: where the next step starts
    rng         {"torch", "cuda", "numpy", "python", "mask"} generator states
    config      the resolved config (plain dict)
Nothing in it needs pickle beyond what torch.load(weights_only=True) accepts, so checkpoints of
unknown origin can be inspected safely and survive refactors of the code; `load` refuses anything
else (pickled code included) with one line, before any of it runs.

Crash safety: every file goes through greenmim.file_io's `atomic_write` (temporary file, fsync,
rename, folder fsync), so a process killed at any moment leaves the previous checkpoint whole, and
a full disk is one line (CheckpointWriteError) with the previous checkpoint intact. The writer and
the loader are re-exported here because they are the engine's checkpoint API too.
"""
from __future__ import annotations

import os
import random
from typing import Any, Dict, Optional

import numpy as np
import torch

from ..file_io import (  # noqa: F401 - the engine's checkpoint API
    CheckpointLoadError,
    CheckpointWriteError,
    atomic_save,
    atomic_write,
    load,
    remove_stale_temporaries,
)
from ..weights import save_safetensors

LAST = "checkpoint-last.pth"


def find_last(output_dir: str) -> Optional[str]:
    path = os.path.join(output_dir, LAST)
    return path if os.path.isfile(path) else None


def rng_state(mask_generator=None) -> Dict[str, Any]:
    """Every RNG state of this process as tensors, lists and numbers."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    version, py_state, gauss_next = random.getstate()
    state = {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": {"keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
        "python": {"version": int(version), "state": list(py_state), "gauss_next": gauss_next},
    }
    if mask_generator is not None:
        state["mask"] = mask_generator.state_dict()
    return state


def set_rng_state(state: Dict[str, Any], mask_generator=None) -> None:
    torch.set_rng_state(state["torch"])
    if state.get("cuda") and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]))
    p = state["python"]
    random.setstate((p["version"], tuple(p["state"]), p["gauss_next"]))
    if mask_generator is not None and "mask" in state:
        mask_generator.load_state_dict(state["mask"])


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    return model.module if hasattr(model, "module") else model


def encoder_state_dict(model_state: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """The encoder's weights from a MIM model state_dict, in the original Swin layout: the keys of
    the encoder's own state_dict (patch_embed.proj.weight, layers.0.blocks.0.attn.qkv.weight, ...),
    no prefix."""
    prefix = "encoder."
    out = {k[len(prefix):]: v for k, v in model_state.items() if k.startswith(prefix)}
    if not out:
        raise KeyError("the checkpoint's model holds no 'encoder.' weights")
    return out


def export_encoder(model_state: Dict[str, torch.Tensor], path: str, config: Optional[dict] = None) -> str:
    """Writes {"model": encoder state_dict, "arch", "encoder_kwargs"} like official Swin releases
    (their weights sit under "model"); loadable with weights_only=True. With the config's
    export_safetensors, also writes the weights to <path without suffix>.safetensors."""
    obj: Dict[str, Any] = {"model": {k: v.detach().cpu().contiguous()
                                     for k, v in encoder_state_dict(model_state).items()}}
    if config is not None:
        obj["arch"] = config["model"]["arch"]
        obj["encoder_kwargs"] = dict(config["model"]["encoder"], img_size=config["data"]["img_size"])
    atomic_save(obj, path)
    if config is not None and config.get("export_safetensors"):
        # the same weights without pickle; arch and encoder_kwargs go in the header's metadata
        save_safetensors(obj["model"], os.path.splitext(path)[0] + ".safetensors",
                         {"arch": obj["arch"], "encoder_kwargs": obj["encoder_kwargs"], "layout": "encoder"})
    return path
