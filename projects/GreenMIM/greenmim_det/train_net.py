"""Train / evaluate a detector from a LazyConfig (Mask R-CNN + Green Swin FPN on COCO).

Installed as `greenmim-train-det`; `python tools/train_net.py` runs the same program.

    python tools/train_net.py --config-file configs/detection/mask_rcnn_green_swin_b_fpn_3x.py \
        --num-gpus 8 train.init_checkpoint=/path/to/pretrain_checkpoint.pth
    python tools/train_net.py --config-file <cfg> --eval-only train.init_checkpoint=output/model_final.pth
    python tools/train_net.py --config-file <cfg> --resume          # continue from output_dir
    python tools/train_net.py --config-file <cfg> train.device=cpu  # CPU (AMP is turned off)

Multi-machine: --num-machines M --machine-rank R --dist-url tcp://HOST:PORT (detectron2 launch).
Under torchrun (GPUs with nccl, CPUs with gloo; a CPU process gets one thread):
    torchrun --standalone --nproc_per_node 2 tools/train_net.py --config-file <cfg> train.device=cpu
The config's `train` block (configs/detection/common/train.py) holds output_dir, init_checkpoint,
max_iter, amp, ddp, checkpointer, eval_period, log_period, device and seed.

Bad input ends with one `error: ...` line: an override key the config does not have, a dataset
or checkpoint that cannot be used (pickled code included: nothing in a checkpoint is executed),
a disk that is full while saving. An output_dir another run is using ends the program at once
with one line and exit status 2 (the lock goes with that run, SIGKILL included). Snapshots are
written atomically (GreenCheckpointer), so a run killed at any moment continues with --resume
from its last complete snapshot.
"""
import contextlib
import logging
import os
import sys

import torch

from detectron2.config import LazyConfig, instantiate
from detectron2.engine import (
    AMPTrainer,
    SimpleTrainer,
    default_argument_parser,
    default_setup,
    default_writers,
    hooks,
    launch,
)
from detectron2.engine.defaults import create_ddp_model
from detectron2.evaluation import inference_on_dataset, print_csv_format
from detectron2.utils import comm
from detectron2.utils.events import CommonMetricPrinter, JSONWriter
from detectron2.utils.logger import setup_logger

from greenmim.config import UserError
from greenmim.engine.program import one_line
from greenmim.engine.run_lock import hold_output_dir

from .checkpoint import CheckpointError, GreenCheckpointer
from .config_check import UnknownConfigKeyError, check_override_keys
from .data import DatasetError, dataset_thing_classes, ensure_dataset
from .torchrun import ddp_device_kwargs, init_torchrun_process_groups, started_by_torchrun

logger = logging.getLogger("detectron2")


def prepare_config(cfg):
    """Fills in run-time defaults: device fallbacks, AMP on CPU, the evaluator's output dir."""
    device = str(cfg.train.get("device", "cuda"))
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit("error: train.device=cuda but no CUDA device is available; pass train.device=cpu")
    if cfg.train.amp.enabled and not device.startswith("cuda"):
        logger.info("AMP is for GPUs; training in float32 on %s", device)
        cfg.train.amp.enabled = False
    if "evaluator" in cfg.dataloader and cfg.dataloader.evaluator.get("output_dir", None) is None:
        cfg.dataloader.evaluator.output_dir = os.path.join(cfg.train.output_dir, "inference")
    return cfg


def check_num_classes(cfg):
    """Fails early (one line) when the dataset has more classes than the heads predict."""
    try:
        num_classes = cfg.model.roi_heads.num_classes
        dataset = cfg.dataloader.train.dataset
        names = dataset.names
    except (AttributeError, KeyError):
        return
    if not isinstance(names, str):
        return
    ensure_dataset(names, dataset.get("json_file", None), dataset.get("image_root", None))
    classes = dataset_thing_classes(names)
    if classes and len(classes) != num_classes:
        msg = (
            f"dataset '{names}' has {len(classes)} classes but model.roi_heads.num_classes={num_classes}; "
            f"pass model.roi_heads.num_classes={len(classes)}"
        )
        if len(classes) > num_classes:
            raise DatasetError(msg)
        logger.warning(msg)


def metric_writers(output_dir: str, max_iter: int) -> list:
    """detectron2's writers (console, metrics.json, TensorBoard); without tensorboard installed the
    first two, said in one log line, instead of an ImportError at the first write."""
    try:
        import torch.utils.tensorboard  # noqa: F401
    except ImportError:
        logger.info("tensorboard is not installed: metrics go to the console and metrics.json only")
        return [CommonMetricPrinter(max_iter), JSONWriter(os.path.join(output_dir, "metrics.json"))]
    return default_writers(output_dir, max_iter)


