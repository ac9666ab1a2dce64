"""Pretraining configuration: YAML files + `key.sub=value` command-line overrides, as plain dicts.

A config file may name a base file with `_base_: other.yaml` (relative to itself); its keys are
merged recursively. Every key must exist in DEFAULTS (except under the open sections listed in
OPEN_SECTIONS, whose keys go straight to a builder), so a misspelt key fails at start-up with one
line instead of being silently ignored. The resolved config is plain data (dicts, lists, numbers,
strings), saved in checkpoints and loadable with torch.load(weights_only=True).
"""
from __future__ import annotations

import argparse
import copy
import re
import os
from typing import Any, Callable, Dict, Iterable, Optional

import yaml


class UserError(Exception):
    """A problem the user can fix (bad config, bad data, diverged run); main prints one line."""


class ConfigError(UserError):
    pass


DEFAULTS: Dict[str, Any] = {
    "model": {
        "type": "green",            # green (GreenMIM) | simmim (dense baseline)
        "arch": "swin_base",        # any name greenmim.build_encoder knows
        "encoder": {},              # extra build_encoder overrides (window_size, depths, ...)
        "decoder_dim": 512,
        "decoder_depth": 1,
        "decoder_num_heads": 16,
        "decoder_mlp_ratio": 4.0,
        "norm_pix_loss": True,
        "simmim_loss": "l1",        # l1 (SimMIM) | norm_pix_mse (GreenMIM's target)
        "static_shapes": False,     # green Swin: mask-independent shapes (compile, CUDA graphs)
    },
    "mask": {
        "ratio": 0.75,
        "shared": True,             # one mask per process and micro-batch (paper) or per sample
        "in_workers": True,         # draw masks and plan them in the DataLoader workers
    },
    "data": {
        "path": None,               # root/train/<class>/<img>, root/<class>/<img> or a flat folder;
                                    # "synthetic" = generated images (smoke tests, benchmarks)
        "img_size": 224,
        "scale": [0.2, 1.0],        # RandomResizedCrop scale
        "num_workers": 8,
        "strict": False,            # raise on an unreadable image instead of skipping it
        "decode": "pil",            # pil (= cpu) | draft | gpu | auto (gpu if CUDA decodes JPEGs, else pil):
                                    # see docs/data.md
        "pin_memory": True,
        "synthetic_size": 256,      # number of images when path is "synthetic"
    },
    "train": {
        "epochs": 800,
        "warmup_epochs": 40,
        "batch_size": 2048,         # GLOBAL batch per optimiser step (all processes, all accum steps)
        "accum_iter": 1,            # gradient accumulation steps per optimiser step
        "blr": 1.5e-4,              # lr = blr * batch_size / 256 unless lr is set
        "lr": None,
        "min_lr": 0.0,
        "weight_decay": 0.05,
        "betas": [0.9, 0.95],
        "clip_grad": None,          # max grad norm, None = no clipping
        "amp": "bf16",              # bf16 | fp16 | none; CUDA only, the CPU always runs fp32
        "grad_checkpointing": False,
        "compile": None,            # None | default | max-autotune | reduce-overhead: torch.compile
        "cuda_graphs": False,       # CUDA: replay forward + loss + backward from one recorded graph
        "max_steps": None,          # stop after this many optimiser steps (schedule unchanged)
    },
    "checkpoint": {
        "every_epochs": 20,         # keep checkpoint-<epoch>.pth every N epochs (0: never)
        "every_steps": 0,           # also refresh checkpoint-last.pth every N steps (0: per epoch)
    },
    "log": {
        "every_steps": 20,          # JSON-lines / TensorBoard / progress-bar refresh period
        "tensorboard": True,
        "progress_bar": True,
        "vis_every_epochs": 20,     # reconstruction figure every N epochs (0: never)
        "vis_samples": 8,
    },
    "seed": 0,
    "device": "auto",               # auto | cpu | cuda
    "output_dir": "output/pretrain",
    "resume": "auto",               # auto (continue from output_dir/checkpoint-last.pth if any) |
                                    # none | path to a checkpoint
    "export_encoder": True,         # write output_dir/encoder.pth at the end
    "export_safetensors": False,    # also write output_dir/encoder.safetensors (timm / HF tools read it)
    "dist_timeout_s": 1800,         # a collective waiting longer than this (a hung or lost process)
                                    # fails with one error line instead of hanging the job
}

