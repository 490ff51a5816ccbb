"""File-to-file pipelines behind ``skellab reconstruct`` and ``skellab interpolate``.

Each takes mesh files (``reconstruct``: or an oriented point cloud) in their own units, works in the
normalised frame, and returns meshes mapped back to original units, so outputs overlay the inputs.
"""

from __future__ import annotations

import os
import re
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .autoencoder import (Latent, SkeletalAutoencoder, encode_points, load_autoencoder, refine_on_points,
                          refine_on_shape)
from .data.io import load_shape_file
from .data.sampling import check_point_cloud, sample_surface
from .data.shape import Normalization, Shape
from .errors import SkellabError
from .interpolation import InterpolatedMesh, interpolate_meshes
from .meshing import check_resolution, decode_mesh, export_mesh
from .runtime import check_seed
from .skeleton.io import read_point_cloud
from .weights import weights_path

#: the names ``skellab interpolate`` writes (what ``--overwrite`` may replace)
STEP_NAME = re.compile(r"^step_\d+\.ply$")


def _class_index(model: SkeletalAutoencoder, organ: str | None) -> int | None:
    if organ is None:
        return None
    classes = list(model.classes or [])
    if organ not in classes:
        raise SkellabError(f"unknown organ class {organ!r}; the model knows: {', '.join(classes) or 'none'}")
    return classes.index(organ)


def encode_shape(model: SkeletalAutoencoder, shape: Shape, *, seed: int = 0, organ: str | None = None) -> Latent:
    """Sample oriented surface points of ``shape``, skeletonize (medial) and encode: a batch-1 :class:`Latent`."""
    class_index = _class_index(model, organ)
    points, normals = sample_surface(shape, model.config.num_surface, seed=seed)
    device = next(model.parameters()).device
    return encode_points(model, torch.from_numpy(points).to(device), torch.from_numpy(normals).to(device),
                         class_index=class_index)


@dataclass(frozen=True)
class Reconstruction:
    """A decoded mesh in original units plus what it cost."""

    vertices: np.ndarray  # (V, 3) original units of the input
    faces: np.ndarray  # (F, 3)
    normalization: Normalization  # input units → normalised frame
    latent: Latent  # skeletal latents, one per reconstructed body: (bodies, K, 4 + F)
    bodies: int = 1  # separate bodies of the input that were reconstructed (their meshes are joined)
    dropped: int = 0  # bodies too small to reconstruct (see :data:`MIN_BODY_FRACTION`)


#: the shipped weights :func:`reconstruct_file` uses when no checkpoint is given: the autoencoder with the best
#: reconstruction fidelity (kernel decoder, MedSDF-fidelity; ``benchmarks/README.md``). Generation and
#: interpolation keep ``autoencoder``, the one the shipped diffusion model was trained on.
RECONSTRUCT_WEIGHTS = "autoencoder_kernel"
#: Adam steps :func:`reconstruct_file` fits the token features to the input by default (0 turns it off)
RECONSTRUCT_REFINE_STEPS = 200
#: learning rate of the spheres' log-radii while :func:`reconstruct_file` refines (centres: a tenth of it); the
#: skeleton adapts to the input (``refine_features``'s ``sphere_lr``; 0 keeps the encoder's spheres)
RECONSTRUCT_SPHERE_LR = 0.03
#: points of a point-cloud input that reconstruction reads (larger clouds are subsampled, seeded)
MAX_CLOUD_POINTS = 200_000
MAX_BODIES = 16  # separate bodies reconstructed from one file (each costs an encode and a decode)
MIN_BODY_FRACTION = 0.001  # bodies below this fraction of the input's volume are dropped (with a warning)