def do_test(cfg, model):
    if "evaluator" not in cfg.dataloader:
        return {}
    results = inference_on_dataset(
        model, instantiate(cfg.dataloader.test), instantiate(cfg.dataloader.evaluator)
    )
    if comm.is_main_process():
        print_csv_format(results)
    return results


def do_train(args, cfg):
    model = instantiate(cfg.model)
    logger.info("Model:\n%s", model)
    model.to(cfg.train.device)

    cfg.optimizer.params.model = model
    optim = instantiate(cfg.optimizer)
    train_loader = instantiate(cfg.dataloader.train)

    model = create_ddp_model(model, **cfg.train.ddp, **ddp_device_kwargs(cfg.train.device))
    trainer = (AMPTrainer if cfg.train.amp.enabled else SimpleTrainer)(model, train_loader, optim)
    checkpointer = GreenCheckpointer(model, cfg.train.output_dir, trainer=trainer, optimizer=optim)
    trainer.register_hooks(
        [
            hooks.IterationTimer(),
            hooks.LRScheduler(scheduler=instantiate(cfg.lr_multiplier)),
            hooks.PeriodicCheckpointer(checkpointer, **cfg.train.checkpointer)
            if comm.is_main_process()
            else None,
            # evaluates every eval_period iterations and always after the last one
            hooks.EvalHook(cfg.train.eval_period, lambda: do_test(cfg, model)),
            hooks.PeriodicWriter(
                metric_writers(cfg.train.output_dir, cfg.train.max_iter),
                period=cfg.train.log_period,
            )
            if comm.is_main_process()
            else None,
        ]
    )
    checkpointer.resume_or_load(cfg.train.init_checkpoint, resume=args.resume)
    # the checkpoint stores the iteration that just finished: start at the next one
    start_iter = trainer.iter + 1 if args.resume and checkpointer.has_checkpoint() else 0
    trainer.train(start_iter, cfg.train.max_iter)
    return trainer


def main(args):
    """Returns the evaluation results (--eval-only) or the finished trainer."""
    cfg = LazyConfig.load(args.config_file)
    try:
        check_override_keys(cfg, args.opts)  # detectron2 would silently add a misspelt key
    except UnknownConfigKeyError as e:
        raise SystemExit(f"error: {e}") from None
    cfg = LazyConfig.apply_overrides(cfg, args.opts)
    cfg = prepare_config(cfg)
    if started_by_torchrun():
        init_torchrun_process_groups(cfg.train.device)
    with contextlib.ExitStack() as held:
        try:  # one run per output folder: a second one stops here, before writing anything into it
            held.enter_context(hold_output_dir(cfg.train.output_dir, enabled=comm.is_main_process(),
                                               option="train.output_dir", sync=True))
        except UserError as e:
            if comm.is_main_process():
                print(f"error: {e}", file=sys.stderr, flush=True)
            raise SystemExit(2) from None
        return _setup_and_run(args, cfg)


def _setup_and_run(args, cfg):
    default_setup(cfg, args)
    # GreenCheckpointer's one-line load report: on the terminal and in output_dir/log.txt too
    setup_logger(cfg.train.output_dir, distributed_rank=comm.get_rank(), name="greenmim_det").propagate = True
    try:
        if args.eval_only:
            model = instantiate(cfg.model)
            model.to(cfg.train.device)
            model = create_ddp_model(model, **ddp_device_kwargs(cfg.train.device))
            GreenCheckpointer(model, cfg.train.output_dir).resume_or_load(
                cfg.train.init_checkpoint, resume=args.resume
            )
            return do_test(cfg, model)
        check_num_classes(cfg)
        return do_train(args, cfg)
    except (DatasetError, CheckpointError) as e:
        # bad input: one line, no traceback
        raise SystemExit(f"error: {one_line(e)}") from None


def parse_args(argv=None):
    return default_argument_parser().parse_args(argv)


def cli(argv=None) -> None:
    """The command line: detectron2's arguments, then `main` in each launched process."""
    args = parse_args(argv)
    launch(
        main,
        args.num_gpus,
        num_machines=args.num_machines,
        machine_rank=args.machine_rank,
        dist_url=args.dist_url,
        args=(args,),
    )
