"""Training on several processes with PyTorch's DistributedDataParallel (DDP).

Under ``torchrun`` (WORLD_SIZE > 1) :func:`setup` joins the process group (gloo on CPUs, nccl on
GPUs); every process trains a replica on its own share of the data, DDP averages the gradients
during the backward pass, and the figures the loop needs to agree on (the loss, the gradient
norm, whether to stop, validation sums) are averaged or summed with :func:`mean` and
:func:`total`. Rank 0 writes the checkpoints and shows the progress bar.

Without torchrun every function here is the identity (``Dist().on`` is False), so the loop is
written once for both cases.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from flowlib._checks import FlowInputError

__all__ = ["Dist", "setup", "teardown", "wrap", "mean", "total", "gather", "broadcast_int"]


@dataclass(frozen=True)
class Dist:
    """The process group as fit sees it: how many processes, which one this is."""

    world: int = 1
    rank: int = 0
    local_rank: int = 0
    created_group: bool = False  #: fit joined the group, so fit leaves it at the end
    device: torch.device = torch.device("cpu")  #: where collectives run (nccl needs CUDA tensors)

    @property
    def on(self) -> bool:
        return self.world > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def setup(distributed: bool | str, device: str) -> Dist:
    """Join the process group when launched by torchrun (``distributed="auto"`` and WORLD_SIZE > 1)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if distributed is False or (distributed == "auto" and world <= 1):
        return Dist()
    import torch.distributed as dist

    if not dist.is_available():
        raise FlowInputError("fit: torch.distributed is not available in this PyTorch build")
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = torch.cuda.is_available() and device in ("auto", "cuda")
    if use_cuda:
        torch.cuda.set_device(local_rank)
    created = False
    if not dist.is_initialized():
        # nccl moves CUDA tensors between GPUs; gloo is the CPU backend.
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
        created = True
    comm = torch.device("cuda", local_rank) if dist.get_backend() == "nccl" else torch.device("cpu")
    return Dist(dist.get_world_size(), dist.get_rank(), local_rank, created, comm)


def teardown(d: Dist) -> None:
    """Leave the process group if :func:`setup` joined it (after every process got here)."""
    if d.created_group:
        import torch.distributed as dist

        dist.barrier()
        dist.destroy_process_group()


def wrap(module: nn.Module, device: torch.device, d: Dist) -> nn.Module:
    """``module`` in DistributedDataParallel (rank 0's weights broadcast to all), or as it is."""
    if not d.on:
        return module
    from torch.nn.parallel import DistributedDataParallel

    return DistributedDataParallel(module, device_ids=[device.index] if device.type == "cuda" else None)


def mean(t: Tensor, d: Dist) -> Tensor:
    """The average of ``t`` over the processes (``t`` itself without DDP)."""
    if not d.on:
        return t
    return total(t, d) / d.world


def total(t: Tensor, d: Dist) -> Tensor:
    """The sum of ``t`` over the processes (``t`` itself without DDP)."""
    if not d.on:
        return t
    import torch.distributed as dist

    t = t.to(d.device)
    dist.all_reduce(t)
    return t


def gather(obj: Any, d: Dist) -> list[Any]:
    """One picklable object from every process, in rank order (``[obj]`` without DDP)."""
    if not d.on:
        return [obj]
    import torch.distributed as dist

    out: list[Any] = [None] * d.world
    dist.all_gather_object(out, obj)
    return out


def broadcast_int(value: int, d: Dist) -> int:
    """Rank 0's ``value`` on every process."""
    if not d.on:
        return value
    import torch.distributed as dist

    t = torch.tensor([value], dtype=torch.int64, device=d.device)
    dist.broadcast(t, src=0)
    return int(t.item())
