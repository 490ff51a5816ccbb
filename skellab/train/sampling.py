"""Deterministic data order for the engine: seeds derived from names, and the step → batch sampler."""

from __future__ import annotations

import hashlib

import torch

from ..errors import SkellabError

__all__ = ["derive_seed", "StepSampler"]


def derive_seed(*parts: int | str) -> int:
    """A 63-bit seed from a tuple of ints/strings (stable across runs, processes and platforms)."""
    h = hashlib.blake2b("/".join(str(p) for p in parts).encode(), digest_size=8).digest()
    return int.from_bytes(h, "little") & ((1 << 63) - 1)


class StepSampler:
    """Global batch ``step`` → dataset indices, and this process's share of it.

    The index stream is the concatenation of per-epoch permutations ``randperm(n)`` seeded with
    ``seed + epoch``; global batch ``s`` is stream positions ``[s·B, (s+1)·B)`` (so a batch can
    straddle two epochs and ``n < B`` works). Process ``rank`` of ``world`` takes positions
    ``rank::world``. A pure function of ``(seed, step)``: nothing to save for resuming.
    """

    def __init__(self, num_items: int, batch_size: int, *, seed: int, rank: int = 0, world: int = 1) -> None:
        if num_items < 1:
            raise SkellabError("the training set is empty")
        if batch_size % world:
            raise SkellabError(f"batch size {batch_size} is not divisible by the {world} processes")
        self.n, self.batch, self.seed, self.rank, self.world = int(num_items), int(batch_size), int(seed), rank, world
        self._perms: dict[int, list[int]] = {}

    def _perm(self, epoch: int) -> list[int]:
        if epoch not in self._perms:
            if len(self._perms) > 4:
                self._perms.pop(min(self._perms))
            g = torch.Generator().manual_seed(self.seed + epoch)
            self._perms[epoch] = torch.randperm(self.n, generator=g).tolist()
        return self._perms[epoch]

    def global_batch(self, step: int) -> list[tuple[int, int]]:
        """(index, epoch) of every sample of global batch ``step``."""
        out = []
        for p in range(step * self.batch, (step + 1) * self.batch):
            epoch, pos = divmod(p, self.n)
            out.append((self._perm(epoch)[pos], epoch))
        return out

    def local_batch(self, step: int) -> tuple[list[tuple[int, int]], list[int]]:
        """This process's (index, epoch) items and their positions in the global batch."""
        items = self.global_batch(step)
        positions = list(range(self.rank, self.batch, self.world))
        return [items[p] for p in positions], positions
