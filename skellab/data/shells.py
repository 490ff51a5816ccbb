"""Thin-walled procedural families: hollow chambers with openings, a perforated shell, a vessel wall.

Walls are ``|mid(p)| - w/2`` around a mid-surface ``mid`` (exact where ``mid`` is: the round
cones of ``chamber_shell`` and ``vessel_wall``), ``w`` drawn as 2.5-6.5 % of the shape's largest
extent (the stated range is 2-8 %, :data:`skellab.data.detail.WALL_FRACTION`). Openings are short
capsules subtracted across the wall; a closed shell with ``h`` openings has genus ``h - 1``.
Registered in :mod:`skellab.data.detail`.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from .fields import Field, gradient, round_cone_sdf, smooth_max, surface_point
from .sdf_primitives import (
    Construction,
    Curve,
    Redraw,
    arc_length,
    bezier,
    perpendicular_basis,
    resample,
    round_cone_distance,
    smooth_min,
    unit,
)

_WALL_DRAW = (0.025, 0.065)  # wall / largest extent, drawn (inside the stated 2-8 %)


def _cut_holes(fld: Field, holes: list[tuple[np.ndarray, np.ndarray, float]], wall: float) -> None:
    """Subtract a short capsule per hole (centre on the mid-surface, axis along its normal, radius r)."""
    shell = fld.fn
    k = 0.25 * wall

    def fn(q: np.ndarray) -> np.ndarray:
        out = shell(q)
        n = len(q)
        for c, d, r in holes:
            a, b = np.broadcast_to(c - 1.2 * wall * d, (n, 3)), np.broadcast_to(c + 1.2 * wall * d, (n, 3))
            capsule = round_cone_distance(q, a, b, np.full(n, r), np.full(n, r))
            out = smooth_max(out, -capsule, k)
        return out

    fld.fn = fn
    fld.genus = len(holes) - 1
    fld.params["holes"] = [{"centre": c, "axis": d, "radius": r} for c, d, r in holes]


def _place_holes(mid, size, wall, centres, count, r_range, rng) -> list[tuple[np.ndarray, np.ndarray, float]]:
    """``count`` holes on the mid-surface, each >= 2 walls + a rim away from the others."""
    holes: list[tuple[np.ndarray, np.ndarray, float]] = []
    for _ in range(40 * count):
        if len(holes) == count:
            return holes
        start, direction = centres(rng)
        p = surface_point(mid, start, direction, 2 * size)
        normal = unit(gradient(mid, p[None], 1e-3 * size)[0])
        r = size * rng.uniform(*r_range)
        rim = max(3 * wall, 0.06 * size)
        if all(np.linalg.norm(p - c) > r + rc + rim for c, _, rc in holes):
            # the wall must be locally flat across the hole: the mid-surface stays within the capsule
            e1, e2 = perpendicular_basis(normal)
            ring = p + r * np.stack([e1, -e1, e2, -e2, (e1 + e2) / np.sqrt(2), -(e1 + e2) / np.sqrt(2)])
            if np.abs(mid(ring)).max() < 0.5 * wall:
                holes.append((p, normal, r))
    raise Redraw("could not place the holes")


def _wall(mid: Callable, lo: np.ndarray, hi: np.ndarray, rng) -> tuple[float, float]:
    size = float((hi - lo).max())
    frac = rng.uniform(*_WALL_DRAW)
    return frac * size / (1 - frac), frac  # thickness relative to the outer extent (mid extent + w)


def _chamber_shell(rng: np.random.Generator) -> Field:
    """A ventricle-like bullet: the wall around a round cone (base sphere → apex sphere), 1-3 openings at the base."""
    rb, length, ra = rng.uniform(28, 36), rng.uniform(35, 55), rng.uniform(7, 12)
    tilt = unit(np.array([rng.uniform(-0.2, 0.2), rng.uniform(-0.2, 0.2), -1.0]))
    base, apex = np.zeros(3), length * tilt
    mid = round_cone_sdf(base, apex, rb, ra)
    lo = np.minimum(base - rb, apex - ra)
    hi = np.maximum(base + rb, apex + ra)
    w, frac = _wall(mid, lo, hi, rng)
    count = int(rng.integers(1, 4))

    def centres(rng):
        polar, az = np.radians(rng.uniform(0, 70)), rng.uniform(0, 2 * np.pi)  # on the base sphere
        return base, np.array([np.sin(polar) * np.cos(az), np.sin(polar) * np.sin(az), np.cos(polar)])

    holes = _place_holes(mid, float((hi - lo).max()), w, centres, count, (0.10, 0.17), rng)
    fld = Field(fn=lambda p: np.abs(mid(p)) - 0.5 * w, lo=lo - w, hi=hi + w, mid=mid, wall=w)
    fld.params.update(base_radius=rb, apex_radius=ra, length=length, wall=w, wall_fraction_drawn=frac)
    _cut_holes(fld, holes, w)
    return fld


def _perforated_shell(rng: np.random.Generator) -> Field:
    """Two chambers side by side (smooth union of two round cones), wall pierced by 4-8 holes: genus 3-7."""
    r1, r2 = rng.uniform(26, 32), rng.uniform(22, 28)
    sep = rng.uniform(0.9, 1.2) * r2
    c1, c2 = np.array([-0.5 * sep, 0, 0]), np.array([0.5 * sep, rng.uniform(-4, 4), rng.uniform(-6, 0)])
    apex = np.array([rng.uniform(-5, 5), rng.uniform(-5, 5), -rng.uniform(55, 70)])
    ra = rng.uniform(6, 9)
    f1, f2 = round_cone_sdf(c1, apex, r1, ra), round_cone_sdf(c2, apex + [4, 0, 8], r2, ra)
    k = 0.3 * r2

    def mid(p: np.ndarray) -> np.ndarray:
        return smooth_min(f1(p), f2(p), k)

    lo = np.minimum.reduce([c1 - r1, c2 - r2, apex - ra]) - k
    hi = np.maximum.reduce([c1 + r1, c2 + r2, apex + ra]) + k
    w, frac = _wall(mid, lo, hi, rng)
    count = int(rng.integers(4, 9))
    centre = 0.5 * (c1 + c2) + [0, 0, -0.2 * r2]

    def centres(rng):
        return centre, unit(rng.normal(size=3) * [1.0, 1.0, 0.7] + [0, 0, 0.3])

    holes = _place_holes(mid, float((hi - lo).max()), w, centres, count, (0.05, 0.09), rng)
    fld = Field(fn=lambda p: np.abs(mid(p)) - 0.5 * w, lo=lo - w, hi=hi + w, mid=mid, wall=w)
    fld.params.update(radii=[r1, r2, ra], separation=sep, wall=w, wall_fraction_drawn=frac)
    _cut_holes(fld, holes, w)
    return fld


def _vessel_wall(rng: np.random.Generator) -> Field:
    """A gently curved, tapering tube wall (an artery segment), open at both ends: genus 1."""
    length, r0 = rng.uniform(90, 130), rng.uniform(11, 15)
    e = unit(rng.normal(size=3) * [1, 1, 0.2])
    bend = rng.uniform(0.15, 0.35) * length
    p0, p3 = np.zeros(3), np.array([0, 0, -length])
    axis = bezier(p0, p0 + [0, 0, -length / 3] + bend * e, p3 + [0, 0, length / 3] + bend * e, p3, samples=200)
    con = Construction(blend=1e-6 * r0, min_radius_fraction=0.0)
    taper = rng.uniform(0.7, 0.9)
    pts = resample(axis, 0.25 * r0)
    t = arc_length(pts) / arc_length(pts)[-1]
    radii = r0 * (1 - (1 - taper) * t)
    lo, hi = pts.min(0) - r0, pts.max(0) + r0
    w, frac = _wall(None, lo, hi, rng)
    con.curves.append(Curve(pts, radii - 0.5 * w, None))  # the mid-surface tube
    mid = con.build()
    ends = [(pts[0], unit(pts[0] - pts[1]), radii[0]), (pts[-1], unit(pts[-1] - pts[-2]), radii[-1])]

    def fn(q: np.ndarray) -> np.ndarray:
        out = np.abs(mid(q)) - 0.5 * w
        n = len(q)
        for c, d, r in ends:  # cut each end square off: a short fat capsule beyond the end
            cut = round_cone_distance(q, np.broadcast_to(c + 2.0 * r * d, (n, 3)),
                                      np.broadcast_to(c + 4.0 * r * d, (n, 3)), np.full(n, 2.0 * r), np.full(n, 2.0 * r))
            out = np.maximum(out, -cut)
        return out

    fld = Field(fn=fn, lo=lo - w, hi=hi + w, mid=mid, wall=w, genus=1, curves=[Curve(pts, None, None)])
    fld.params.update(length=length, radius=r0, taper=taper, bend=bend, wall=w, wall_fraction_drawn=frac)
    return fld
