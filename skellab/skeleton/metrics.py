"""Skeleton quality metrics (METHOD.md §9), with their conventions spelled out.

All distances are **unsquared** Euclidean, in the frame of the inputs (skellab's
normalised frame, max |coordinate| = 1, unless you pass original units). "CD a→b" is
``mean_{x∈a} min_{y∈b} ‖x − y‖``; both directions are always reported separately, and
``*_mean`` is their average (the paper's unsquared convention ½(a→b + b→a)).

Keys of :func:`skeleton_metrics` (present only when their inputs are given):

* ``cd_skeleton_to_axis``, ``cd_axis_to_skeleton``, ``cd_axis_mean`` — skeletal centres vs a
  ground-truth medial axis (``true_axis``: dense points or a ``GroundTruthSkeleton``,
  whose edges are sampled every ``axis_step``).
* ``inside_fraction`` — fraction of centres with generalized winding number > 0.5 wrt
  ``mesh`` (robust even for slightly open meshes).
* ``medial_error_median``, ``medial_error_mean`` — medial consistency
  ``|d(c_k, surface) − r_k| / r_k``: 0 when each sphere touches the surface exactly. The
  surface distance is to the mesh when given, else to the nearest surface point.
* ``coverage`` — fraction of surface points within ``coverage_tol`` of the sphere union,
  i.e. with ``min_k (‖p − c_k‖ − r_k) ≤ coverage_tol`` (points inside a sphere count).
* ``cd_union_to_surface``, ``cd_surface_to_union``, ``cd_union_mean`` — samples of the
  sphere-union boundary (about ``union_samples`` in all, spread by sphere area, keeping
  those not inside another sphere) vs the surface: the union → surface direction measures
  distance to the mesh when given (else to the nearest surface point). The surface → union direction
  uses ``|min_k (‖p − c_k‖ − r_k)|``: exact for points outside the union, the depth
  ``max_k (r_k − ‖p − c_k‖)`` for points inside (exact when shallow, a lower bound if deep).
"""

from __future__ import annotations

from typing import Any

import igl
import numpy as np
import torch
from scipy.spatial import cKDTree
from scipy.spatial.distance import cdist

from ..errors import SkellabError
from .types import Skeleton

__all__ = ["chamfer_points", "sphere_union_samples", "axis_points", "skeleton_metrics"]


def _np(x: Any, name: str) -> np.ndarray:
    a = x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)
    if a.ndim != 2 or a.shape[1] != 3 or len(a) == 0:
        raise SkellabError(f"{name} must be a non-empty (n, 3) array, got shape {a.shape}")
    return a.astype(np.float64)


def chamfer_points(a: Any, b: Any) -> dict[str, float]:
    """Unsquared Chamfer distance between point sets a (n, 3) and b (m, 3).

    returns {"a_to_b": mean_a min_b ‖a−b‖, "b_to_a": mean_b min_a ‖a−b‖, "mean": their average}.
    Not differentiable (numpy / k-d tree).
    """
    pa, pb = _np(a, "a"), _np(b, "b")
    ab = float(cKDTree(pb).query(pa)[0].mean())
    ba = float(cKDTree(pa).query(pb)[0].mean())
    return {"a_to_b": ab, "b_to_a": ba, "mean": 0.5 * (ab + ba)}


def _gap_to_union(x: np.ndarray, c: np.ndarray, r: np.ndarray, chunk: int = 4096) -> np.ndarray:
    """(n,) ``min_k (‖x − c_k‖ − r_k)``: signed gap from each point to the union of spheres (exact)."""
    out = np.empty(len(x))
    for i in range(0, len(x), chunk):
        out[i : i + chunk] = (cdist(x[i : i + chunk], c) - r[None]).min(1)
    return out


def _fibonacci_sphere(n: int) -> np.ndarray:
    """(n, 3) near-uniform unit directions (golden-angle spiral); deterministic."""
    i = np.arange(n) + 0.5
    z = 1 - 2 * i / n
    phi = np.pi * (1 + 5**0.5) * i
    s = np.sqrt(1 - z * z)
    return np.stack([s * np.cos(phi), s * np.sin(phi), z], 1)


