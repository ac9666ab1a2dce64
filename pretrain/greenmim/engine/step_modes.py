"""The captured step modes, torch.compile and CUDA graphs: what each needs, checked before the
first step (one `error:` line naming what to set), and the wrappers that apply them.

Both need a step whose tensors have one shape for every mask and that reads nothing on the host:
for a green model that means static shapes (`model.static_shapes=true`) and plans made in the
loader's workers (`mask.in_workers=true`); the dense baseline has one shape anyway.
"""
from __future__ import annotations

from typing import Any, Dict, List, Optional

import torch

from ..config import ConfigError

COMPILE_MODES = ("default", "max-autotune", "reduce-overhead", "max-autotune-no-cudagraphs")


def _capture_needs(cfg: Dict[str, Any]) -> List[str]:
    """Settings a captured step needs that the config lacks."""
    need = []
    if cfg["model"]["type"] == "green" and not cfg["model"]["static_shapes"]:
        need.append("model.static_shapes=true")
    if not cfg["mask"]["in_workers"]:
        need.append("mask.in_workers=true")
    return need


def check_compile(cfg: Dict[str, Any]) -> Optional[str]:
    """train.compile normalised to a mode name or None (eager); ConfigError for a bad value or a
    setting the compiled step cannot run with."""
    t = cfg["train"]
    mode = None if t["compile"] in (None, False, "", "none") else t["compile"]
    if mode is not None and mode not in COMPILE_MODES:
        raise ConfigError(f"train.compile={mode!r} is not one of {', '.join(COMPILE_MODES)}; "
                          "or leave it empty for eager")
    need = _capture_needs(cfg) if mode is not None else []
    if need:
        raise ConfigError(f"train.compile={mode} needs {', '.join(need)} (without them every mask "
                          "would recompile or plan inside the graph); set those or train.compile=none")
    t["compile"] = mode
    return mode


def graphed_step(cfg: Dict[str, Any], model: torch.nn.Module, device: torch.device,
                 amp_dtype: Optional[torch.dtype]):
    """The CUDA-graph step of train.cuda_graphs (None when off); ConfigError for settings that
    cannot be recorded."""
    t = cfg["train"]
    if not t["cuda_graphs"]:
        return None
    need = [] if device.type == "cuda" else ["a CUDA device"]
    if t["accum_iter"] != 1:
        need.append("train.accum_iter=1")
    if amp_dtype == torch.float16:
        need.append("train.amp=bf16 or none (the fp16 GradScaler skips steps on the host)")
    need += _capture_needs(cfg)
    if need:
        raise ConfigError(f"train.cuda_graphs=true needs {', '.join(need)}; set those or "
                          "train.cuda_graphs=false")
    from .cuda_graph import GraphedStep
    return GraphedStep(model, amp_dtype)


def compile_model(model: torch.nn.Module, mode: str) -> torch.nn.Module:
    """torch.compile with dynamic=False: with static shapes every step has one signature, so one
    graph serves the run."""
    return torch.compile(model, mode=None if mode == "default" else mode, dynamic=False)
