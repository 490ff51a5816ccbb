"""Signed fields for the detail families: 1-Lipschitz pieces, displacement noise, banded grid evaluation.

A :class:`Field` is built from 1-Lipschitz pieces (exact round cones and boxes, the ellipsoid
bound, smooth min / max, ``|F| - w/2`` shells) plus displacement noise ``n(p)`` whose gradient
bound ``G`` is known; dividing by ``lip = 1 + G`` (:class:`DetailSDF`) gives a 1-Lipschitz field
with the exact sign, so ``|sdf(p)|`` never exceeds the distance to its zero set. Sign
convention: negative inside.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from ..errors import SkellabError
from .sdf_primitives import (
    Composite,
    Construction,
    Curve,
    Redraw,
    round_cone_distance,
    smooth_min,
    unit,
)


@dataclass(eq=False)
class Field:
    """A signed field under construction: ``fn`` (n, 3) → (n,), negative inside, Lipschitz ``<= lip``."""

    fn: Callable[[np.ndarray], np.ndarray]
    lo: np.ndarray
    hi: np.ndarray
    lip: float = 1.0
    curves: list[Curve] = field(default_factory=list)  # construction curves (skeleton)
    mid: Callable[[np.ndarray], np.ndarray] | None = None  # thin walls: mid-surface SDF
    wall: float | None = None  # thin walls: wall thickness (construction units)
    genus: int = 0
    params: dict[str, Any] = field(default_factory=dict)
    # surface-detail families: fn(q) == post(q, composite(q)); post keeps the sign of b where |b| > reach
    composite: Composite | None = None
    post: Callable[[np.ndarray, np.ndarray], np.ndarray] | None = None
    reach: float = 0.0


@dataclass(frozen=True, eq=False)
class DetailSDF:
    """``fn / lip``: 1-Lipschitz, exact sign, ``|value| <= distance``; construction frame, negative inside."""

    fn: Callable[[np.ndarray], np.ndarray]
    lip: float
    lo: np.ndarray
    hi: np.ndarray

    def __call__(self, points: np.ndarray, *, chunk: int = 500_000) -> np.ndarray:
        pts = np.asarray(points, dtype=np.float64)
        if pts.ndim != 2 or pts.shape[1] != 3:
            raise SkellabError(f"SDF query points must have shape (n, 3), got {pts.shape}")
        return np.concatenate([self.fn(pts[s : s + chunk]) for s in range(0, len(pts), chunk)] or [np.zeros(0)]) / self.lip

    def bounds(self) -> tuple[np.ndarray, np.ndarray]:
        return self.lo, self.hi


def smooth_max(a: np.ndarray, b: np.ndarray, k: float) -> np.ndarray:
    """Smooth maximum (intersection / subtraction), 1-Lipschitz like :func:`smooth_min`."""
    return -smooth_min(-a, -b, k)


def noise(rng: np.random.Generator, size: float, scales=((0.30, 0.012), (0.12, 0.006), (0.06, 0.003)),
          waves: int = 8) -> tuple[Callable[[np.ndarray], np.ndarray], float, list[dict[str, float]]]:
    """Smooth displacement: per scale (wavelength, RMS amplitude) as fractions of ``size``.

    Each scale is ``waves`` sinusoids with random directions and phases, amplitude
    ``rms * sqrt(2 / waves)`` each. Returns ``(n, G, description)``: n (m, 3) → (m,) and
    G, an upper bound of ``|grad n|``.
    """
    ks, phases, amps, G, desc = [], [], [], 0.0, []
    for wavelength, rms in scales:
        k = unit(rng.normal(size=(waves, 3))) * (2 * np.pi / (wavelength * size))
        a = np.full(waves, rms * size * np.sqrt(2.0 / waves))
        ks.append(k), phases.append(rng.uniform(0, 2 * np.pi, waves)), amps.append(a)
        G += float((a * np.linalg.norm(k, axis=1)).sum())
        desc.append({"wavelength": wavelength * size, "rms": rms * size})
    K, P, A = np.concatenate(ks), np.concatenate(phases), np.concatenate(amps)

    def n(p: np.ndarray) -> np.ndarray:
        return np.sin(p @ K.T + P) @ A

    return n, G, desc


def surface_point(f: Callable[[np.ndarray], np.ndarray], start: np.ndarray, direction: np.ndarray,
                   reach: float) -> np.ndarray:
    """The first zero of ``f`` along the ray from the inside point ``start`` (bisection)."""
    d = unit(direction)
    t = np.linspace(0.0, reach, 257)
    vals = f(start + t[:, None] * d)
    out = np.flatnonzero(vals > 0)
    if vals[0] >= 0 or len(out) == 0:
        raise Redraw("ray start is not inside or the ray never leaves the shape")
    lo, hi = t[out[0] - 1], t[out[0]]
    for _ in range(40):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if f((start + mid * d)[None])[0] < 0 else (lo, mid)
    return start + 0.5 * (lo + hi) * d


def gradient(f: Callable[[np.ndarray], np.ndarray], p: np.ndarray, h: float) -> np.ndarray:
    e = np.eye(3) * h
    return np.stack([(f(p + e[i]) - f(p - e[i])) / (2 * h) for i in range(3)], axis=-1)


def composite_field(con: Construction) -> tuple[Composite, Field]:
    sdf = con.build()
    lo, hi = sdf.bounds()
    fld = Field(fn=sdf, lo=lo, hi=hi, curves=con.curves, params=dict(con.params), composite=sdf,
                post=lambda q, b: b)
    return sdf, fld


def then(fld: Field, step: Callable[[np.ndarray, np.ndarray], np.ndarray], reach: float) -> None:
    """Append ``step(q, value)`` to the field's post-processing (``reach``: how far from the base surface it acts)."""
    prev = fld.post
    fld.post = lambda q, b: step(q, prev(q, b))
    fld.reach += reach
    comp, post = fld.composite, fld.post
    fld.fn = lambda q: post(q, comp(q))


