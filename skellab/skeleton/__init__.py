"""Skeletonization: surface points → K skeletal spheres (centres, radii) + a stick-figure graph.

Methods (``skeletonize(..., method=...)``):

* ``"medial"`` (default) — shrinking balls (Ma et al. 2012): true medial spheres;
  see :mod:`skellab.skeleton.medial`.
* ``"contraction"`` — the paper's kNN-mean contraction, faithfully re-implemented in
  batched torch; see :mod:`skellab.skeleton.contraction`.
* ``"learned"`` — Point2Skeleton-style network (:mod:`skellab.skeleton.learned`).
* ``"thinning"`` — voxel thinning baseline (:mod:`skellab.skeleton.thinning`).

The dispatcher :func:`skeletonize` picks the method; each lives in its own module.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import torch

from ..errors import SkellabError
from ..runtime import resolve_device
from .contraction import ContractionConfig, contract
from .graph import skeleton_edges
from .learned import skeletonize_learned
from .medial import MedialConfig, medial_spheres
from .ops import estimate_normals
from .thinning import skeletonize_thinning
from .types import Skeleton

__all__ = ["METHODS", "Skeleton", "skeletonize", "check_points"]

METHODS = ("medial", "contraction", "learned", "thinning")


def check_points(points: Any, *, k: int, name: str = "points") -> torch.Tensor:
    """Validate a surface sample and return it as a float32 (B, N, 3) tensor.

    Raises :class:`SkellabError` for: wrong shape, NaN/inf, k ≤ 0, fewer points than k,
    and a flat or degenerate cloud (smallest PCA spread below 1e-4 of the largest), whose
    inside — and so whose skeleton — is undefined.
    """
    if isinstance(points, torch.Tensor):
        x = points
        if x.is_complex() or not (x.is_floating_point() or x.dtype in (torch.int32, torch.int64)):
            raise SkellabError(f"{name} must hold real coordinates, got dtype {x.dtype}")
    else:
        if np.iscomplexobj(points):
            raise SkellabError(f"{name} must hold real coordinates, got complex values")
        try:
            x = torch.as_tensor(np.asarray(points, dtype=np.float32))
        except (TypeError, ValueError) as exc:
            raise SkellabError(f"{name} must be an array of shape (N, 3) or (B, N, 3)") from exc
    if x.ndim == 2:
        x = x.unsqueeze(0)
    if x.ndim != 3 or x.shape[-1] != 3:
        raise SkellabError(f"{name} must have shape (N, 3) or (B, N, 3), got {tuple(x.shape)}")
    if not isinstance(k, int) or k <= 0:
        raise SkellabError(f"k (number of skeletal spheres) must be a positive integer, got {k!r}")
    if x.shape[1] < k:
        raise SkellabError(f"{name} has {x.shape[1]} points, fewer than the k={k} spheres asked for")
    if not bool(torch.isfinite(x).all()):
        raise SkellabError(f"{name} contain NaN or infinite coordinates")
    x = x.to(torch.float32)  # differentiable cast; a no-op for float32 input
    centred = x.detach().double() - x.detach().double().mean(1, keepdim=True)
    sv = torch.linalg.svdvals(centred)  # (B, 3), descending
    if bool((sv[:, 2] <= 1e-4 * sv[:, 0].clamp_min(1e-30)).any()):
        raise SkellabError(f"{name} are flat or degenerate (no volume to skeletonize)")
    return x


def skeletonize(
    points: Any,
    normals: Any = None,
    *,
    method: str = "medial",
    k: int = 256,
    config: Any = None,
    generator: torch.Generator | None = None,
    device: str | torch.device = "auto",
    mesh: Any = None,
    edges: bool = True,
) -> Skeleton | list[Skeleton]:
    """Skeletal spheres of one shape or a batch.

    points    : (N, 3) or (B, N, 3) surface samples (tensor or array), normalised frame
    normals   : same shape, unit **outward** normals; estimated (PCA + MST orientation)
                when None and the method needs them (medial). Estimation needs the sample
                spacing well below the thinnest tube radius: pass the mesh normals for thin
                vessels (on the paper's vessel sample, 2,560 points, estimation fails)
    method    : one of :data:`METHODS`
    k         : spheres per shape
    config    : the method's config (``MedialConfig``, ``ContractionConfig``); for "learned"
                a checkpoint path; None = defaults / shipped weights
    generator : torch.Generator for the random choices (FPS starts, ball subsets)
    device    : "auto" | "cpu" | "cuda"
    mesh      : optional mesh (trimesh or :class:`skellab.data.shape.Shape`), used by "thinning"
    edges     : compute the stick-figure graph (:func:`skellab.skeleton.graph.skeleton_edges`)
    returns   : a :class:`Skeleton` for (N, 3) input, a list of them for (B, N, 3).

    Centres and radii keep the autograd graph of ``points`` for "medial" and
    "contraction" (both differentiable wrt the points; see their modules).
    """
    if method not in METHODS:
        raise SkellabError(f"unknown skeletonization method {method!r}: choose one of {', '.join(METHODS)}")
    single = (points.ndim if hasattr(points, "ndim") else np.asarray(points).ndim) == 2
    dev = resolve_device(device)
    x = check_points(points, k=k).to(dev)
    start = time.perf_counter()

    if method == "medial":
        if normals is None:
            n = torch.stack([estimate_normals(xi) for xi in x])
        else:
            n = torch.as_tensor(np.asarray(normals) if not isinstance(normals, torch.Tensor) else normals)
            n = (n.unsqueeze(0) if n.ndim == 2 else n).to(dev, x.dtype)
            if n.shape != x.shape:
                raise SkellabError(f"normals must match points {tuple(x.shape)}, got {tuple(n.shape)}")
            if not bool(torch.isfinite(n).all()):
                raise SkellabError("normals contain NaN or infinite values")
            n = n / n.norm(dim=-1, keepdim=True).clamp_min(1e-12)
        centers, radii, info = medial_spheres(x, n, k=k, config=config or MedialConfig(), generator=generator)
        if min(info["converged"]) < 0.5 * info["balls"]:
            raise SkellabError("most medial balls never closed: are the normals pointing outward?")
    elif method == "contraction":
        centers, radii, info = contract(x, k=k, config=config or ContractionConfig(), generator=generator)
    elif method == "learned":  # fixed-K network; ``config`` is a checkpoint path or model (None: shipped)
        result = skeletonize_learned(x, k=k, checkpoint=config, device=dev, generator=generator)
        centers = torch.stack([s.centers for s in result]).to(dev)
        radii = torch.stack([s.radii for s in result]).to(dev)
        info = dict(result[0].meta)
    else:  # thinning works on a closed mesh, one shape at a time
        if mesh is None:
            raise SkellabError("method 'thinning' needs mesh= (a closed triangle mesh), not only points")
        if x.shape[0] != 1:
            raise SkellabError("method 'thinning' skeletonizes one mesh at a time; pass (N, 3) points")
        return skeletonize_thinning(mesh, k=k, config=config, generator=generator)

    elapsed_ms = 1e3 * (time.perf_counter() - start)

    out = []
    for b in range(x.shape[0]):
        e = skeleton_edges(centers[b], x[b]) if edges else torch.zeros((0, 2), dtype=torch.long)
        meta = {key: (val[b] if isinstance(val, list) and len(val) == x.shape[0] else val) for key, val in info.items()
                if key != "history"}
        meta["elapsed_ms"] = elapsed_ms
        out.append(Skeleton(centers[b], radii[b], e.to(centers.device), method, meta))
    return out[0] if single else out
