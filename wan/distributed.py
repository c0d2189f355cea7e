"""The torchrun job a context-parallel worker runs in: where this process sits, its device, joining and leaving the
process group, and passing small values between ranks. One process (no torchrun) is rank 0 of 1 throughout."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch


@dataclass(frozen=True)
class DistributedEnv:
    """Where this process sits in a torchrun job (rank 0 of 1 when not started by torchrun)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_parallel(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def distributed_env(environ: Mapping[str, str] = os.environ) -> DistributedEnv:
    """Read torchrun's RANK / WORLD_SIZE / LOCAL_RANK (defaults: one process)."""
    env = DistributedEnv(
        rank=int(environ.get("RANK", 0)),
        world_size=int(environ.get("WORLD_SIZE", 1)),
        local_rank=int(environ.get("LOCAL_RANK", 0)),
    )
    if env.world_size < 1 or not 0 <= env.rank < env.world_size or env.local_rank < 0:
        raise ValueError(f"inconsistent torchrun environment: {env}")
    return env


def device_for(env: DistributedEnv) -> torch.device:
    """This rank's device: the GPU of its local rank, or the CPU on a host without CUDA."""
    if not torch.cuda.is_available():
        return torch.device("cpu")
    if env.local_rank >= torch.cuda.device_count():
        raise RuntimeError(f"LOCAL_RANK {env.local_rank} but only {torch.cuda.device_count()} GPUs are visible")
    return torch.device("cuda", env.local_rank)


def init_process_group(env: DistributedEnv, device: torch.device) -> None:
    """Join the torchrun job: NCCL between GPUs, gloo on CPU. A no-op for one process or when already joined.

    NCCL's environment is left as the user set it (this never switches on NVLink multicast / NVLS).
    """
    import torch.distributed as dist

    if not env.is_parallel or dist.is_initialized():
        return
    if device.type == "cuda":
        torch.cuda.set_device(device)
        dist.init_process_group("nccl", rank=env.rank, world_size=env.world_size, device_id=device)
    else:
        dist.init_process_group("gloo", rank=env.rank, world_size=env.world_size)


def destroy_process_group() -> None:
    """Leave the job (a no-op when no process group is up)."""
    import torch.distributed as dist

    if dist.is_initialized():
        dist.destroy_process_group()


def broadcast_value(value: Any, src: int = 0) -> Any:
    """`value` as rank `src` has it, on every rank (a picklable object; e.g. a seed that rank 0 drew)."""
    import torch.distributed as dist

    if not dist.is_initialized():
        return value
    box = [value]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def gather_values(value: Any) -> list[Any]:
    """Every rank's `value`, in rank order (one item when no process group is up)."""
    import torch.distributed as dist

    if not dist.is_initialized():
        return [value]
    values: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(values, value)
    return values
