"""Run every skeletonization method on a shape and measure it: the rows of notebook 02's table."""

from __future__ import annotations

import time
from typing import Any, Sequence

import numpy as np
import torch

from ..data.sampling import sample_surface
from ..data.shape import Shape
from ..errors import SkellabError
from . import METHODS, skeletonize
from .metrics import skeleton_metrics
from .types import Skeleton


def skeletonize_shape(shape: Shape, *, method: str = "medial", k: int = 256, num_points: int = 2560,
                      seed: int = 0, device: str = "auto") -> tuple[Skeleton, np.ndarray]:
    """Sample ``num_points`` oriented surface points of ``shape`` and skeletonize them.

    Returns the skeleton (normalised frame) and the surface points (num_points, 3).
    """
    points, normals = sample_surface(shape, num_points, seed=seed)
    gen = torch.Generator().manual_seed(int(seed))
    skel = skeletonize(torch.from_numpy(points), torch.from_numpy(normals), method=method, k=k,
                       generator=gen, device=device, mesh=shape.to_trimesh())
    return skel, points


def compare_methods(shape: Shape, *, methods: Sequence[str] = METHODS, k: int = 256, num_points: int = 2560,
                    seed: int = 0, device: str = "auto") -> list[dict[str, Any]]:
    """One row per method: wall time (ms) and :func:`skeleton_metrics` against the shape's mesh
    and, for procedural shapes whose skeleton is a medial curve, against the true axis."""
    rows = []
    true_axis = shape.skeleton if shape.meta.get("skeleton_kind") == "medial_curve" else None
    for method in methods:
        if method not in METHODS:
            raise SkellabError(f"unknown skeletonization method {method!r}: choose one of {', '.join(METHODS)}")
        start = time.perf_counter()
        skel, points = skeletonize_shape(shape, method=method, k=k, num_points=num_points, seed=seed, device=device)
        elapsed = 1e3 * (time.perf_counter() - start)
        metrics = skeleton_metrics(skel, surface_points=points, mesh=shape, true_axis=true_axis)
        rows.append({"shape": shape.shape_id, "organ": shape.organ, "method": method,
                     "ms": elapsed, **metrics})
    return rows