# Sections whose keys are not checked here (they are keyword arguments of a builder).
OPEN_SECTIONS = ("model.encoder",)


def _merge(base: Dict[str, Any], new: Dict[str, Any], prefix: str, where: str) -> None:
    for key, value in new.items():
        name = f"{prefix}{key}"
        if key not in base and not any(prefix.rstrip(".") == s or prefix.startswith(s + ".")
                                       for s in OPEN_SECTIONS):
            valid = ", ".join(sorted(base)) or "(none)"
            raise ConfigError(f"unknown config key '{name}' in {where}; valid keys here: {valid}")
        if isinstance(base.get(key), dict) and isinstance(value, dict):
            _merge(base[key], value, name + ".", where)
        elif isinstance(base.get(key), dict) and name not in OPEN_SECTIONS:
            raise ConfigError(f"config key '{name}' in {where} is a section, give it sub-keys "
                              f"(e.g. {name}.{next(iter(base[key]), 'key')}=...)")
        else:
            base[key] = copy.deepcopy(value)


def _read_yaml(path: str, seen: Iterable[str] = ()) -> Dict[str, Any]:
    path = os.path.abspath(path)
    if path in seen:
        raise ConfigError(f"config {path} includes itself through _base_")
    if not os.path.isfile(path):
        raise ConfigError(f"config file {path} does not exist; pass --config configs/pretrain/<name>.yaml")
    try:
        with open(path) as f:
            data = _yaml_load(f) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"config file {path} is not valid YAML: {str(e).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping of keys, got {type(data).__name__}")
    base = data.pop("_base_", None)
    if base is None:
        return data
    merged: Dict[str, Any] = {}
    for b in [base] if isinstance(base, str) else base:
        _deep_update(merged, _read_yaml(os.path.join(os.path.dirname(path), b), (*seen, path)))
    _deep_update(merged, data)
    return merged


def _deep_update(dst: Dict[str, Any], src: Dict[str, Any]) -> None:
    for k, v in src.items():
        if isinstance(dst.get(k), dict) and isinstance(v, dict):
            _deep_update(dst[k], v)
        else:
            dst[k] = copy.deepcopy(v)


class _Loader(yaml.SafeLoader):
    """yaml.SafeLoader that also reads 1e-4 / 5E3 as floats: PyYAML follows YAML 1.1, where a float
    needs a dot, so `blr: 5e-3` would otherwise silently become the string '5e-3'."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
                    |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
                    |\.[0-9_]+(?:[eE][-+]?[0-9]+)?
                    |[-+]?\.(?:inf|Inf|INF)
                    |\.(?:nan|NaN|NAN))$""", re.X),
    list("-+0123456789."),
)


def _yaml_load(text_or_file: Any) -> Any:
    return yaml.load(text_or_file, Loader=_Loader)


def parse_override(text: str) -> Dict[str, Any]:
    """'a.b.c=value' -> {'a': {'b': {'c': value}}}, value parsed as YAML (1e-4, [2,2], true, null)."""
    if "=" not in text:
        raise ConfigError(f"override '{text}' is not of the form key=value (e.g. train.epochs=100)")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key or any(not part for part in key.split(".")):
        raise ConfigError(f"override '{text}' has an empty key; write e.g. train.blr=1e-4")
    try:
        value = _yaml_load(raw) if raw.strip() else None
    except yaml.YAMLError:
        value = raw
    out: Dict[str, Any] = {}
    node = out
    parts = key.split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
    node[parts[-1]] = value
    return out


