"""Data-parallel training with torch.distributed, launched by ``torchrun``.

``torchrun --nproc_per_node N -m schism_napari.cli train ...`` starts N processes; each trains
on its share of every epoch's crops (DistributedDataParallel averages the gradients), all
validate the same crops so they agree on best weights and early stopping, and only rank 0
writes the run folder and reports progress. Gloo on CPU, NCCL on CUDA.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class Distributed:
    rank: int
    world: int
    local_rank: int
    initialised_here: bool

    @property
    def main(self) -> bool:
        return self.rank == 0

    def any(self, flag: bool, device: torch.device) -> bool:
        """True on every process if ``flag`` is True on any (a stop request on one stops all)."""
        value = torch.tensor([1.0 if flag else 0.0], device=device)
        dist.all_reduce(value, op=dist.ReduceOp.MAX)
        return bool(value.item())

    def minimum(self, value: int, device: torch.device) -> int:
        """The smallest ``value`` over all processes (a step count every process can keep to)."""
        tensor = torch.tensor([value], dtype=torch.int64, device=device)
        dist.all_reduce(tensor, op=dist.ReduceOp.MIN)
        return int(tensor.item())

    def shared_seed(self, device: torch.device) -> int:
        """A random seed drawn by rank 0 and sent to all, when the config leaves the seed out."""
        value = (
            torch.randint(0, 2**31 - 1, (1,), device=device)
            if self.main
            else torch.zeros(1, dtype=torch.int64, device=device)
        )
        dist.broadcast(value, src=0)
        return int(value.item())

    def barrier(self) -> None:
        dist.barrier()

    def close(self) -> None:
        if self.initialised_here and dist.is_initialized():
            dist.destroy_process_group()


def from_environment() -> Distributed | None:
    """The process group torchrun describes in WORLD_SIZE/RANK/LOCAL_RANK, or None for one process."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or not dist.is_available():
        return None
    initialised_here = False
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if torch.cuda.is_available() else "gloo")
        initialised_here = True
    return Distributed(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")), initialised_here)
