"""Fine-tuning configuration: the defaults table (the SimMIM / GreenMIM ImageNet-1K recipe for
Swin-B) and its value checks; files and overrides work as in greenmim.config."""
from __future__ import annotations

from typing import Any, Dict, Iterable, Optional

from ..config import ConfigError, load_config

FINETUNE_DEFAULTS: Dict[str, Any] = {
    "model": {
        "arch": "swin_base",        # any name greenmim.build_encoder knows
        "encoder": {},              # extra build_encoder overrides (window_size, depths, ...)
        "drop_path_rate": 0.1,
        "init": "",                 # pretraining checkpoint / encoder export / official GreenMIM,
                                    # SimMIM or Swin weights; empty: random init
        "num_classes": None,        # None: the number of class folders
    },
    "data": {
        "path": None,               # root/train/<class>/<img> and root/val/<class>/<img>
        "img_size": 224,
        "train_fraction": 1.0,      # keep this fraction of each class's training images (seeded)
        "num_workers": 8,
        "pin_memory": True,
        "strict": False,            # raise on an unreadable image instead of skipping it
        "interpolation": "bicubic",
        "crop_pct": 0.875,          # eval: resize to img_size / crop_pct, then center crop
        "auto_augment": "rand-m9-mstd0.5-inc1",  # timm RandAugment spec; null: none
        "color_jitter": 0.4,
        "re_prob": 0.25,            # random erasing
        "re_mode": "pixel",
        "re_count": 1,
        "scale": [0.08, 1.0],       # RandomResizedCrop scale
    },
    "aug": {
        "mixup": 0.8,               # mixup alpha (0: off)
        "cutmix": 1.0,              # cutmix alpha (0: off)
        "mixup_prob": 1.0,
        "switch_prob": 0.5,
        "mixup_mode": "batch",
        "label_smoothing": 0.1,
    },
    "train": {
        "epochs": 100,
        "warmup_epochs": 20,
        "batch_size": 2048,         # GLOBAL batch per optimiser step
        "accum_iter": 1,
        "blr": 1.25e-3,             # lr = blr * batch_size / lr_batch_base unless lr is set
        "lr_batch_base": 512,       # SimMIM's scaling rule divides by 512
        "lr": None,
        "min_lr": 2.5e-7,
        "weight_decay": 0.05,
        "layer_decay": 0.9,
        "betas": [0.9, 0.999],
        "clip_grad": 5.0,
        "amp": "bf16",              # bf16 | fp16 | none; CUDA only
        "grad_checkpointing": False,
        "max_steps": None,
        "model_ema": False,         # also keep and evaluate an EMA of the weights (timm ModelEmaV3)
        "model_ema_decay": 0.9999,
    },
    "eval": {
        "batch_size": 64,           # per process
        "every_epochs": 1,
    },
    "checkpoint": {
        "every_epochs": 0,          # keep checkpoint-<epoch>.pth every N epochs (0: never)
        "every_steps": 0,           # also refresh checkpoint-last.pth every N steps
    },
    "log": {
        "every_steps": 20,
        "tensorboard": True,
        "progress_bar": True,
    },
    "seed": 0,
    "device": "auto",
    "output_dir": "output/finetune",
    "resume": "auto",
    "dist_timeout_s": 1800,
}


def _number(cfg: Dict[str, Any], key: str, lo: float, hi: float, lo_open: bool = False) -> None:
    section, name = key.split(".")
    v = cfg[section][name]
    ok = isinstance(v, (int, float)) and not isinstance(v, bool) and (v > lo if lo_open else v >= lo) and v <= hi
    if not ok:
        raise ConfigError(f"{key} must be a number in {'(' if lo_open else '['}{lo}, {hi}], got {v!r}")


def check_finetune(cfg: Dict[str, Any]) -> None:
    """Cheap checks of values, each with a one-line message."""
    t = cfg["train"]
    for key in ("batch_size", "accum_iter", "epochs"):
        v = t[key]
        if not isinstance(v, int) or isinstance(v, bool) or v < 1:
            raise ConfigError(f"train.{key} must be a positive integer, got {v!r}")
    img = cfg["data"]["img_size"]
    if not isinstance(img, int) or img < 32 or img % 32:
        raise ConfigError(f"data.img_size must be a positive multiple of 32, got {img!r}; use e.g. 224")
    if t["amp"] not in ("bf16", "fp16", "none", None, False):
        raise ConfigError(f"train.amp must be bf16, fp16 or none, got {t['amp']!r}")
    if cfg["device"] not in ("auto", "cpu", "cuda"):
        raise ConfigError(f"device must be auto, cpu or cuda, got {cfg['device']!r}")
    _number(cfg, "train.layer_decay", 0.0, 1.0, lo_open=True)
    _number(cfg, "data.train_fraction", 0.0, 1.0, lo_open=True)
    _number(cfg, "data.crop_pct", 0.0, 1.0, lo_open=True)
    _number(cfg, "aug.label_smoothing", 0.0, 0.99)
    _number(cfg, "aug.mixup", 0.0, 1e3)
    _number(cfg, "aug.cutmix", 0.0, 1e3)
    _number(cfg, "model.drop_path_rate", 0.0, 1.0)
    n = cfg["model"]["num_classes"]
    if n is not None and (not isinstance(n, int) or isinstance(n, bool) or n < 2):
        raise ConfigError(f"model.num_classes must be an integer >= 2 or null (from the data), got {n!r}")
    if not isinstance(cfg["model"]["encoder"], dict):
        raise ConfigError("model.encoder must be a mapping of build_encoder overrides")


def load_finetune_config(path: Optional[str] = None, overrides: Iterable[str] = ()) -> Dict[str, Any]:
    return load_config(path, overrides, defaults=FINETUNE_DEFAULTS, check=check_finetune)
