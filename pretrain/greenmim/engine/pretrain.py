"""The pretraining program: config -> data, model, optimiser -> epochs -> checkpoints -> encoder.

    python pretrain/main_pretrain.py --config configs/pretrain/tiny_cpu.yaml output_dir=out/tiny
    torchrun --nproc_per_node 8 pretrain/main_pretrain.py --config ... data.path=/datasets/imagenet

Problems the user can fix (bad config key, empty data folder, batch size that does not split over
the processes, diverged loss or gradients, unreadable checkpoint, disk full, an output_dir that
another run is using) end the program with one line `error: ...` and exit status 2. A process
that loses the others (one died, or hung past `dist_timeout_s`) prints one `error:` line and exits
with 3; SIGTERM prints one and exits with 143 (greenmim.engine.program.run_guarded).
Checkpoints are atomic, so a kill at any moment loses only the steps since the last one.
"""
from __future__ import annotations

import argparse
import os
from typing import Any, Dict, List, Optional

import torch

from ..config import ConfigError, config_argument_parser, dump_config, load_config
from ..data.masking import MaskGenerator
from . import checkpoint as ckpt
from . import dist as gdist
from .build import build_model
from .data import build_dataset, build_loader, skipped_images
from .logger import TrainLogger
from .mask_collate import collator_for
from .optim import build_optimizer, scaled_lr
from .program import check_resumable, first_error_line, resume_path, run_guarded
from .run_lock import hold_output_dir
from .step_modes import check_compile, compile_model, graphed_step
from .train import StepConfig, TrainState, train_one_epoch
from .visualize import save_reconstruction

AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    p = config_argument_parser(
        "GreenMIM pretraining. Extra arguments key.sub=value override the config "
        "(e.g. data.path=/datasets/imagenet train.epochs=100 output_dir=out/run1).",
        "configs/pretrain/tiny_cpu.yaml")
    return p.parse_args(argv)


def batch_layout(cfg: Dict[str, Any], world_size: int) -> int:
    """Per-process micro-batch; the global batch must split evenly over processes x accumulation."""
    batch, accum = cfg["train"]["batch_size"], cfg["train"]["accum_iter"]
    if batch % (world_size * accum):
        raise ConfigError(
            f"train.batch_size={batch} is not divisible by {world_size} processes x "
            f"train.accum_iter={accum}; use a multiple of {world_size * accum}")
    return batch // (world_size * accum)


def _vis_batch(dataset, cfg: Dict[str, Any], n: int):
    """A fixed batch (first n images, epoch-0 augmentation) and a fixed mask, so that figures of
    different epochs are comparable."""
    n = max(1, min(n, len(dataset)))
    images = torch.stack([dataset[(0, i)] for i in range(n)])
    gen = MaskGenerator(cfg["data"]["img_size"], cfg["mask"]["ratio"], shared=False, seed=cfg["seed"] + 99)
    return images, gen(n)


def run(cfg: Dict[str, Any]) -> Dict[str, Any]:
    """Trains as the config says; returns a summary dict (final step, paths). Raises UserError."""
    info = gdist.init_distributed(cfg["device"], timeout_s=cfg["dist_timeout_s"])
    try:
        # one run per output folder (rank 0 holds the lock; a refusal stops every rank)
        with hold_output_dir(cfg["output_dir"], enabled=info.is_main, sync=True):
            return _run(cfg, info)
    finally:
        gdist.cleanup()


