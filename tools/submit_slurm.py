#!/usr/bin/env python
"""Submits GreenMIM pretraining to a Slurm cluster with submitit (one task per GPU).

    python tools/submit_slurm.py --nodes 2 --gpus-per-node 8 --partition learnlab --timeout 4320 \
        --config configs/pretrain/greenmim_swin_base_w7.yaml data.path=/datasets/imagenet
    python tools/submit_slurm.py --finetune --nodes 2 --config configs/finetune/greenmim_swin_base_w7_in1k.yaml \
        data.path=/datasets/imagenet model.init=output/greenmim_swin_base_w7/encoder.pth

The job directory (default output/slurm/<config name>) holds Slurm's logs and, unless
output_dir= is given, the training output. On timeout or pre-emption the job requeues itself and
continues from checkpoint-last.pth (resume=auto), so set checkpoint.every_steps to bound the
work that can be lost.
"""
from __future__ import annotations

import argparse
import os
import sys


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", required=True)
    p.add_argument("--nodes", type=int, default=1)
    p.add_argument("--gpus-per-node", type=int, default=8)
    p.add_argument("--cpus-per-task", type=int, default=10)
    p.add_argument("--mem-gb", type=int, default=None, help="memory per node (default: 40 GB per GPU)")
    p.add_argument("--timeout", type=int, default=4320, help="minutes")
    p.add_argument("--partition", default=None)
    p.add_argument("--account", default=None)
    p.add_argument("--qos", default=None)
    p.add_argument("--constraint", default=None, help="e.g. volta32gb")
    p.add_argument("--comment", default=None)
    p.add_argument("--job-dir", default=None)
    p.add_argument("--finetune", action="store_true",
                   help="submit classification fine-tuning (pretrain/main_finetune.py, configs/finetune/)")
    p.add_argument("overrides", nargs="*", metavar="key=value")
    return p.parse_args(argv)


class Trainer:
    """The submitit callable: sets torchrun's environment from Slurm's, then runs main."""

    def __init__(self, argv, finetune: bool = False):
        self.argv = list(argv)
        self.finetune = finetune

    def __call__(self) -> int:
        import submitit
        env = submitit.JobEnvironment()
        # MASTER_ADDR/PORT, RANK, WORLD_SIZE, LOCAL_RANK for init_process_group("env://")
        dist_env = submitit.helpers.TorchDistributedEnvironment().export(set_cuda_visible_devices=False,
                                                                         overwrite=True)
        print(f"task {dist_env.rank}/{dist_env.world_size} on {env.hostname}, master "
              f"{dist_env.master_addr}:{dist_env.master_port}", flush=True)
        if self.finetune:
            from greenmim.engine.finetune import main
        else:
            from greenmim.engine.pretrain import main
        code = main(self.argv)
        if code:
            raise SystemExit(code)
        return code

    def checkpoint(self):
        """Called by submitit on timeout / pre-emption: requeue; resume=auto picks up the run."""
        import submitit
        return submitit.helpers.DelayedSubmission(Trainer(self.argv, self.finetune))


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        import submitit
    except ImportError:
        print("error: submitit is not installed; pip install submitit", file=sys.stderr)
        return 2
    from greenmim.config import UserError, load_config
    try:
        if args.finetune:
            from greenmim.engine.finetune_config import load_finetune_config as load_config
        cfg = load_config(args.config, args.overrides)  # fail here, not after queueing
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    name = os.path.splitext(os.path.basename(args.config))[0]
    job_dir = os.path.abspath(args.job_dir or os.path.join("output", "slurm", name))
    overrides = list(args.overrides)
    if not any(o.startswith("output_dir=") for o in overrides):
        overrides.append(f"output_dir={job_dir}")
    if not any(o.startswith("resume=") for o in overrides):
        overrides.append("resume=auto")
    world = args.nodes * args.gpus_per_node
    if cfg["train"]["batch_size"] % (world * cfg["train"]["accum_iter"]):
        print(f"error: train.batch_size={cfg['train']['batch_size']} is not divisible by {world} GPUs x "
              f"train.accum_iter={cfg['train']['accum_iter']}", file=sys.stderr)
        return 2

    executor = submitit.AutoExecutor(folder=os.path.join(job_dir, "slurm", "%j"), slurm_max_num_timeout=30)
    extra = {k: v for k, v in (("slurm_partition", args.partition), ("slurm_account", args.account),
                               ("slurm_qos", args.qos),
                               ("slurm_constraint", args.constraint), ("slurm_comment", args.comment))
             if v}
    executor.update_parameters(
        name=f"greenmim_{name}", nodes=args.nodes, gpus_per_node=args.gpus_per_node,
        tasks_per_node=args.gpus_per_node, cpus_per_task=args.cpus_per_task,
        mem_gb=args.mem_gb or 40 * args.gpus_per_node, timeout_min=args.timeout,
        slurm_signal_delay_s=120, **extra)
    job = executor.submit(Trainer(["--config", os.path.abspath(args.config), *overrides], args.finetune))
    print(f"submitted job {job.job_id}; logs and output in {job_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
