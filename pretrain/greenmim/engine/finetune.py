"""The fine-tuning program: labelled folders -> classifier (from model.init) -> epochs -> best / last.

    python pretrain/main_finetune.py --config configs/finetune/tiny_cpu.yaml data.path=DIR
    torchrun --nproc_per_node 8 pretrain/main_finetune.py \
        --config configs/finetune/greenmim_swin_base_w7_in1k.yaml data.path=/datasets/imagenet \
        model.init=output/greenmim_swin_base_w7/encoder.pth output_dir=output/ft_swin_base
    python pretrain/main_finetune.py --config CFG data.path=DIR --eval-only --checkpoint CKPT

Writes output_dir/log.jsonl (per step: loss, lr; per epoch: epoch, train_loss, val_acc1, val_acc5),
checkpoint-last.pth (step-exact resume=auto), checkpoint-best.pth (best val top-1) and, with
--eval-only, eval.json. Errors and exit statuses are those of every GreenMIM program
(greenmim.engine.program).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any, Dict, List, Optional

import torch
from torch.utils.data import DataLoader

from ..config import ConfigError, config_argument_parser, dump_config
from ..data.classification import SeededLabelledDataset, build_splits
from . import checkpoint as ckpt
from . import dist as gdist
from .build import encoder_kwargs
from .data import StepBatchSampler
from .finetune_config import load_finetune_config
from .finetune_epoch import FinetuneState, evaluate, train_one_epoch
from .finetune_init import init_classifier, load_finetuned
from .layer_decay import layer_decay_param_groups
from .logger import TrainLogger
from .optim import build_optimizer
from .pretrain import AMP_DTYPES, batch_layout
from .program import check_resumable, first_error_line, resume_path, run_guarded
from .run_lock import hold_output_dir
from .train import StepConfig

BEST = "checkpoint-best.pth"


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    p = config_argument_parser(
        "GreenMIM classification fine-tuning. Extra arguments key.sub=value override the config "
        "(e.g. data.path=/datasets/imagenet model.init=encoder.pth output_dir=out/ft).",
        "configs/finetune/tiny_cpu.yaml")
    p.add_argument("--eval-only", action="store_true", help="evaluate --checkpoint on the val split")
    p.add_argument("--checkpoint", default=None, help="fine-tuned checkpoint for --eval-only")
    return p.parse_intermixed_args(argv)


def build_transforms(d: Dict[str, Any]):
    """timm's ImageNet transforms: RandomResizedCrop + flip + RandAugment + colour jitter + random
    erasing for training; resize to img_size / crop_pct + center crop for evaluation."""
    from timm.data import create_transform
    train = create_transform(d["img_size"], is_training=True, scale=tuple(d["scale"]),
                             color_jitter=d["color_jitter"], auto_augment=d["auto_augment"] or None,
                             interpolation=d["interpolation"], re_prob=d["re_prob"],
                             re_mode=d["re_mode"], re_count=d["re_count"])
    val = create_transform(d["img_size"], is_training=False, interpolation=d["interpolation"],
                           crop_pct=d["crop_pct"])
    return train, val


def build_mixup_and_loss(cfg: Dict[str, Any], num_classes: int):
    """(mixup_fn or None, training criterion): timm Mixup / CutMix with SoftTargetCrossEntropy
    (the label smoothing moves into the soft targets), else LabelSmoothingCrossEntropy."""
    from timm.data import Mixup
    from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy
    a = cfg["aug"]
    if a["mixup"] > 0 or a["cutmix"] > 0:
        mixup = Mixup(mixup_alpha=a["mixup"], cutmix_alpha=a["cutmix"], prob=a["mixup_prob"],
                      switch_prob=a["switch_prob"], mode=a["mixup_mode"],
                      label_smoothing=a["label_smoothing"], num_classes=num_classes)
        return mixup, SoftTargetCrossEntropy()
    if a["label_smoothing"] > 0:
        return None, LabelSmoothingCrossEntropy(smoothing=a["label_smoothing"])
    return None, torch.nn.CrossEntropyLoss()


def build_classifier_from_config(cfg: Dict[str, Any], num_classes: int):
    """(classifier, a fresh encoder of the same architecture, for loading model.init)."""
    from .. import build_encoder
    from ..models.classifier import build_classifier
    m = cfg["model"]
    kwargs = {**encoder_kwargs(cfg), "drop_path_rate": m["drop_path_rate"]}
    try:
        return build_classifier(m["arch"], num_classes, **kwargs), build_encoder(m["arch"], **kwargs)
    except (TypeError, KeyError, ValueError) as e:
        msg = str(e).strip("'\"").splitlines()[0] if str(e) else type(e).__name__
        raise ConfigError(f"cannot build a {m['arch']!r} classifier with model.encoder={m['encoder']}: "
                          f"{msg}") from None


def run(cfg: Dict[str, Any], eval_only: bool = False, checkpoint: Optional[str] = None) -> Dict[str, Any]:
    """Fine-tunes (or evaluates `checkpoint`) as the config says; returns a summary dict."""
    info = gdist.init_distributed(cfg["device"], timeout_s=cfg["dist_timeout_s"])
    try:
        if eval_only:  # reads a checkpoint, writes one small file: no lock needed
            return _run(cfg, info, eval_only, checkpoint)
        with hold_output_dir(cfg["output_dir"], enabled=info.is_main, sync=True):
            return _run(cfg, info, eval_only, checkpoint)
    finally:
        gdist.cleanup()


def _val_loader(val, cfg: Dict[str, Any], world: int, rank: int, pin: bool) -> DataLoader:
    share = torch.utils.data.Subset(val, list(range(rank, len(val), world)))  # no padding: exact
    return DataLoader(share, batch_size=cfg["eval"]["batch_size"], shuffle=False,
                      num_workers=cfg["data"]["num_workers"], pin_memory=pin)


def _run(cfg: Dict[str, Any], info: gdist.DistInfo, eval_only: bool, checkpoint: Optional[str]) -> Dict[str, Any]:
    world, rank, device = info.world_size, info.rank, info.device
    t, d = cfg["train"], cfg["data"]
    if d["path"] in (None, ""):
        raise ConfigError("no data given; set data.path=DIR with DIR/train/<class>/* and DIR/val/<class>/*")
    micro = batch_layout(cfg, world)
    out_dir = cfg["output_dir"]
    pin = d["pin_memory"] and device.type == "cuda"
    amp_dtype = AMP_DTYPES.get(t["amp"]) if device.type == "cuda" else None
    train_tf, val_tf = build_transforms(d)
    train_set, val_set = build_splits(d["path"], train_tf, val_tf, strict=bool(d["strict"]))
    classes = train_set.classes
    n_cls = cfg["model"]["num_classes"] or len(classes)
    if n_cls != len(classes):
        raise ConfigError(f"model.num_classes={n_cls} but data.path has {len(classes)} class folders; "
                          "leave model.num_classes unset (null) or fix the data")
    torch.manual_seed(cfg["seed"])  # head and random init: identical on every rank
    model, encoder = build_classifier_from_config(cfg, n_cls)
    model.to(device)
    val_loader = _val_loader(val_set, cfg, world, rank, pin)

    if eval_only:
        if not checkpoint:
            raise ConfigError("--eval-only needs --checkpoint PATH (e.g. output_dir/checkpoint-best.pth)")
        load_finetuned(model, checkpoint, cfg, classes)
        res = evaluate(model, val_loader, device, amp_dtype)
        result = {"checkpoint": checkpoint, "val_acc1": res["acc1"], "val_acc5": res["acc5"],
                  "val_loss": res["loss"], "images": res["images"]}
        if info.is_main:
            print(json.dumps(result))
            os.makedirs(out_dir, exist_ok=True)
            ckpt.atomic_write(os.path.join(out_dir, "eval.json"),
                              lambda f: f.write(json.dumps(result, indent=1).encode()), inject_faults=False)
        return result

    train_set.keep_fraction(d["train_fraction"], cfg["seed"])
    dataset = SeededLabelledDataset(train_set, seed=cfg["seed"])
    sampler = StepBatchSampler(len(dataset), micro, world, rank, t["accum_iter"], cfg["seed"])
    if sampler.steps_per_epoch == 0:
        raise ConfigError(f"{len(dataset)} training images are fewer than one global batch of "
                          f"{micro * world * t['accum_iter']}; lower train.batch_size or add images")
    loader = DataLoader(dataset, batch_sampler=sampler, num_workers=d["num_workers"], pin_memory=pin,
                        persistent_workers=d["num_workers"] > 0)
    mixup_fn, criterion = build_mixup_and_loss(cfg, n_cls)
    if mixup_fn is not None and micro % 2:
        raise ConfigError(f"Mixup / CutMix pair samples within a micro-batch, which has {micro} images; "
                          "use an even per-process batch or aug.mixup=0 aug.cutmix=0")
    if t["grad_checkpointing"]:
        model.set_grad_checkpointing(True)
    steps_per_epoch = sampler.steps_per_epoch
    total_steps = steps_per_epoch * t["epochs"]
    lr = t["lr"] if t["lr"] is not None else t["blr"] * t["batch_size"] / t["lr_batch_base"]
    groups = layer_decay_param_groups(model, t["weight_decay"], t["layer_decay"])
    optimizer = build_optimizer(model, lr, t["weight_decay"], t["betas"], groups=groups)
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)
    ema = None
    if t["model_ema"]:
        from timm.utils import ModelEmaV3
        ema = ModelEmaV3(model, decay=t["model_ema_decay"])
    state, best = FinetuneState(), {"acc1": -1.0, "epoch": 0}

    logger = TrainLogger(out_dir, enabled=info.is_main, tensorboard=cfg["log"]["tensorboard"],
                         progress_bar=cfg["log"]["progress_bar"])
    try:
        resume_from = resume_path(cfg)
        if resume_from:
            c = ckpt.load(resume_from)
            check_resumable(c, resume_from, cfg)
            try:
                model.load_state_dict(c["model"])
                optimizer.load_state_dict(c["optimizer"])
                if ema is not None and c.get("ema"):
                    ema.module.load_state_dict(c["ema"])
            except (RuntimeError, ValueError, KeyError) as e:
                raise ConfigError(f"checkpoint {resume_from} does not fit this config's classifier "
                                  f"({first_error_line(e)}); use another output_dir or resume=none") from None
            if c.get("scaler"):
                scaler.load_state_dict(c["scaler"])
            state, best = FinetuneState(**c["state"]), dict(c.get("best") or best)
            ckpt.set_rng_state(c["rng"])
            logger.info(f"resumed from {resume_from} at step {state.step} (epoch {state.epoch + 1})")
        else:
            if cfg["model"]["init"]:
                logger.info(init_classifier(model, cfg["model"]["init"], encoder))
                if ema is not None:
                    ema.module.load_state_dict(model.state_dict())
            if info.is_main:
                os.makedirs(out_dir, exist_ok=True)
                with open(os.path.join(out_dir, "config.yaml"), "w") as f:
                    f.write(dump_config(cfg))
        del encoder
        n_params = sum(p.numel() for p in model.parameters())
        logger.info(f"{cfg['model']['arch']} classifier: {n_params / 1e6:.2f} M params, {n_cls} classes; "
                    f"{len(dataset)} train / {len(val_set)} val images; {world} process(es) x {micro} x "
                    f"{t['accum_iter']} accum = batch {t['batch_size']}; lr {lr:.3g}, layer decay "
                    f"{t['layer_decay']}; {steps_per_epoch} steps/epoch, {total_steps} steps")
        if world > 1:
            model = torch.nn.parallel.DistributedDataParallel(model, device_ids=None, broadcast_buffers=False)
        bare = ckpt.unwrap(model)

        def save(path: str, full: bool = True) -> None:
            if not info.is_main:
                return
            obj = {"model": bare.state_dict(), "config": cfg, "classes": classes, "best": best,
                   "state": state.as_dict()}
            if full:
                obj.update(optimizer=optimizer.state_dict(), scaler=scaler.state_dict(), rng=ckpt.rng_state())
                if ema is not None:
                    obj["ema"] = ema.module.state_dict()
            ckpt.atomic_save(obj, path)

        every_steps = int(cfg["checkpoint"]["every_steps"] or 0)

        def on_step(s: FinetuneState) -> None:
            if every_steps and s.step % every_steps == 0:
                save(os.path.join(out_dir, ckpt.LAST))

        sc = StepConfig.from_config(cfg, micro, steps_per_epoch, lr, amp_dtype)
        last: Dict[str, Any] = {}
        while state.epoch < t["epochs"] and not (t["max_steps"] is not None and state.step >= t["max_steps"]):
            finished = train_one_epoch(model, loader, optimizer, scaler, criterion, state, sc, device, logger,
                                       mixup_fn=mixup_fn, ema=ema, on_step=on_step, epochs=t["epochs"])
            if not finished:
                save(os.path.join(out_dir, ckpt.LAST))
                break
            epoch_done = state.epoch + 1
            record = {"epoch": epoch_done, "step": state.step, "train_loss": state.loss_sum / steps_per_epoch}
            every_eval = max(1, int(cfg["eval"]["every_epochs"] or 1))
            if epoch_done % every_eval == 0 or epoch_done == t["epochs"]:
                res = evaluate(model, val_loader, device, amp_dtype)
                record.update(val_acc1=res["acc1"], val_acc5=res["acc5"], val_loss=res["loss"])
                if ema is not None:
                    e = evaluate(ema.module, val_loader, device, amp_dtype)
                    record.update(val_ema_acc1=e["acc1"], val_ema_acc5=e["acc5"])
                if res["acc1"] > best["acc1"]:
                    best = {"acc1": res["acc1"], "acc5": res["acc5"], "epoch": epoch_done}
                    state.epoch, state.epoch_step = epoch_done, 0
                    save(os.path.join(out_dir, BEST), full=False)
            state.epoch, state.epoch_step, state.loss_sum = epoch_done, 0, 0.0
            save(os.path.join(out_dir, ckpt.LAST))
            every = int(cfg["checkpoint"]["every_epochs"] or 0)
            if every and epoch_done % every == 0:
                save(os.path.join(out_dir, f"checkpoint-{epoch_done:04d}.pth"))
            logger.log(record, state.step, scalars=False)
            if "val_acc1" in record:
                logger.info(f"epoch {epoch_done}: train loss {record['train_loss']:.4f}, val top-1 "
                            f"{record['val_acc1']:.2f} top-5 {record['val_acc5']:.2f} (best "
                            f"{best['acc1']:.2f} at epoch {best['epoch']})")
            last = record
        gdist.barrier()
        return {"step": state.step, "epoch": state.epoch, "output_dir": out_dir, "best": best,
                "val_acc1": last.get("val_acc1"), "val_acc5": last.get("val_acc5")}
    finally:
        logger.close()


def main(argv: Optional[List[str]] = None) -> int:
    """Fine-tunes or evaluates; exit statuses as pretraining's main (0, 2, 3, 143)."""
    def body() -> int:
        args = parse_args(argv)
        cfg = load_finetune_config(args.config, args.overrides)
        if args.print_config:
            print(dump_config(cfg), end="")
            return 0
        if args.checkpoint and not args.eval_only:
            raise ConfigError("--checkpoint is for --eval-only; to start from weights use model.init=PATH, "
                              "to continue a run resume=PATH")
        run(cfg, eval_only=args.eval_only, checkpoint=args.checkpoint)
        return 0
    return run_guarded(body)


if __name__ == "__main__":
    sys.exit(main())
