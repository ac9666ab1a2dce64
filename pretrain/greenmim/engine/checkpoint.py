"""Checkpoints as plain data: atomic writes, weights_only loads, RNG states as tensors and lists.

A training checkpoint holds
    model       state_dict of the MIM model (encoder under "encoder.")
    optimizer   optimizer.state_dict()
    scaler      GradScaler state (empty when unused)
    step        optimiser steps done;  epoch / epoch_step: where the next step starts
    rng         {"torch", "cuda", "numpy", "python", "mask"} generator states
    config      the resolved config (plain dict)
Nothing in it needs pickle beyond what torch.load(weights_only=True) accepts, so checkpoints of
unknown origin can be inspected safely and survive refactors of the code.
"""
from __future__ import annotations

import os
import random
from typing import Any, Dict, Optional

import numpy as np
import torch

LAST = "checkpoint-last.pth"


def atomic_save(obj: Any, path: str) -> None:
    """torch.save to a temporary file in the same folder, fsync, then os.replace: a reader (or a
    crash) never sees a half-written file, and the previous checkpoint stays until the new is whole."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    tmp = os.path.join(folder, f".{os.path.basename(path)}.tmp{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def load(path: str, map_location: Any = "cpu") -> Dict[str, Any]:
    return torch.load(path, map_location=map_location, weights_only=True)


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
    (their weights sit under "model"); loadable with weights_only=True."""
    obj: Dict[str, Any] = {"model": {k: v.detach().cpu().contiguous()
                                     for k, v in encoder_state_dict(model_state).items()}}
    if config is not None:
        obj["arch"] = config["model"]["arch"]
        obj["encoder_kwargs"] = dict(config["model"]["encoder"], img_size=config["data"]["img_size"])
    atomic_save(obj, path)
    return path
