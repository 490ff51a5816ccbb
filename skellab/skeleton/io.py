"""Skeletonize a file: the function behind ``skellab skeletonize``."""

from __future__ import annotations

import os
from pathlib import Path

import meshio
import numpy as np
import torch
import trimesh

from ..data.io import load_mesh
from ..data.shape import Normalization, validate_mesh
from ..errors import SkellabError
from ..runtime import check_regular_file, check_seed
from . import skeletonize
from .types import Skeleton

POINT_CLOUD_SUFFIXES = (".npy", ".ply")


def _subsample(points: np.ndarray, normals: np.ndarray | None, num_points: int, seed: int):
    """At most ``num_points`` rows, drawn without replacement by a generator seeded with ``seed``
    (clouds are subsampled like meshes are sampled: the cost of skeletonizing stays bounded)."""
    if len(points) <= num_points:
        return np.asarray(points, dtype=np.float64), None if normals is None else np.asarray(normals, np.float64)
    idx = np.sort(np.random.default_rng(seed).choice(len(points), size=num_points, replace=False))
    return (np.asarray(points[idx], dtype=np.float64),
            None if normals is None else np.asarray(normals[idx], dtype=np.float64))


def _ply_normals(path: Path, count: int) -> np.ndarray | None:
    """The ``nx, ny, nz`` vertex properties of a point-cloud PLY (read by meshio), or None where it has none."""
    try:
        data = meshio.read(path).point_data
    except Exception:  # meshio raises many types; trimesh already read the points, so there are just no normals
        return None
    if not all(k in data for k in ("nx", "ny", "nz")):
        return None
    normals = np.concatenate([np.asarray(data[k], dtype=np.float64).reshape(-1, 1) for k in ("nx", "ny", "nz")], 1)
    return normals if normals.shape == (count, 3) else None


def _read_npy(path: Path) -> np.ndarray:
    """An (N, 3) or (N, 6) real array from a ``.npy`` file, memory-mapped (read lazily)."""
    try:
        arr = np.load(path, allow_pickle=False, mmap_mode="r")
    except (OSError, ValueError, EOFError) as exc:
        raise SkellabError(f"{path}: not a readable .npy array ({exc.__class__.__name__}: {exc})") from exc
    if not isinstance(arr, np.ndarray):
        raise SkellabError(f"{path}: not a .npy array (an .npz archive?)")
    if arr.dtype.kind == "c":
        raise SkellabError(f"{path}: complex-valued array (dtype {arr.dtype}); expected real coordinates")
    if arr.dtype.kind not in "fiu":
        raise SkellabError(f"{path}: array of dtype {arr.dtype} holds no coordinates; expected real numbers")
    if arr.ndim != 2 or arr.shape[1] not in (3, 6):
        raise SkellabError(f"{path}: expected an (N, 3) or (N, 6) array, got shape {arr.shape}")
    if arr.shape[0] == 0:
        raise SkellabError(f"{path}: point cloud is empty (0 points)")
    return arr


def read_point_cloud(path: str | os.PathLike, *, num_points: int, seed: int = 0):
    """A point-cloud file → (points (N, 3) float64, normals (N, 3) or None), or None when ``path`` holds a mesh.

    ``.npy``: (N, 3) points or (N, 6) points + normals; ``.ply`` without faces: its vertices, with its ``nx, ny, nz``
    properties as normals where it has them. Clouds of more than ``num_points`` points are subsampled to
    ``num_points`` (seeded), so memory and time do not grow with the file. Coordinates as given (input units).
    Missing files, FIFOs, devices, empty, complex or non-numeric arrays → one-line SkellabError.
    """
    path = Path(path)
    seed = check_seed(seed)
    if isinstance(num_points, bool) or not isinstance(num_points, int) or num_points <= 0:
        raise SkellabError(f"num_points must be a positive integer, got {num_points!r}")
    if not path.exists():
        raise SkellabError(f"input file not found: {path}")
    check_regular_file(path, what="input")
    if path.suffix.lower() == ".npy":
        arr = _read_npy(path)
        return _subsample(arr[:, :3], arr[:, 3:] if arr.shape[1] == 6 else None, num_points, seed)
    if path.suffix.lower() == ".ply":
        try:
            cloud = trimesh.load(path, process=False)
        except Exception as exc:  # trimesh raises many types for corrupt files
            raise SkellabError(f"{path}: unreadable PLY ({exc.__class__.__name__})") from exc
        if isinstance(cloud, trimesh.PointCloud):
            pts = np.asarray(cloud.vertices)
            if len(pts) == 0:
                raise SkellabError(f"{path}: point cloud is empty")
            if pts.ndim != 2 or pts.shape[1] != 3:
                raise SkellabError(f"{path}: expected (N, 3) points, got shape {pts.shape}")
            return _subsample(pts, _ply_normals(path, len(pts)), num_points, seed)
    return None


def load_point_input(path: str | os.PathLike, *, num_points: int = 2560, seed: int = 0):
    """Read a mesh or point cloud → (points (N,3) float64, normals (N,3) or None, mesh or None).

    Meshes are sampled area-uniformly (``num_points`` points with face normals); point clouds are read by
    :func:`read_point_cloud` (subsampled to ``num_points``). Coordinates are returned as given (input units).
    FIFOs, devices, empty, complex or non-numeric arrays → one-line SkellabError.
    """
    cloud = read_point_cloud(path, num_points=num_points, seed=seed)
    if cloud is not None:
        return cloud + (None,)
    path = Path(path)
    vertices, faces = load_mesh(path)
    mesh = validate_mesh(vertices, faces, name=path.name)
    pts, face_idx = trimesh.sample.sample_surface(mesh, num_points, seed=check_seed(seed))
    return pts, mesh.face_normals[face_idx], mesh


def skeletonize_file(
    path: str | os.PathLike, *, method: str = "medial", k: int = 256, seed: int = 0, device: str = "auto",
    num_points: int = 2560,
) -> Skeleton:
    """Skeletonize a mesh or point cloud file; the result is in the **input's own coordinates**.

    The input is normalised (bbox centre → 0, max |coordinate| → 1) for the method,
    and centres/radii are mapped back, so the skeleton overlays the user's mesh.
    """
    seed = check_seed(seed, "--seed")
    points, normals, mesh = load_point_input(path, num_points=num_points, seed=seed)
    if not np.isfinite(points).all():
        raise SkellabError(f"{path}: points contain NaN or infinite coordinates")
    norm = Normalization.fit(points)
    p = torch.as_tensor(norm.apply(points), dtype=torch.float32)
    n = None if normals is None else torch.as_tensor(normals, dtype=torch.float32)
    mesh_n = None
    if mesh is not None:
        mesh_n = mesh.copy()
        mesh_n.vertices = norm.apply(mesh.vertices)
    gen = torch.Generator().manual_seed(seed)
    skel = skeletonize(p, n, method=method, k=k, generator=gen, device=device, mesh=mesh_n)
    return skel.to("cpu").transformed(norm.center, norm.scale)