def sphere_union_samples(centers: Any, radii: Any, *, num_samples: int = 20000) -> np.ndarray:
    """(m, 3) points on the boundary of the union of spheres.

    About ``num_samples`` candidates are spread over the spheres in proportion to their
    area (at least 8 per sphere), on Fibonacci directions (deterministic); a candidate is
    kept unless it lies strictly inside another sphere.
    """
    c = _np(centers, "centers")
    r = np.asarray(radii.detach().cpu().numpy() if isinstance(radii, torch.Tensor) else radii, dtype=np.float64)
    area = r**2 / max(float((r**2).sum()), 1e-30)
    counts = np.maximum(8, np.round(area * num_samples)).astype(int)
    pts = np.concatenate([c[i] + r[i] * _fibonacci_sphere(int(n)) for i, n in enumerate(counts)])
    keep = _gap_to_union(pts, c, r * (1 - 1e-6)) >= 0  # not strictly inside any sphere
    if not keep.any():
        raise SkellabError("sphere union has no exposed boundary samples")
    return pts[keep]


def axis_points(true_axis: Any, *, step: float = 0.005) -> np.ndarray:
    """Dense (m, 3) points of a ground-truth axis: points as given, or a skeleton's edges sampled."""
    if hasattr(true_axis, "centers") and hasattr(true_axis, "edges"):
        c = _np(true_axis.centers, "true_axis.centers")
        e = np.asarray(
            true_axis.edges.detach().cpu().numpy() if isinstance(true_axis.edges, torch.Tensor) else true_axis.edges
        ).reshape(-1, 2)
        parts = [c]
        for a, b in e:
            n = max(2, int(np.ceil(np.linalg.norm(c[b] - c[a]) / step)) + 1)
            parts.append(c[a] + np.linspace(0, 1, n)[:, None] * (c[b] - c[a]))
        return np.concatenate(parts)
    return _np(true_axis, "true_axis")


def skeleton_metrics(
    skeleton: Skeleton,
    *,
    surface_points: Any,
    surface_normals: Any = None,
    mesh: Any = None,
    true_axis: Any = None,
    coverage_tol: float = 0.02,
    union_samples: int = 20000,
    axis_step: float = 0.005,
) -> dict[str, float]:
    """Quality of one skeleton (see the module docstring for every key's definition).

    skeleton        : :class:`Skeleton` with centres (K, 3) and radii (K,)
    surface_points  : (N, 3) samples of the shape's surface
    surface_normals : (N, 3) optional; not used by the current metrics (kept for API symmetry)
    mesh            : optional trimesh-like object with ``vertices``/``faces`` (or a skellab Shape)
    true_axis       : optional dense axis points (m, 3) or a skeleton with ``centers``/``edges``
    returns         : dict of floats. Not differentiable.
    """
    del surface_normals
    c = _np(skeleton.centers, "skeleton centers")
    r = skeleton.radii.detach().cpu().numpy().astype(np.float64)
    s = _np(surface_points, "surface_points")
    out: dict[str, float] = {"num_spheres": float(len(c))}
    if true_axis is not None:
        cd = chamfer_points(c, axis_points(true_axis, step=axis_step))
        out.update(cd_skeleton_to_axis=cd["a_to_b"], cd_axis_to_skeleton=cd["b_to_a"], cd_axis_mean=cd["mean"])
    if mesh is not None:
        v = np.asarray(mesh.vertices, dtype=np.float64)
        f = np.asarray(mesh.faces, dtype=np.int64)
        out["inside_fraction"] = float((igl.winding_number(v, f, c) > 0.5).mean())
        surface_dist = np.abs(igl.signed_distance(c, v, f)[0])
    else:
        surface_dist = cKDTree(s).query(c)[0]
    medial = np.abs(surface_dist - r) / np.maximum(r, 1e-12)
    out["medial_error_median"] = float(np.median(medial))
    out["medial_error_mean"] = float(np.mean(medial))
    gap = _gap_to_union(s, c, r)
    out["coverage"] = float((gap <= coverage_tol).mean())
    union = sphere_union_samples(c, r, num_samples=union_samples)
    if mesh is not None:  # exact distance to the surface, free of the point sample's spacing
        to_surface = float(np.abs(igl.signed_distance(union, v, f)[0]).mean())
    else:
        to_surface = float(cKDTree(s).query(union)[0].mean())
    from_surface = np.abs(gap)  # surface → union boundary (see the module docstring)
    out.update(
        cd_union_to_surface=to_surface,
        cd_surface_to_union=float(from_surface.mean()),
        cd_union_mean=0.5 * (to_surface + float(from_surface.mean())),
    )
    return out