def config_argument_parser(description: str, example_config: str) -> argparse.ArgumentParser:
    """The command line every program here shares: --config YAML, --print-config and trailing
    key.sub=value overrides; a program adds its own flags to it."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--config", required=True, help=f"YAML file, e.g. {example_config}")
    p.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    p.add_argument("overrides", nargs="*", metavar="key=value")
    return p


def load_config(path: Optional[str] = None, overrides: Iterable[str] = (),
                defaults: Optional[Dict[str, Any]] = None,
                check: Optional[Callable[[Dict[str, Any]], None]] = None) -> Dict[str, Any]:
    """defaults (DEFAULTS: pretraining) <- YAML file (with its bases) <- overrides; unknown keys
    raise ConfigError; `check` (validate) then tests the values."""
    cfg = copy.deepcopy(DEFAULTS if defaults is None else defaults)
    if path:
        _merge(cfg, _read_yaml(path), "", f"config file {path}")
    for text in overrides:
        _merge(cfg, parse_override(text), "", f"override '{text}'")
    (check or validate)(cfg)
    return cfg


DALI_REFUSAL = ("data.decode=dali is not available: this version has no DALI pipeline (so needs no "
                "nvidia-dali package); use data.decode=gpu (torchvision's nvJPEG decoding on the GPU) "
                "or data.decode=auto")


def validate(cfg: Dict[str, Any]) -> None:
    """Cheap checks of values, each with a one-line message."""
    if cfg["model"]["type"] not in ("green", "simmim"):
        raise ConfigError(f"model.type must be 'green' or 'simmim', got {cfg['model']['type']!r}")
    if cfg["data"]["decode"] not in ("pil", "cpu", "draft", "gpu", "auto", "dali"):
        raise ConfigError(f"data.decode must be pil, cpu, draft, gpu, auto or dali, got {cfg['data']['decode']!r}")
    if cfg["data"]["decode"] == "dali":
        raise ConfigError(DALI_REFUSAL)
    if cfg["train"]["amp"] not in ("bf16", "fp16", "none", None, False):
        raise ConfigError(f"train.amp must be bf16, fp16 or none, got {cfg['train']['amp']!r}")
    for key in ("batch_size", "accum_iter", "epochs"):
        v = cfg["train"][key]
        if not isinstance(v, int) or isinstance(v, bool) or v < 1:
            raise ConfigError(f"train.{key} must be a positive integer, got {v!r}")
    if not isinstance(cfg["data"]["img_size"], int) or cfg["data"]["img_size"] < 32 or cfg["data"]["img_size"] % 32:
        raise ConfigError(f"data.img_size must be a positive multiple of 32 (the mask unit), got "
                          f"{cfg['data']['img_size']!r}; use e.g. 224 or 192")
    r = cfg["mask"]["ratio"]
    if not isinstance(r, (int, float)) or isinstance(r, bool) or not 0.0 <= r < 1.0:
        raise ConfigError(f"mask.ratio must be a number in [0, 1), got {r!r}; use e.g. 0.75")
    for key in ("blr", "weight_decay"):
        v = cfg["train"].get(key)
        if v is not None and (not isinstance(v, (int, float)) or isinstance(v, bool) or v < 0):
            raise ConfigError(f"train.{key} must be a non-negative number, got {v!r}; use e.g. train.{key}=1.5e-4")
    t = cfg["dist_timeout_s"]
    if not isinstance(t, (int, float)) or isinstance(t, bool) or t <= 0:
        raise ConfigError(f"dist_timeout_s must be a positive number of seconds, got {t!r}")
    if cfg["device"] not in ("auto", "cpu", "cuda"):
        raise ConfigError(f"device must be auto, cpu or cuda, got {cfg['device']!r}")
    if not isinstance(cfg["model"]["encoder"], dict):
        raise ConfigError("model.encoder must be a mapping of build_encoder overrides")


def dump_config(cfg: Dict[str, Any]) -> str:
    return yaml.safe_dump(cfg, sort_keys=False)
