"""Running tools/train_net.py under torchrun, on CPUs (gloo) as well as GPUs (nccl).

detectron2's own `launch()` spawns one process per GPU and refuses to start without CUDA. torchrun
works everywhere: it starts the processes and sets RANK / WORLD_SIZE / LOCAL_RANK / LOCAL_WORLD_SIZE;
this module turns that environment into the process groups detectron2 expects (`comm` needs a
per-machine group for `get_local_rank()`).

On a CPU each process gets one thread (torchrun sets OMP_NUM_THREADS=1). That does not make a
small CPU faster: on the 2-core demo machine the demo's Mask R-CNN took 0.86 s per iteration with
2 one-thread processes against about 0.8 s with one two-thread process, and its pretraining 3:28
against 3:22 (not profiled further; the gradient all-reduce over gloo is the likely cost), so the
demo keeps one process by default (`--procs` chooses).
"""
from __future__ import annotations

import os
from typing import Dict

import torch.distributed as dist


def started_by_torchrun() -> bool:
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ and "LOCAL_RANK" in os.environ


def init_torchrun_process_groups(device: str, timeout_s: float = 1800) -> None:
    """Creates the global process group from torchrun's environment (greenmim's init_distributed:
    gloo on CPU, nccl on CUDA) and detectron2's per-machine group. device: the config's
    train.device ("cpu", "cuda", "cuda:N"), already checked by train_net's prepare_config."""
    from detectron2.utils import comm
    from greenmim.engine.dist import init_distributed

    info = init_distributed("cuda" if str(device).startswith("cuda") else "cpu", timeout_s=timeout_s)
    local_size = int(os.environ.get("LOCAL_WORLD_SIZE", info.world_size))
    # every process must take part in creating every machine's group, in the same order
    for m in range(info.world_size // local_size):
        group = dist.new_group(list(range(m * local_size, (m + 1) * local_size)))
        if m == info.rank // local_size:
            comm._LOCAL_PROCESS_GROUP = group
    comm.synchronize()


def ddp_device_kwargs(device: str) -> Dict:
    """DistributedDataParallel's device_ids: this process's GPU, or None for a CPU module
    (detectron2's create_ddp_model would otherwise pass the local rank as a GPU index)."""
    if str(device).startswith("cuda"):
        from detectron2.utils import comm

        return {"device_ids": [comm.get_local_rank()]}
    return {"device_ids": None}
