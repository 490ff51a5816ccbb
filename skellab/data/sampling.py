"""Surface points and signed-distance supervision for a :class:`~skellab.data.shape.Shape`.

**Sign convention (the one used everywhere in skellab):** signed distance is
*negative inside* the surface and *positive outside* (DeepSDF / libigl). The
paper's code uses positive inside; convert only at its edges with
:func:`to_paper_sign`.

Signed distance comes from libigl's exact point–triangle distance with the sign
from the angle-weighted pseudonormal, which is exact for the closed, manifold,
outward-oriented meshes that :func:`~skellab.data.shape.validate_mesh` lets
through (about 5× faster than libigl's winding-number sign here).
:func:`winding_number_inside` is an independent check through the exact
generalised winding number (Jacobson et al. 2013).

When only an oriented point cloud is known (no mesh), :func:`point_cloud_sdf` approximates the signed
distance: the distance to the nearest point's tangent plane (Hoppe et al. 1992), bounded below by the
distance to the nearest point less the local spacing, signed by the point cloud's fast winding number
(Barill et al. 2018, libigl).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import igl
import numpy as np
import trimesh
from scipy.spatial import cKDTree

from ..errors import SkellabError
from ..schema import validate_config
from .shape import Shape


@dataclass(frozen=True)
class SampleConfig:
    """How much supervision to draw for each shape (normalised frame)."""

    surface_points: int = 16384  # points sampled uniformly by area on the surface, with normals
    near_samples: int = 80000  # SDF queries in a band around the surface (surface point + Gaussian offset)
    near_sigmas: tuple[float, ...] = (0.005, 0.02, 0.06)  # std of the offsets; samples split evenly
    uniform_samples: int = 40000  # SDF queries uniform in the box [-box, box]^3
    box: float = 1.1  # half-width of the sampling box (the paper's [-1.1, 1.1]^3)
    grid_resolution: int = 0  # side of an optional dense SDF grid over the box (0: no grid)

    def __post_init__(self) -> None:
        if self.surface_points <= 0 or self.near_samples < 0 or self.uniform_samples < 0:
            raise SkellabError("sample counts must be positive")
        if self.near_samples + self.uniform_samples <= 0:
            raise SkellabError("at least one SDF sample is needed")
        if not self.near_sigmas or min(self.near_sigmas) <= 0:
            raise SkellabError("near_sigmas must be positive")
        if self.grid_resolution and not 8 <= self.grid_resolution <= 512:
            raise SkellabError(f"grid_resolution must be 0 or in [8, 512], got {self.grid_resolution}")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["near_sigmas"] = list(self.near_sigmas)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any], *, where: str = "sample_config") -> "SampleConfig":
        """Rebuild from :meth:`to_dict` output (e.g. a manifest's), checking every field's type and range."""
        limit = (0, 10_000_000)  # samples per shape: beyond this one shape's arrays outgrow memory
        return validate_config(cls, d, where=where, ranges={
            "surface_points": limit, "near_samples": limit, "uniform_samples": limit, "near_sigmas": (0, 10),
            "box": (0.5, 100), "grid_resolution": (0, 512)})


def to_paper_sign(sdf: np.ndarray) -> np.ndarray:
    """skellab SDF (negative inside) → the paper's convention (positive inside)."""
    return -np.asarray(sdf)


def _mesh_arrays(shape: Shape | trimesh.Trimesh) -> tuple[np.ndarray, np.ndarray]:
    if isinstance(shape, Shape):
        return np.ascontiguousarray(shape.vertices, np.float64), np.ascontiguousarray(shape.faces, np.int64)
    return np.ascontiguousarray(shape.vertices, np.float64), np.ascontiguousarray(shape.faces, np.int64)


def signed_distance(
    queries: np.ndarray, mesh: Shape | trimesh.Trimesh, *, chunk: int = 262144
) -> np.ndarray:
    """Exact signed distance from ``queries`` (n, 3) to the mesh: (n,) float64, negative inside.

    Same frame as the mesh vertices. Not differentiable (libigl, numpy).
    """
    q = np.asarray(queries, dtype=np.float64)
    if q.ndim != 2 or q.shape[1] != 3:
        raise SkellabError(f"queries must have shape (n, 3), got {q.shape}")
    if not np.isfinite(q).all():
        raise SkellabError("queries contain NaN or infinite coordinates")
    v, f = _mesh_arrays(mesh)
    out = np.empty(len(q), dtype=np.float64)
    for s in range(0, len(q), chunk):
        part = np.ascontiguousarray(q[s : s + chunk])
        out[s : s + chunk] = igl.signed_distance(part, v, f, sign_type=igl.SIGNED_DISTANCE_TYPE_PSEUDONORMAL)[0]
    return out


def winding_number_inside(queries: np.ndarray, mesh: Shape | trimesh.Trimesh) -> np.ndarray:
    """Independent inside test: exact generalised winding number > 0.5 → (n,) bool."""
    v, f = _mesh_arrays(mesh)
    return igl.winding_number(v, f, np.ascontiguousarray(queries, dtype=np.float64)) > 0.5


def sample_surface(
    shape: Shape | trimesh.Trimesh, count: int, *, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Area-uniform surface samples: points (count, 3) float32 and outward unit normals (count, 3) float32."""
    if count <= 0:
        raise SkellabError(f"surface point count must be positive, got {count}")
    mesh = shape.to_trimesh() if isinstance(shape, Shape) else shape
    points, face_idx = trimesh.sample.sample_surface(mesh, int(count), seed=int(seed))
    normals = mesh.face_normals[face_idx]
    return points.astype(np.float32), normals.astype(np.float32)


def grid_points(resolution: int, box: float = 1.1) -> np.ndarray:
    """(R³, 3) float64 cell-vertex coordinates of the grid over [-box, box]^3, ``ij`` order (x slowest)."""
    axis = np.linspace(-box, box, int(resolution))
    return np.stack(np.meshgrid(axis, axis, axis, indexing="ij"), axis=-1).reshape(-1, 3)


#: neighbours of each point used by :func:`point_cloud_sdf` for its spacing and area (π·d_k² / k)
POINT_CLOUD_NEIGHBOURS = 16


def check_point_cloud(points: Any, normals: Any) -> tuple[np.ndarray, np.ndarray]:
    """An oriented point cloud as float64 arrays with unit normals, or a one-line error naming what is wrong."""
    p = np.asarray(points, dtype=np.float64)
    n = np.asarray(normals, dtype=np.float64)
    if p.ndim != 2 or p.shape[1] != 3:
        raise SkellabError(f"points must have shape (n, 3), got {p.shape}")
    if n.shape != p.shape:
        raise SkellabError(f"normals must have the points' shape {p.shape}, got {n.shape}")
    if len(p) <= POINT_CLOUD_NEIGHBOURS:
        raise SkellabError(f"a point cloud needs more than {POINT_CLOUD_NEIGHBOURS} points, got {len(p)}")
    if not (np.isfinite(p).all() and np.isfinite(n).all()):
        raise SkellabError("points or normals contain NaN or infinite values")
    length = np.linalg.norm(n, axis=1)
    if (length < 1e-8).any():
        raise SkellabError(f"{int((length < 1e-8).sum())} normals have zero length: oriented normals are needed")
    return p, n / length[:, None]


def point_cloud_sdf(points: Any, normals: Any, queries: Any) -> np.ndarray:
    """Approximate signed distance to the surface an oriented point cloud samples: (n,) float64, negative inside.

    points, normals : (P, 3) surface samples and their outward normals (any length; normalised here)
    queries         : (n, 3), same frame

    Magnitude: ``max(|(q − p)·n_p|, ‖q − p‖ − s_p)`` for the nearest point p — its tangent-plane distance
    (Hoppe et al. 1992), never less than the distance to p minus p's spacing ``s_p`` (distance to its 4th
    neighbour), which keeps a far query from reading 0 off a plane that passes near it. Sign: inside where the
    point cloud's fast winding number (Barill et al. 2018; point areas π·d_16² / 16 from the 16th-neighbour
    distance) exceeds 1/2. Near a smooth surface sampled densely it is close to exact (on the unseen split with
    20,000 points, the mean error of the τ-truncated value is 0.001–0.005 τ); it needs normals that point out.
    """
    p, n = check_point_cloud(points, normals)
    q = np.asarray(queries, dtype=np.float64)
    if q.ndim != 2 or q.shape[1] != 3:
        raise SkellabError(f"queries must have shape (n, 3), got {q.shape}")
    if not np.isfinite(q).all():
        raise SkellabError("queries contain NaN or infinite coordinates")
    tree = cKDTree(p)
    spacing, _ = tree.query(p, k=POINT_CLOUD_NEIGHBOURS + 1)  # column 0 is the point itself
    area = np.pi * spacing[:, -1] ** 2 / POINT_CLOUD_NEIGHBOURS
    # outward normals put a point just behind the surface inside; inward ones put it outside, which would flip
    # every sign below: refuse them (a few hundred probes, half a spacing behind evenly spaced points)
    probe = np.linspace(0, len(p) - 1, min(len(p), 512)).astype(np.int64)
    behind = p[probe] - 0.5 * spacing[probe, 4:5] * n[probe]
    if np.mean(igl.fast_winding_number(p, n, area, np.ascontiguousarray(behind)) > 0.5) < 0.25:
        raise SkellabError("the point cloud's normals point inward (points just behind the surface read as outside): "
                           "flip them so they point out of the surface")
    dist, nearest = tree.query(q)
    plane = np.abs(np.einsum("ij,ij->i", q - p[nearest], n[nearest]))
    magnitude = np.maximum(plane, dist - spacing[nearest, 4])
    inside = igl.fast_winding_number(p, n, area, np.ascontiguousarray(q)) > 0.5
    return np.where(inside, -magnitude, magnitude)


def _queries_around(base: np.ndarray, rng: np.random.Generator, config: SampleConfig) -> np.ndarray:
    """SDF queries: ``base`` surface points (one per near sample) plus Gaussian offsets of ``config.near_sigmas``
    (split evenly), then ``config.uniform_samples`` uniform in the box — (near + uniform, 3) float64."""
    parts = []
    if len(base):
        sig = np.asarray(config.near_sigmas, dtype=np.float64)[np.arange(len(base)) % len(config.near_sigmas)]
        parts.append(base + rng.normal(size=base.shape) * sig[:, None])
    if config.uniform_samples:
        parts.append(rng.uniform(-config.box, config.box, size=(config.uniform_samples, 3)))
    return np.concatenate(parts, axis=0)


def point_cloud_queries(points: Any, *, seed: int, config: SampleConfig) -> np.ndarray:
    """Where to fit an oriented point cloud's SDF: (near + uniform, 3) float64, drawn as :func:`sample_sdf` draws
    its queries, with ``config.near_samples`` points of the cloud (with replacement) as the surface points."""
    p = np.asarray(points, dtype=np.float64)
    if p.ndim != 2 or p.shape[1] != 3 or len(p) == 0:
        raise SkellabError(f"points must be a non-empty (n, 3) array, got {p.shape}")
    rng = np.random.default_rng(int(seed))
    return _queries_around(p[rng.integers(len(p), size=config.near_samples)], rng, config)


def sample_sdf(
    shape: Shape, *, config: SampleConfig = SampleConfig(), seed: int
) -> dict[str, np.ndarray]:
    """All supervision for one shape, as the arrays stored in a MedSDF ``samples/<id>.npz``.

    Returns a dict with
      ``surface_points`` (S, 3) float32, ``surface_normals`` (S, 3) float32,
      ``sdf_points`` (Q, 3) float32 (near-surface band first, then uniform in the box),
      ``sdf_values`` (Q,) float32 (negative inside), and, when ``config.grid_resolution``
      is set, ``sdf_grid`` (R, R, R) float32 over [-box, box]^3 in ``ij`` order.
    Same ``seed`` → identical arrays.
    """
    rng = np.random.default_rng(int(seed))
    surface, normals = sample_surface(shape, config.surface_points, seed=int(rng.integers(2**31)))
    base = (sample_surface(shape, config.near_samples, seed=int(rng.integers(2**31)))[0] if config.near_samples
            else np.empty((0, 3)))
    queries = _queries_around(base, rng, config)
    out = {
        "surface_points": surface,
        "surface_normals": normals,
        "sdf_points": queries.astype(np.float32),
        "sdf_values": signed_distance(queries, shape).astype(np.float32),
    }
    if config.grid_resolution:
        r = config.grid_resolution
        out["sdf_grid"] = signed_distance(grid_points(r, config.box), shape).reshape(r, r, r).astype(np.float32)
    return out


def sign_agreement(shape: Shape, queries: np.ndarray, sdf: np.ndarray, *, min_distance: float = 0.0) -> float:
    """Fraction of ``queries`` whose SDF sign matches the exact winding-number test.

    Points with ``|sdf| <= min_distance`` are ignored (0 keeps all but exact zeros).
    """
    sdf = np.asarray(sdf)
    keep = np.abs(sdf) > min_distance
    if not keep.any():
        raise SkellabError("no query points left to check")
    inside = winding_number_inside(np.asarray(queries)[keep], shape)
    return float(np.mean(inside == (sdf[keep] < 0)))
