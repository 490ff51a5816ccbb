"""Anatomically honest augmentation of a :class:`~skellab.data.shape.Shape`: mirroring, small anisotropic scaling."""

from __future__ import annotations

import numpy as np

from ..errors import SkellabError
from ..runtime import numpy_rng
from .shape import GroundTruthSkeleton, Normalization, Shape

_SIDE_SWAP = {"L": "R", "R": "L"}


def mirror(shape: Shape, axis: int = 0) -> Shape:
    """Left/right mirror image of ``shape`` (reflection across the plane through its bbox centre).

    Honest for paired or bilateral anatomy (kidneys, hemispheres, subcortical nuclei,
    limb bones, hemipelves): a left organ becomes a plausible right one. Faces are flipped
    so normals stay outward; the normalisation is unchanged (the original-unit shape is
    reflected across the plane ``x = center``); ``meta["hemisphere"]`` L/R is swapped.
    ``shape_id`` gets ``_mirror``; ``meta["augmented_from"]`` names the original.
    """
    if axis not in (0, 1, 2):
        raise SkellabError(f"mirror axis must be 0, 1 or 2, got {axis}")
    flip = np.ones(3)
    flip[axis] = -1.0
    sk = shape.skeleton
    if sk is not None:
        sk = GroundTruthSkeleton(sk.centers * flip, sk.radii.copy(), sk.edges.copy())
    meta = {**shape.meta, "augmented_from": shape.meta.get("augmented_from", shape.shape_id),
            "augmentation": [*shape.meta.get("augmentation", []), f"mirror:{'xyz'[axis]}"]}
    if meta.get("hemisphere") in _SIDE_SWAP:
        meta["hemisphere"] = _SIDE_SWAP[meta["hemisphere"]]
    return shape.replace(vertices=shape.vertices * flip, faces=shape.faces[:, ::-1].copy(), skeleton=sk,
                         shape_id=f"{shape.shape_id}_mirror", meta=meta)


def anisotropic_scale(shape: Shape, factors) -> Shape:
    """Stretch ``shape`` by per-axis ``factors`` (each in [0.9, 1.1]) about its centre, then renormalise.

    The normalisation's scale absorbs the renormalisation, so original units stay meaningful;
    skeleton radii are scaled by the smallest factor (a conservative inscribed radius).
    ``shape_id`` gets ``_scale``.
    """
    f = np.asarray(factors, dtype=np.float64)
    if f.shape != (3,) or np.any(np.abs(f - 1.0) > 0.1 + 1e-12):
        raise SkellabError(f"anisotropic scale factors must be 3 values within 10 % of 1, got {factors}")
    v = shape.vertices * f
    m = float(np.abs(v).max())
    norm = Normalization(center=shape.normalization.center, scale=shape.normalization.scale * m)
    sk = shape.skeleton
    if sk is not None:
        sk = GroundTruthSkeleton(sk.centers * f / m, sk.radii * f.min() / m, sk.edges.copy())
    meta = {**shape.meta, "augmented_from": shape.meta.get("augmented_from", shape.shape_id),
            "augmentation": [*shape.meta.get("augmentation", []), "scale:" + ",".join(f"{x:.4f}" for x in f)]}
    return shape.replace(vertices=v / m, skeleton=sk, normalization=norm, shape_id=f"{shape.shape_id}_scale", meta=meta)


def random_anisotropic_scale(shape: Shape, seed: int, max_change: float = 0.1) -> Shape:
    """:func:`anisotropic_scale` with factors drawn uniformly in ``1 ± max_change`` (<= 0.1) from ``seed``."""
    if not 0 < max_change <= 0.1:
        raise SkellabError(f"max_change must be in (0, 0.1], got {max_change}")
    return anisotropic_scale(shape, numpy_rng(seed).uniform(1 - max_change, 1 + max_change, 3))