def _run(cfg: Dict[str, Any], info: gdist.DistInfo) -> Dict[str, Any]:
    world, rank, device = info.world_size, info.rank, info.device
    t = cfg["train"]
    micro = batch_layout(cfg, world)
    out_dir = cfg["output_dir"]
    torch.manual_seed(cfg["seed"])  # model init: identical on every rank (DDP also broadcasts)

    dataset = build_dataset(cfg, device)  # data.decode=auto resolves against this device
    model = build_model(cfg).to(device)
    # Masks (and the green encoder's plans) come from the loader's workers; the engine's own
    # generator is the fallback when mask.in_workers is off.
    collate = (collator_for(model, cfg["data"]["img_size"], cfg["mask"]["ratio"], cfg["mask"]["shared"],
                            cfg["seed"]) if cfg["mask"]["in_workers"] else None)
    loader = build_loader(dataset, micro, world, rank, t["accum_iter"], cfg["seed"],
                          cfg["data"]["num_workers"], cfg["data"]["pin_memory"] and device.type == "cuda",
                          collate=collate)
    steps_per_epoch = loader.batch_sampler.steps_per_epoch
    total_steps = steps_per_epoch * t["epochs"]

    lr = t["lr"] if t["lr"] is not None else scaled_lr(t["blr"], t["batch_size"])
    optimizer = build_optimizer(model, lr, t["weight_decay"], t["betas"])
    amp_dtype = AMP_DTYPES.get(t["amp"]) if device.type == "cuda" else None
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)
    mask_gen = MaskGenerator(cfg["data"]["img_size"], cfg["mask"]["ratio"], cfg["mask"]["shared"],
                             seed=cfg["seed"])
    state = TrainState()

    # A checkpoint that cannot be resumed is refused before anything is logged: one line in all.
    resume_from = resume_path(cfg)
    c = ckpt.load(resume_from) if resume_from else None  # weights_only: refuses pickled code
    if c is not None:
        check_resumable(c, resume_from, cfg)
    logger = TrainLogger(out_dir, enabled=info.is_main, tensorboard=cfg["log"]["tensorboard"],
                         progress_bar=cfg["log"]["progress_bar"])
    logger.info(dataset.decode_plan.note)  # first line: which decoding path feeds the step
    try:
        if c is not None:
            try:
                model.load_state_dict(c["model"])
                optimizer.load_state_dict(c["optimizer"])
            except (RuntimeError, ValueError, KeyError) as e:
                raise ConfigError(f"checkpoint {resume_from} does not fit this config's model "
                                  f"({first_error_line(e)}); use another output_dir "
                                  "or resume=none") from None
            if c.get("scaler"):
                scaler.load_state_dict(c["scaler"])
            state = TrainState(**c["state"])
            ckpt.set_rng_state(c["rng"], mask_gen)
            logger.info(f"resumed from {resume_from} at step {state.step} (epoch {state.epoch + 1}, "
                        f"step {state.epoch_step} of {steps_per_epoch})")
        elif info.is_main:
            os.makedirs(out_dir, exist_ok=True)
            with open(os.path.join(out_dir, "config.yaml"), "w") as f:
                f.write(dump_config(cfg))
        if device.type == "cpu" and t["amp"] not in ("none", None, False):
            logger.info("running on the CPU: training in fp32 (train.amp applies to CUDA only)")
        n_params = sum(p.numel() for p in model.parameters())
        logger.info(f"{cfg['model']['type']} {cfg['model']['arch']}: {n_params / 1e6:.2f} M params; "
                    f"{len(dataset)} images, {world} process(es) x {micro} x {t['accum_iter']} accum = "
                    f"batch {t['batch_size']}; lr {lr:.3g}; {steps_per_epoch} steps/epoch, "
                    f"{total_steps} steps")

        compile_mode = check_compile(cfg)
        graphed = graphed_step(cfg, model, device, amp_dtype)
        if world > 1 and graphed is None:  # a graphed step averages its gradients itself
            # device_ids=None: DDP would otherwise copy every input to the GPU, the CPU-side mask
            # included, and the green encoder would sync to copy it back for its host-side plan.
            # No buffer needs syncing (no batch norm), so none is broadcast.
            model = torch.nn.parallel.DistributedDataParallel(model, device_ids=None,
                                                              broadcast_buffers=False)
        bare = ckpt.unwrap(model)
        if compile_mode and graphed is None:
            model = compile_model(model, compile_mode)
            logger.info(f"torch.compile (mode {compile_mode}); the first steps include compilation")

        def save(path: str) -> None:
            if not info.is_main:
                return
            try:
                ckpt.atomic_save({"model": bare.state_dict(), "optimizer": optimizer.state_dict(),
                                  "scaler": scaler.state_dict(), "state": state.as_dict(),
                                  "rng": ckpt.rng_state(mask_gen), "config": cfg}, path)
            except ckpt.CheckpointWriteError as e:
                raise ckpt.CheckpointWriteError(
                    f"{e} — free disk space (or point output_dir elsewhere), then resume with "
                    f"resume=auto", e.reason) from None

        every_steps = int(cfg["checkpoint"]["every_steps"] or 0)

        def on_step(s: TrainState) -> None:
            if every_steps and s.step % every_steps == 0:
                save(os.path.join(out_dir, ckpt.LAST))

        sc = StepConfig.from_config(cfg, micro, steps_per_epoch, lr, amp_dtype, forward_backward=graphed)
        vis = None
        while state.epoch < t["epochs"] and not (t["max_steps"] is not None and state.step >= t["max_steps"]):
            finished = train_one_epoch(model, loader, optimizer, scaler, mask_gen, state, sc, device,
                                       logger, on_step=on_step, epochs=t["epochs"])
            if not finished:
                save(os.path.join(out_dir, ckpt.LAST))
                break
            epoch_done = state.epoch + 1
            state.epoch, state.epoch_step = epoch_done, 0
            save(os.path.join(out_dir, ckpt.LAST))
            every = int(cfg["checkpoint"]["every_epochs"] or 0)
            if every and (epoch_done % every == 0 or epoch_done == t["epochs"]):
                save(os.path.join(out_dir, f"checkpoint-{epoch_done:04d}.pth"))
            skipped = skipped_images(dataset)
            logger.log({"epoch_done": epoch_done, "step": state.step,
                        **({"skipped_images": skipped} if skipped else {})}, state.step, scalars=False)
            vis_every = int(cfg["log"]["vis_every_epochs"] or 0)
            if info.is_main and vis_every and (epoch_done % vis_every == 0 or epoch_done == t["epochs"]):
                vis = vis or _vis_batch(dataset, cfg, cfg["log"]["vis_samples"])
                path = os.path.join(out_dir, "vis", f"reconstruction-{epoch_done:04d}.png")
                save_reconstruction(bare, vis[0].to(device), vis[1], path)
        summary = {"step": state.step, "epoch": state.epoch, "output_dir": out_dir}
        if state.epoch >= t["epochs"] and cfg["export_encoder"] and info.is_main:
            summary["encoder"] = ckpt.export_encoder(bare.state_dict(),
                                                     os.path.join(out_dir, "encoder.pth"), cfg)
            logger.info(f"done: {state.step} steps; encoder written to {summary['encoder']}")
        gdist.barrier()
        return summary
    finally:
        logger.close()


def main(argv: Optional[List[str]] = None) -> int:
    """Runs pretraining; exit status 0 done, 2 a user error (one `error:` line), 3 the job lost
    one of its processes (one `error:` line per surviving process), 143 SIGTERM."""
    def body() -> int:
        args = parse_args(argv)
        cfg = load_config(args.config, args.overrides)
        if args.print_config:
            print(dump_config(cfg), end="")
            return 0
        run(cfg)
        return 0
    return run_guarded(body)