def _bodies(shape: Shape) -> tuple[list[Shape], int, float]:
    """The separate bodies of ``shape`` as shapes of their own (each normalised on its own, largest first),
    how many were dropped (too small, or beyond :data:`MAX_BODIES`) and the volume fraction they held."""
    mesh = shape.to_trimesh()
    parts = mesh.split(only_watertight=False)
    if len(parts) <= 1:
        return [shape], 0, 0.0
    volumes = np.array([abs(float(p.volume)) for p in parts])
    total = float(volumes.sum()) or 1.0
    order = np.argsort(-volumes, kind="stable")
    kept: list[Shape] = []
    dropped_volume = 0.0
    for rank, i in enumerate(order):
        part = parts[i]
        if rank >= MAX_BODIES or volumes[i] / total < MIN_BODY_FRACTION:
            dropped_volume += volumes[i]
            continue
        try:
            kept.append(Shape.from_mesh(shape.normalization.invert(np.asarray(part.vertices)), np.asarray(part.faces),
                                        shape_id=f"{shape.shape_id}_body{rank}", organ=shape.organ,
                                        source=shape.source, license=shape.license))
        except SkellabError:  # a body that is not a valid closed surface on its own
            dropped_volume += volumes[i]
    return kept, len(parts) - len(kept), dropped_volume / total


def _decode_surface(model: SkeletalAutoencoder, latent: Latent, resolution: int, name: str
                    ) -> tuple[np.ndarray, np.ndarray]:
    """The largest piece of ``latent``'s decoded surface (normalised frame), or a one-line error if it has none."""
    v, f = decode_mesh(model, latent, resolution, largest_component=True)
    if len(f) == 0:
        raise SkellabError(f"{name}: the decoded SDF has no zero level set at resolution {resolution}")
    return v, f


def reconstruct_file(path: str | os.PathLike, *, checkpoint: str | os.PathLike | None = None,
                     resolution: int = 128, organ: str | None = None, seed: int = 0,
                     device: str = "cpu", refine: int = RECONSTRUCT_REFINE_STEPS,
                     sphere_lr: float = RECONSTRUCT_SPHERE_LR) -> Reconstruction:
    """Mesh file → skeletal latent → guided SDF decoding → marching cubes, in the input's units.

    A file that holds several separate bodies (a pair of organs) is reconstructed body by body:
    each is normalised, encoded and decoded on its own, mapped back to the input's units, and the
    meshes are joined. Bodies under :data:`MIN_BODY_FRACTION` of the volume, or beyond
    :data:`MAX_BODIES`, are dropped with a warning saying how many and how much volume.
    ``checkpoint`` None: the shipped :data:`RECONSTRUCT_WEIGHTS`. ``refine`` > 0 (default
    :data:`RECONSTRUCT_REFINE_STEPS`): each body's token features are then fitted to its exact SDF for that many
    Adam steps (:func:`skellab.autoencoder.refine_on_shape`), and its spheres too at ``sphere_lr`` (default
    :data:`RECONSTRUCT_SPHERE_LR`; 0 keeps the encoder's spheres); ``refine`` 0 gives the encoder's latent.

    A point-cloud file (``.npy`` of (N, 6) points and outward normals, or a PLY of points with ``nx, ny, nz``;
    :func:`skellab.skeleton.io.read_point_cloud`) is reconstructed as one body: a seeded subset of the encoder's
    ``num_surface`` points is encoded, and ``refine`` fits the features to the SDF the whole cloud implies
    (:func:`skellab.autoencoder.refine_on_points`; up to :data:`MAX_CLOUD_POINTS` points).
    """
    check_resolution(resolution)  # before loading anything
    if isinstance(refine, bool) or not isinstance(refine, (int, np.integer)) or refine < 0:
        raise SkellabError(f"refine must be an integer >= 0 (Adam steps), got {refine!r}")
    seed = check_seed(seed)
    cloud = read_point_cloud(path, num_points=MAX_CLOUD_POINTS, seed=seed)
    model = load_autoencoder(weights_path(RECONSTRUCT_WEIGHTS) if checkpoint is None else checkpoint, device=device)
    if cloud is not None:
        return _reconstruct_cloud(model, path, *cloud, resolution=resolution, organ=organ, seed=seed, refine=refine,
                                  sphere_lr=sphere_lr)
    shape = load_shape_file(path, organ=organ or "unknown")
    bodies, dropped, dropped_fraction = _bodies(shape)
    if dropped:
        warnings.warn(f"{Path(path).name}: {dropped} of {len(bodies) + dropped} separate bodies dropped (too small "
                      f"or too many), {100 * dropped_fraction:.2g}% of the volume", stacklevel=2)
    vertices, faces, latents = [], [], []
    for body in bodies:
        latent = encode_shape(model, body, seed=seed, organ=organ)
        if refine:
            latent = refine_on_shape(model, latent, body, steps=int(refine), sphere_lr=sphere_lr, seed=seed)[0]
        v, f = _decode_surface(model, latent, resolution, Path(path).name)
        if len(bodies) > 1:
            v = shape.normalization.apply(body.normalization.invert(v))  # the body's frame → the input's frame
        faces.append(f + sum(len(x) for x in vertices))
        vertices.append(v)
        latents.append(latent)
    v, f = np.concatenate(vertices), np.concatenate(faces)
    return Reconstruction(shape.normalization.invert(v), f, shape.normalization,
                          latents[0] if len(latents) == 1 else Latent.cat(latents), len(bodies), dropped)


