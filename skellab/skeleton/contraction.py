"""The paper's skeletonization: kNN-mean contraction of FPS centres (MeShaGe, §2 of METHOD.md).

Recipe (Zhang et al. 2026, as their code implements it), for N surface points and K spheres:

1. farthest-point sampling picks 4K initial centres from the surface points;
2. twice: each centre moves to the mean of its k=32 nearest surface points, after
   rejecting neighbours that are not part of its local cluster;
3. FPS from 4K down to K, then two more rounds in which each of the K centres moves to
   the mean of its k₂ = int(32·4K/N) nearest *first-level* centres (same rejection);
4. radius r_k = mean distance from c_k to its 4 nearest surface points.

Outlier rejection, batched. The authors run DBSCAN (eps 0.65, min_samples 1) on
{neighbours ∪ centre} on the CPU in every forward pass and keep the centre's cluster.
With min_samples 1 that cluster is the set of neighbours chained to the centre by hops
shorter than eps; since a 32-NN patch spans ~0.1 in the [-1, 1] frame, it only ever drops
points across a gap wider than 0.65. We replace it by a one-hop test that runs batched in
torch on detached data: neighbour j of centre c is kept iff

    ‖x_j − c‖ ≤ min(reject_eps, reject_ratio · median_j ‖x_j − c‖),

i.e. within the paper's eps of the centre *and* not a far tail relative to the patch's
own scale (the neighbours that leak in from another branch or across a thin gap). The
nearest neighbour is always kept, so every centre has a non-empty set.

Gradients flow through the means (and through the final radius) to the surface points;
the neighbour indices and rejection masks are computed without gradients.

**Caveat, measured** (see METHOD.md §2): a kNN mean of a ~0.1-wide surface patch moves a
centre inward only by the patch's sag, so on tubes wider than the patch the result is an
inward-offset copy of the surface with small radii, not the medial axis. Use
``method="medial"`` for a true medial skeleton; this module is the faithful baseline.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch

from ..errors import SkellabError
from .ops import NeighborIndex, farthest_point_sampling, gather

__all__ = ["ContractionConfig", "contract", "reject_outliers"]


@dataclass(frozen=True)
class ContractionConfig:
    """Parameters of the paper's contraction (defaults are the paper's where it has one)."""

    oversample: int = 4  # first level has oversample·K centres (paper: 4K)
    k_surface: int = 32  # surface neighbours averaged per first-level round (paper: 32)
    surface_rounds: int = 2  # rounds against the surface points (paper: 2)
    center_rounds: int = 2  # rounds of the K centres against the first-level centres (paper: 2)
    k_center: int | None = None  # neighbours per second-level round; None: int(k_surface·oversample·K/N)
    k_radius: int = 4  # radius = mean distance to this many nearest surface points (paper: 4)
    reject_eps: float = 0.65  # absolute cut, the paper's DBSCAN eps (normalised frame)
    reject_ratio: float = 2.5  # relative cut: drop neighbours beyond this × the patch's median distance
    knn_backend: str = "auto"  # "auto" | "kdtree" | "dense" (see ops.NeighborIndex)

    def __post_init__(self) -> None:
        if self.oversample < 1 or self.k_surface < 1 or self.k_radius < 1:
            raise SkellabError("ContractionConfig.oversample, k_surface and k_radius must be >= 1")
        if self.surface_rounds < 0 or self.center_rounds < 0:
            raise SkellabError("ContractionConfig rounds must be >= 0")
        if not (self.reject_eps > 0 and self.reject_ratio > 0):
            raise SkellabError("ContractionConfig.reject_eps and reject_ratio must be > 0")

    def to_dict(self) -> dict:
        return asdict(self)


def reject_outliers(dist: torch.Tensor, *, eps: float, ratio: float) -> torch.Tensor:
    """Keep-mask for a centre's neighbours (see the module docstring). No gradients.

    dist    : (B, M, k) distances from each centre to its k neighbours, ascending
    returns : (B, M, k) bool; column 0 (the nearest) is always True.
    """
    d = dist.detach()
    median = d.median(dim=-1, keepdim=True).values
    keep = d <= torch.minimum(torch.full_like(median, eps), ratio * median)
    keep[..., 0] = True
    return keep


def _contract_round(
    centers: torch.Tensor, ref: torch.Tensor, index: NeighborIndex, k: int, config: ContractionConfig
) -> torch.Tensor:
    """Move each centre (B, M, 3) to the mean of its kept k nearest ``ref`` points (differentiable)."""
    dist, idx = index.query(centers.detach(), k)  # (B, M, k)
    keep = reject_outliers(dist, eps=config.reject_eps, ratio=config.reject_ratio).to(ref.dtype)
    nbrs = gather(ref, idx)  # (B, M, k, 3), carries gradients to ref
    return (nbrs * keep.unsqueeze(-1)).sum(2) / keep.sum(-1, keepdim=True)


def contract(
    points: torch.Tensor,
    *,
    k: int,
    config: ContractionConfig = ContractionConfig(),
    generator: torch.Generator | None = None,
    return_history: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """The paper's contraction skeleton.

    points         : (B, N, 3) surface samples, normalised frame
    k              : K, skeletal spheres per shape (needs oversample·K ≤ N)
    generator      : random FPS start points; without one FPS starts at index 0
    return_history : also return the iterates (for a slider that shows points flowing in)
    returns        : centers (B, K, 3), radii (B, K) — differentiable wrt ``points`` through
                     the kNN means — and ``info``: the config, ``k_center``, and with
                     ``return_history`` a list ``info["history"]`` of (stage name,
                     (B, M, 3) detached centres), M = oversample·K for the first level and K after.
    """
    if points.ndim != 3 or points.shape[-1] != 3:
        raise SkellabError(f"points must have shape (B, N, 3), got {tuple(points.shape)}")
    B, N, _ = points.shape
    m = config.oversample * k
    if k < 1 or m > N:
        raise SkellabError(f"contraction needs 1 <= {config.oversample}·k <= N points, got k={k}, N={N}")
    history: list[tuple[str, torch.Tensor]] = []
    surface_index = NeighborIndex(points, backend=config.knn_backend)

    # 1. FPS picks oversample·K initial centres on the surface.
    level1 = gather(points, farthest_point_sampling(points, m, generator=generator))  # (B, 4K, 3)
    if return_history:
        history.append(("fps", level1.detach().clone()))
    # 2. Rounds against the surface: centre ← mean of its kept k_surface nearest points.
    for i in range(config.surface_rounds):
        level1 = _contract_round(level1, points, surface_index, min(config.k_surface, N), config)
        if return_history:
            history.append((f"surface round {i + 1}", level1.detach().clone()))
    # 3. FPS down to K, then rounds against the first-level centres with k₂ neighbours.
    centers = gather(level1, farthest_point_sampling(level1, k, generator=generator))  # (B, K, 3)
    if return_history:
        history.append(("fps to K", centers.detach().clone()))
    k2 = config.k_center if config.k_center is not None else int(config.k_surface * m / N)
    k2 = max(1, min(k2, m))
    if config.center_rounds:
        level1_index = NeighborIndex(level1, backend=config.knn_backend)
        for i in range(config.center_rounds):
            centers = _contract_round(centers, level1, level1_index, k2, config)
            if return_history:
                history.append((f"centre round {i + 1}", centers.detach().clone()))
    # 4. Radius: mean distance to the k_radius nearest surface points (differentiable).
    dist, _ = surface_index.query(centers, min(config.k_radius, N))
    radii = dist.mean(-1)
    info: dict = {"config": config.to_dict(), "k_center": k2}
    if return_history:
        info["history"] = history
    return centers, radii, info
