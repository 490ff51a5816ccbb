"""Skeletonize a file: the function behind ``skellab skeletonize``."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
import trimesh

from ..data.io import load_mesh
from ..data.shape import Normalization, validate_mesh
from ..errors import SkellabError
from . import skeletonize
from .types import Skeleton

POINT_CLOUD_SUFFIXES = (".npy", ".ply")


def load_point_input(path: str | os.PathLike, *, num_points: int = 2560, seed: int = 0):
    """Read a mesh or point cloud → (points (N,3) float64, normals (N,3) or None, mesh or None).

    Meshes are sampled area-uniformly (``num_points`` points with face normals);
    ``.npy`` holds (N, 3) points or (N, 6) points + normals; a ``.ply`` without faces
    is read as a point cloud. Coordinates are returned as given (input units).
    """

    path = Path(path)
    if not path.exists():
        raise SkellabError(f"input file not found: {path}")
    if path.suffix.lower() == ".npy":
        try:
            arr = np.load(path, allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise SkellabError(f"{path}: not a readable .npy array ({exc})") from exc
        if arr.ndim != 2 or arr.shape[1] not in (3, 6):
            raise SkellabError(f"{path}: expected an (N, 3) or (N, 6) array, got shape {arr.shape}")
        arr = arr.astype(np.float64)
        return arr[:, :3], (arr[:, 3:] if arr.shape[1] == 6 else None), None
    if path.suffix.lower() == ".ply":
        try:
            cloud = trimesh.load(path, process=False)
        except Exception as exc:  # trimesh raises many types for corrupt files
            raise SkellabError(f"{path}: unreadable PLY ({exc.__class__.__name__})") from exc
        if isinstance(cloud, trimesh.PointCloud):
            pts = np.asarray(cloud.vertices, dtype=np.float64)
            if len(pts) == 0:
                raise SkellabError(f"{path}: point cloud is empty")
            return pts, None, None
    vertices, faces = load_mesh(path)
    mesh = validate_mesh(vertices, faces, name=path.name)
    pts, face_idx = trimesh.sample.sample_surface(mesh, num_points, seed=seed)
    return pts, mesh.face_normals[face_idx], mesh


def skeletonize_file(
    path: str | os.PathLike, *, method: str = "medial", k: int = 256, seed: int = 0, device: str = "auto",
    num_points: int = 2560,
) -> Skeleton:
    """Skeletonize a mesh or point cloud file; the result is in the **input's own coordinates**.

    The input is normalised (bbox centre → 0, max |coordinate| → 1) for the method,
    and centres/radii are mapped back, so the skeleton overlays the user's mesh.
    """
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
    gen = torch.Generator().manual_seed(int(seed))
    skel = skeletonize(p, n, method=method, k=k, generator=gen, device=device, mesh=mesh_n)
    return skel.to("cpu").transformed(norm.center, norm.scale)