def rounded_box(q: np.ndarray, centre: np.ndarray, rot: np.ndarray, half: np.ndarray, rounding: float) -> np.ndarray:
    """Exact signed distance to a rounded box (local axes = columns of ``rot``)."""
    d = np.abs((q - centre) @ rot) - (half - rounding)
    return np.linalg.norm(np.maximum(d, 0.0), axis=1) + np.minimum(d.max(axis=1), 0.0) - rounding


def displace(fld: Field, rng: np.random.Generator, size: float, scales) -> Field:
    n, G, desc = noise(rng, size, scales)
    nmax = float(sum(d["rms"] for d in desc)) * np.sqrt(2.0 * 8)  # |n| <= waves * per-wave amplitude
    then(fld, lambda q, b: b + n(q), nmax)
    fld.lip += G
    fld.lo, fld.hi = fld.lo - nmax, fld.hi + nmax
    fld.params["noise"] = desc
    return fld


BLOB_NOISE = ((0.30, 0.008), (0.12, 0.004), (0.06, 0.002))  # (wavelength, rms) / size
TUBE_NOISE = ((0.12, 0.003), (0.06, 0.0015), (0.03, 0.0008))



def evaluate_banded(sdf: DetailSDF, *, origin: np.ndarray, voxel: float, dims: tuple[int, int, int],
                    block: int = 8, margin_voxels: float = 1.5) -> np.ndarray:
    """Evaluate a 1-Lipschitz field on the grid ``origin + voxel * ijk``, densely only near its zero set.

    A block whose centre value exceeds its centre-to-corner distance (+ margin) cannot hold a
    sign change, so it is filled with that centre value (correct sign). dims: multiples of block.
    """
    dims_a = np.asarray(dims, dtype=np.int64)
    if np.any(dims_a % block):
        raise SkellabError(f"grid dims {tuple(dims)} must be multiples of {block}")
    nb = dims_a // block
    blk = np.stack(np.meshgrid(*[np.arange(k) for k in nb], indexing="ij"), -1).reshape(-1, 3) * block
    centres = origin + (blk + 0.5 * (block - 1)) * voxel
    fc = sdf(centres)
    near = np.abs(fc) <= 0.5 * (block - 1) * np.sqrt(3.0) * voxel + margin_voxels * voxel
    vol = np.repeat(fc, block**3).reshape(len(blk), block, block, block)
    offs = np.stack(np.meshgrid(*[np.arange(block)] * 3, indexing="ij"), -1).reshape(-1, 3)
    idx = np.flatnonzero(near)
    for s in range(0, len(idx), 512):
        part = idx[s : s + 512]
        pts = origin + (blk[part][:, None, :] + offs[None]).reshape(-1, 3) * voxel
        vol[part] = sdf(pts).reshape(len(part), block, block, block)
    out = vol.reshape(*nb, block, block, block).transpose(0, 3, 1, 4, 2, 5).reshape(tuple(dims_a))
    return out


def round_cone_sdf(a, b, ra, rb) -> Callable[[np.ndarray], np.ndarray]:
    a, b = np.asarray(a, float), np.asarray(b, float)

    def f(p: np.ndarray) -> np.ndarray:
        n = len(p)
        return round_cone_distance(p, np.broadcast_to(a, (n, 3)), np.broadcast_to(b, (n, 3)),
                                   np.full(n, ra), np.full(n, rb))

    return f
