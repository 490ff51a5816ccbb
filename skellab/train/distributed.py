"""The process group of a ``torchrun`` launch as the engine sees it (rank 0 alone validates, logs, writes)."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from ..runtime import resolve_device

__all__ = ["DistContext"]


@dataclass
class DistContext:
    """Rank / world of this process; a process group is created for ``WORLD_SIZE`` > 1."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    owns_group: bool = False

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world > 1

    @classmethod
    def from_env(cls, device: str | torch.device = "auto") -> "DistContext":
        """Join the ``torchrun`` process group described by the environment (a no-op when not launched so)."""
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if world <= 1:
            return cls()
        rank, local = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
        if dist.is_initialized():
            return cls(dist.get_rank(), dist.get_world_size(), local, False)
        want_cuda = str(device).startswith("cuda") or (str(device) == "auto" and torch.cuda.is_available())
        backend = "nccl" if want_cuda else "gloo"
        if want_cuda:
            torch.cuda.set_device(local)
        dist.init_process_group(backend=backend)
        return cls(rank, world, local, True)

    def device(self, device: str | torch.device) -> torch.device:
        dev = resolve_device(device)
        if self.active and dev.type == "cuda":
            return torch.device("cuda", self.local_rank)
        return dev

    def barrier(self) -> None:
        if self.active:
            dist.barrier()

    def mean(self, values: list[float], device: torch.device) -> list[float]:
        """All-reduce mean of a list of floats (identity for one process)."""
        if not self.active or not values:
            return values

        t = torch.tensor(values, dtype=torch.float64, device=device)
        dist.all_reduce(t)
        return (t / self.world).tolist()

    def close(self) -> None:
        if self.owns_group:
            dist.destroy_process_group()
            self.owns_group = False