def interpolate_files(a: str | os.PathLike, b: str | os.PathLike, *, steps: int = 5,
                      checkpoint: str | os.PathLike | None = None, resolution: int = 96, seed: int = 0,
                      device: str = "cpu") -> list[tuple[InterpolatedMesh, Normalization]]:
    """Interpolate between two mesh files (tokens matched by Hungarian assignment on skeletal positions).

    Each step's mesh is returned with a normalisation interpolated linearly between the
    two inputs' (centre and scale), so intermediate shapes sit in plausible original units.
    """
    if not isinstance(steps, int) or steps < 2:
        raise SkellabError(f"steps must be an integer >= 2, got {steps!r}")
    check_resolution(resolution)  # before loading anything
    seed = check_seed(seed)
    model = load_autoencoder(checkpoint, device=device)
    shape_a = load_shape_file(a, organ="unknown")
    shape_b = load_shape_file(b, organ="unknown")
    meshes = interpolate_meshes(model, encode_shape(model, shape_a, seed=seed), encode_shape(model, shape_b, seed=seed),
                                steps, resolution)
    out = []
    na, nb = shape_a.normalization, shape_b.normalization
    for m in meshes:
        center = (1 - m.t) * np.asarray(na.center) + m.t * np.asarray(nb.center)
        norm = Normalization(center=tuple(float(c) for c in center), scale=(1 - m.t) * na.scale + m.t * nb.scale)
        out.append((m, norm))
    return out


def _reconstruct_cloud(model: SkeletalAutoencoder, path: str | os.PathLike, points: np.ndarray,
                       normals: np.ndarray | None, *, resolution: int, organ: str | None, seed: int,
                       refine: int, sphere_lr: float) -> Reconstruction:
    """An oriented point cloud (input units) → normalised frame → encode a seeded subset → refine on the whole
    cloud's implied SDF (``refine`` > 0) → guided decode → mesh in the input's units. One body."""
    name = Path(path).name
    if normals is None:
        raise SkellabError(f"{name}: a point cloud needs outward normals to be reconstructed (an (N, 6) .npy of "
                           "points and normals, or a PLY with nx, ny, nz)")
    try:
        points, normals = check_point_cloud(points, normals)
        norm = Normalization.fit(points)
    except SkellabError as exc:
        raise SkellabError(f"{name}: {exc}") from None
    k = model.config.num_surface
    if len(points) < k:
        raise SkellabError(f"{name}: the encoder reads {k} surface points, the cloud has {len(points)}")
    frame = norm.apply(points)  # a similarity transform: the normals keep their directions
    pick = np.random.default_rng(seed).choice(len(frame), size=k, replace=False)
    device = next(model.parameters()).device
    latent = encode_points(model, torch.from_numpy(frame[pick]).float().to(device),
                           torch.from_numpy(normals[pick]).float().to(device), class_index=_class_index(model, organ))
    if refine:
        latent = refine_on_points(model, latent, frame, normals, steps=int(refine), sphere_lr=sphere_lr, seed=seed)[0]
    v, f = _decode_surface(model, latent, resolution, name)
    return Reconstruction(norm.invert(v), f, norm, latent, 1, 0)


def export_reconstruction(rec: Reconstruction, path: str | os.PathLike) -> Path:
    """Write a :class:`Reconstruction` (already in original units) as PLY/STL/OBJ, atomically."""
    return export_mesh(path, rec.vertices, rec.faces)
