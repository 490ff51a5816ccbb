"""The :class:`Skeleton` value type: a set of skeletal spheres and a stick-figure graph."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import SkellabError
from ..runtime import atomic_path


def check_skeleton_path(path: str | os.PathLike) -> Path:
    """``path`` if it names an ``.npz`` file (what :meth:`Skeleton.save` writes); else a one-line SkellabError."""
    p = Path(path)
    if p.suffix.lower() != ".npz":
        raise SkellabError(f"{p}: a skeleton is written as .npz (centers, radii, edges, method); "
                           f"use a .npz name, not {p.suffix or 'no suffix'!r}")
    return p


@dataclass(frozen=True)
class Skeleton:
    """Skeletal spheres of one shape.

    centers : (K, 3) float32 tensor, sphere centres
    radii   : (K,) float32 tensor, sphere radii (same units as ``centers``)
    edges   : (E, 2) int64 tensor, indices into ``centers``; may be empty
    method  : name of the method that produced it
    meta    : JSON-serialisable details (parameters, timings)

    Coordinates are in whatever frame the input points were in; the library works
    in the normalised frame and :meth:`transformed` maps back to original units.
    """

    centers: torch.Tensor
    radii: torch.Tensor
    edges: torch.Tensor = field(default_factory=lambda: torch.zeros(0, 2, dtype=torch.long))
    method: str = "unknown"
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        c, r, e = self.centers, self.radii, self.edges
        if c.ndim != 2 or c.shape[-1] != 3:
            raise SkellabError(f"skeleton centers must have shape (K, 3), got {tuple(c.shape)}")
        if r.shape != c.shape[:1]:
            raise SkellabError(f"skeleton radii must have shape ({c.shape[0]},), got {tuple(r.shape)}")
        if e.ndim != 2 or e.shape[-1] != 2:
            raise SkellabError(f"skeleton edges must have shape (E, 2), got {tuple(e.shape)}")
        if e.numel() and (int(e.min()) < 0 or int(e.max()) >= c.shape[0]):
            raise SkellabError("skeleton edges index outside the centers")

    @property
    def num_spheres(self) -> int:
        return int(self.centers.shape[0])

    def to(self, device: str | torch.device) -> "Skeleton":
        return Skeleton(self.centers.to(device), self.radii.to(device), self.edges.to(device), self.method, self.meta)

    def transformed(self, center: np.ndarray | tuple, scale: float) -> "Skeleton":
        """Apply ``x -> x * scale + center`` (e.g. a :class:`Normalization` inverse)."""
        c = torch.as_tensor(np.asarray(center, dtype=np.float32), device=self.centers.device)
        return Skeleton(self.centers * scale + c, self.radii * scale, self.edges, self.method, self.meta)

    def save(self, path: str | os.PathLike) -> None:
        """Write ``centers (K,3) float32``, ``radii (K,) float32``, ``edges (E,2) int64``, ``method``
        as an ``.npz`` archive (any other suffix is refused: an npz under a .ply name misleads)."""
        with atomic_path(check_skeleton_path(path)) as tmp:
            with open(tmp, "wb") as fh:
                np.savez(
                    fh,
                    centers=self.centers.detach().cpu().numpy().astype(np.float32),
                    radii=self.radii.detach().cpu().numpy().astype(np.float32),
                    edges=self.edges.detach().cpu().numpy().astype(np.int64),
                    method=np.array(self.method),
                )

    @classmethod
    def load(cls, path: str | os.PathLike) -> "Skeleton":
        try:
            with np.load(path, allow_pickle=False) as z:
                return cls(
                    torch.from_numpy(z["centers"].astype(np.float32)),
                    torch.from_numpy(z["radii"].astype(np.float32)),
                    torch.from_numpy(z["edges"].astype(np.int64)),
                    str(z["method"]) if "method" in z else "unknown",
                )
        except FileNotFoundError as exc:
            raise SkellabError(f"skeleton file not found: {path}") from exc
        except (OSError, ValueError, KeyError) as exc:
            raise SkellabError(f"{path}: not a readable skeleton npz ({exc})") from exc
