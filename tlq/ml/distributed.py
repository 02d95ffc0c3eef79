"""What a training process needs to know when it is one rank of a ``--ddp N`` job (``tlq.ml.ddp_launch`` starts
the ranks): its rank, its shard of each epoch, its model wrapped in DistributedDataParallel, and agreement with
the other ranks. Outside a distributed job every helper answers as for a single process."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch


def active() -> bool:
    """Whether this process is a rank of a started group; never imports torch itself (the CLI imports the task
    modules that use this without torch, for shell completion)."""
    dist = sys.modules.get("torch.distributed")
    return dist is not None and dist.is_available() and dist.is_initialized()


def rank() -> int:
    return sys.modules["torch.distributed"].get_rank() if active() else 0


def world() -> int:
    return sys.modules["torch.distributed"].get_world_size() if active() else 1


def is_main() -> bool:
    """Rank 0: the one rank that records metrics, checkpoints and artifacts."""
    return rank() == 0


def shard(order: list[int]) -> list[int]:
    """This rank's share of an epoch's order: every ``world()``-th index from ``rank()``, the order first padded
    with its own head to a multiple of the world size, so every rank makes as many steps (as torch's
    DistributedSampler does)."""
    n = world()
    if n == 1 or not order:
        return order
    padded = order + order[: (-len(order)) % n]
    return padded[rank() :: n]


def wrap(module: torch.nn.Module, device: str) -> torch.nn.Module:
    """``module`` in DistributedDataParallel (gradients averaged across ranks at each backward, buffers such as
    batch norm's broadcast from rank 0 at each forward); ``module`` itself outside a distributed job. Wrapped
    anew whenever what trains changes (freeze-unfreeze's phases): DDP fixes its parameters when it is built."""
    import torch

    if not active():
        return module
    from torch.nn.parallel import DistributedDataParallel

    device_ids = [torch.cuda.current_device()] if device == "cuda" else None
    return DistributedDataParallel(module, device_ids=device_ids)


def _device() -> str:
    """Where a collective's tensors must live: nccl reduces GPU tensors only, gloo CPU ones."""
    import torch.distributed as dist

    return "cuda" if dist.get_backend() == "nccl" else "cpu"


def agree(flag: bool) -> bool:
    """Rank 0's ``flag``, on every rank (early stopping is decided where validation runs)."""
    import torch
    import torch.distributed as dist

    if not active():
        return flag
    value = torch.tensor([1 if flag else 0], dtype=torch.int64, device=_device())
    dist.broadcast(value, src=0)
    return bool(value.item())


def sum_over_ranks(values: list[float]) -> list[float]:
    """Each value summed over the ranks, in one collective."""
    import torch
    import torch.distributed as dist

    if not active():
        return values
    tensor = torch.tensor(values, dtype=torch.float64, device=_device())
    dist.all_reduce(tensor)
    return tensor.cpu().tolist()


def from_main(compute):
    """``compute()`` on rank 0, its result on every rank (a choice measured once, such as the precision)."""
    import torch.distributed as dist

    if not active():
        return compute()
    box = [compute() if is_main() else None]
    dist.broadcast_object_list(box, src=0)
    return box[0]
