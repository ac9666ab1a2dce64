"""Process-group set-up from the torchrun / Slurm environment: gloo on CPU, nccl on GPU (gloo when
more processes than GPUs run on a node, e.g. two processes sharing one GPU for a test)."""
from __future__ import annotations

import datetime
import os
import sys
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _slurm_to_torchrun_env() -> None:
    """Maps Slurm's variables to torchrun's when a job is started by srun without torchrun
    (tools/submit_slurm.py sets MASTER_ADDR/MASTER_PORT itself)."""
    if "RANK" in os.environ or "SLURM_PROCID" not in os.environ or "MASTER_ADDR" not in os.environ:
        return
    os.environ["RANK"] = os.environ["SLURM_PROCID"]
    os.environ["WORLD_SIZE"] = os.environ["SLURM_NTASKS"]
    os.environ["LOCAL_RANK"] = os.environ.get("SLURM_LOCALID", "0")
    os.environ.setdefault("LOCAL_WORLD_SIZE", os.environ.get("SLURM_NTASKS_PER_NODE", "1").split("(")[0])


def init_distributed(device: str = "auto", timeout_s: float = 1800) -> DistInfo:
    """Initialises torch.distributed when launched by torchrun (RANK/WORLD_SIZE set), else returns
    a single-process DistInfo. device: auto | cpu | cuda.

    timeout_s bounds every collective: when a process hangs (or dies without closing its
    connections), the others raise after timeout_s instead of waiting forever, and torchrun then
    stops the job. It must exceed the longest gap between two collectives of a healthy run (rank 0
    writing a checkpoint while the others wait at the next step); 30 minutes by default."""
    _slurm_to_torchrun_env()
    use_cuda = torch.cuda.is_available() if device == "auto" else device == "cuda"
    if use_cuda and not torch.cuda.is_available():
        from ..config import ConfigError
        raise ConfigError("device=cuda was asked for but no CUDA device is available; use device=cpu")
    rank = int(os.environ.get("RANK", 0))
    world = int(os.environ.get("WORLD_SIZE", 1))
    local = int(os.environ.get("LOCAL_RANK", 0))
    backend = "gloo"
    if use_cuda:
        gpus = torch.cuda.device_count()
        dev = torch.device("cuda", local % gpus)
        torch.cuda.set_device(dev)
        local_processes = int(os.environ.get("LOCAL_WORLD_SIZE", 1))
        backend = backend_for(local_processes, gpus)
        if backend == "gloo" and local == 0:  # said once per node: a launch mistake looks the same
            print(f"warning: {local_processes} processes share {gpus} GPU(s) on this node; they use "
                  "gloo, which is slower than nccl (launch one process per GPU for speed)",
                  file=sys.stderr, flush=True)
    else:
        dev = torch.device("cpu")
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(backend=backend, init_method="env://", rank=rank, world_size=world,
                                timeout=datetime.timedelta(seconds=float(timeout_s)),
                                device_id=dev if backend == "nccl" else None)
    return DistInfo(rank, world, local, dev)


def backend_for(local_processes: int, gpus: int) -> str:
    """nccl when every process of the node has a GPU of its own; gloo when processes share GPUs
    (nccl refuses two ranks on one device; gloo reduces CUDA tensors through the host)."""
    return "nccl" if local_processes <= gpus else "gloo"


def is_initialized() -> bool:
    return dist.is_available() and dist.is_initialized()


def get_rank() -> int:
    return dist.get_rank() if is_initialized() else 0


def get_world_size() -> int:
    return dist.get_world_size() if is_initialized() else 1


def barrier() -> None:
    if is_initialized():
        dist.barrier()


def all_reduce_mean(value: torch.Tensor) -> torch.Tensor:
    """Mean over processes of a tensor (returned as a new tensor, input untouched)."""
    if not is_initialized():
        return value.detach().clone()
    out = value.detach().clone()
    dist.all_reduce(out, op=dist.ReduceOp.SUM)
    return out / dist.get_world_size()


def cleanup() -> None:
    if is_initialized():
        dist.destroy_process_group()
