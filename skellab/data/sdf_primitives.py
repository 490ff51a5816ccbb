"""Analytic signed-distance building blocks for procedural shapes.

A :class:`Composite` is a smooth union of *branches*; each branch is a hard union of
primitives (round cones, i.e. tapered capsules, and ellipsoids). Sign convention:
**negative inside, positive outside**. Coordinates are whatever frame the primitives
were built in (the procedural "construction frame", nominal millimetres).

Every primitive distance is 1-Lipschitz (the round cone is exact, the ellipsoid is a
conservative bound), and so is the combination

    F(p) = smin_k(m1(p), m2(p)),

where ``m1`` / ``m2`` are the smallest and second-smallest *branch* distances and
``smin_k`` is the quadratic smooth minimum with blend radius ``k``. Because only the two
nearest branches enter, and ``smin_k(a, b) = min(a, b)`` once ``|a - b| >= k``, a
primitive can be culled exactly wherever it is farther than ``m1 + k``. That is what
:meth:`Composite.evaluate_grid` does on an octree of blocks: it returns the same values
as the dense evaluation at every grid point within one voxel of the surface, and a
value of the correct sign elsewhere, so marching cubes gives the identical mesh.

:class:`Construction` assembles a composite from tubes swept along curves (each a
chain of round cones) and ellipsoids, applies a radius floor, and rejects random draws
whose tubes touch away from their junctions (raising :class:`Redraw`), so that the
construction curves stay the medial axis of the tubes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, Callable

import numpy as np
from scipy.interpolate import BSpline, CubicSpline

from ..errors import SkellabError

ROUND_CONE = 0  # primitive kind: tapered capsule between two spheres
ELLIPSOID = 1  # primitive kind: rotated ellipsoid


def smooth_min(a: np.ndarray, b: np.ndarray, k: float) -> np.ndarray:
    """Quadratic smooth minimum (blend radius ``k`` >= 0); equals ``min(a, b)`` when ``|a - b| >= k``."""
    if k <= 0:
        return np.minimum(a, b)
    h = np.maximum(k - np.abs(a - b), 0.0) / k
    return np.minimum(a, b) - 0.25 * k * h * h


def round_cone_distance(
    points: np.ndarray, a: np.ndarray, b: np.ndarray, ra: np.ndarray, rb: np.ndarray
) -> np.ndarray:
    """Exact signed distance to round cones (convex hull of two spheres), row by row.

    points : (n, 3) float; a, b : (n, 3) sphere centres; ra, rb : (n,) radii, with
    ``|ra - rb| < |b - a|``. Returns (n,) float, negative inside.
    """
    ba = b - a
    length = np.linalg.norm(ba, axis=-1)
    sin_t = (ra - rb) / length
    return _round_cone(points - a, ba / length[:, None], length, sin_t, np.sqrt(1 - sin_t**2), ra, rb)


def _round_cone(pa, u, length, sin_t, cos_t, ra, rb) -> np.ndarray:
    # In the half-plane (y along the axis, x radial) the side is the line tangent to both
    # circles, with outward normal n = (sin t, cos t); its tangent points project to
    # s = 0 (sphere a) and s = L cos t (sphere b) along the side direction (cos t, -sin t).
    y = np.einsum("ij,ij->i", pa, u)
    xx_yy = np.einsum("ij,ij->i", pa, pa)
    x = np.sqrt(np.maximum(xx_yy - y * y, 0.0))
    s = y * cos_t - x * sin_t
    out = y * sin_t + x * cos_t - ra  # side
    cap_a = s < 0.0
    out[cap_a] = np.sqrt(xx_yy[cap_a]) - ra[cap_a]
    cap_b = s > length * cos_t
    out[cap_b] = np.hypot(x[cap_b], y[cap_b] - length[cap_b]) - rb[cap_b]
    return out


def ellipsoid_distance(points: np.ndarray, center: np.ndarray, rotation: np.ndarray, axes: np.ndarray) -> np.ndarray:
    """1-Lipschitz signed-distance bound of ellipsoids, row by row.

    points, center : (n, 3); rotation : (n, 3, 3) local→world (columns are the ellipsoid
    axes); axes : (n, 3) semi-axes. Returns ``(|q / axes| - 1) * min(axes)`` with ``q`` the
    local coordinates: exact sign, zero exactly on the surface, ``|value| <= distance``.
    """
    q = np.einsum("nji,nj->ni", rotation, points - center)
    return (np.linalg.norm(q / axes, axis=-1) - 1.0) * axes.min(axis=-1)


def _ragged_arange(starts: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Concatenation of ``arange(s, s + c)`` for each (s, c)."""
    total = int(counts.sum())
    offsets = np.repeat(np.cumsum(counts) - counts, counts)
    return np.repeat(starts, counts) + (np.arange(total) - offsets)


@dataclass(frozen=True, eq=False)
class Composite:
    """Smooth union of branches of primitives (construction frame, negative inside).

    kind     : (m,) int8, ``ROUND_CONE`` or ``ELLIPSOID``
    branch   : (m,) int64, non-decreasing branch id of each primitive
    a, b     : (m, 3) float64, cone end centres (ellipsoid: ``a`` is the centre)
    ra, rb   : (m,) float64, cone end radii
    rotation : (m, 3, 3) float64, ellipsoid local→world rotation (identity for cones)
    axes     : (m, 3) float64, ellipsoid semi-axes (ones for cones)
    blend    : smooth-union radius between branches (construction units)
    """

    kind: np.ndarray
    branch: np.ndarray
    a: np.ndarray
    b: np.ndarray
    ra: np.ndarray
    rb: np.ndarray
    rotation: np.ndarray
    axes: np.ndarray
    blend: float

    def __post_init__(self) -> None:
        m = len(self.kind)
        if m == 0:
            raise SkellabError("a composite SDF needs at least one primitive")
        if np.any(np.diff(self.branch) < 0):
            raise SkellabError("composite primitives must be sorted by branch id")
        cone = self.kind == ROUND_CONE
        length = np.linalg.norm(self.b - self.a, axis=-1)
        if np.any(length[cone] <= np.abs(self.ra - self.rb)[cone]):
            raise SkellabError("round cone with |ra - rb| >= length (one sphere contains the other)")
        if np.any(self.axes <= 0) or np.any(self.ra[cone] <= 0) or np.any(self.rb[cone] <= 0):
            raise SkellabError("primitive radii and semi-axes must be positive")

    def bounds(self) -> tuple[np.ndarray, np.ndarray]:
        """Axis-aligned bounding box (lo, hi), each (3,), of the zero level set."""
        cone = self.kind == ROUND_CONE
        lo = np.minimum(self.a - self.ra[:, None], self.b - self.rb[:, None])
        hi = np.maximum(self.a + self.ra[:, None], self.b + self.rb[:, None])
        half = np.sqrt(np.einsum("nij,nj->ni", self.rotation**2, self.axes**2))
        lo = np.where(cone[:, None], lo, self.a - half)
        hi = np.where(cone[:, None], hi, self.a + half)
        pad = 0.25 * self.blend  # the smooth union grows the shape by at most k/4
        return lo.min(axis=0) - pad, hi.max(axis=0) + pad

    # -- evaluation ------------------------------------------------------------------
    @cached_property
    def _cone_frame(self) -> tuple[np.ndarray, ...]:
        """Per primitive: unit axis (m, 3), length, sin t, cos t (m,) of the cone's side."""
        ba = self.b - self.a
        length = np.maximum(np.linalg.norm(ba, axis=-1), 1e-300)
        sin_t = np.where(self.kind == ROUND_CONE, (self.ra - self.rb) / length, 0.0)
        return ba / length[:, None], length, sin_t, np.sqrt(1.0 - sin_t**2)

    def pair_distances(self, points: np.ndarray, prim: np.ndarray) -> np.ndarray:
        """Distance from ``points[i]`` (n, 3) to primitive ``prim[i]`` (n,) → (n,)."""
        u, length, sin_t, cos_t = self._cone_frame
        if not np.any(self.kind == ELLIPSOID):
            j = prim
            return _round_cone(points - self.a[j], u[j], length[j], sin_t[j], cos_t[j], self.ra[j], self.rb[j])
        out = np.empty(len(prim))
        cone = self.kind[prim] == ROUND_CONE
        j, p = prim[cone], points[cone]
        out[cone] = _round_cone(p - self.a[j], u[j], length[j], sin_t[j], cos_t[j], self.ra[j], self.rb[j])
        j, p = prim[~cone], points[~cone]
        out[~cone] = ellipsoid_distance(p, self.a[j], self.rotation[j], self.axes[j])
        return out

    def _combine(self, d: np.ndarray, point: np.ndarray, prim: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
        """Reduce pair distances to (F, m1) per point.

        Pairs must be sorted by point, then by primitive index, and every point in
        ``range(n)`` must own at least one pair.
        """
        br = self.branch[prim]
        new_group = np.ones(len(d), dtype=bool)
        new_group[1:] = (point[1:] != point[:-1]) | (br[1:] != br[:-1])
        gstart = np.flatnonzero(new_group)
        branch_min = np.minimum.reduceat(d, gstart)  # one value per (point, branch)
        gpoint = point[gstart]
        pstart = np.searchsorted(gpoint, np.arange(n))
        m1 = np.minimum.reduceat(branch_min, pstart)
        is_min = branch_min == m1[gpoint]
        m2 = np.minimum.reduceat(np.where(is_min, np.inf, branch_min), pstart)
        m2 = np.where(np.add.reduceat(is_min.astype(np.int64), pstart) >= 2, m1, m2)
        return smooth_min(m1, m2, self.blend), m1

    def __call__(self, points: np.ndarray, *, chunk: int = 2_000_000) -> np.ndarray:
        """Dense reference evaluation: points (n, 3) → signed distance (n,), negative inside."""
        pts = np.asarray(points, dtype=np.float64)
        if pts.ndim != 2 or pts.shape[1] != 3:
            raise SkellabError(f"SDF query points must have shape (n, 3), got {pts.shape}")
        m = len(self.kind)
        out = np.empty(len(pts))
        step = max(1, chunk // m)
        for s in range(0, len(pts), step):
            p = pts[s : s + step]
            point = np.repeat(np.arange(len(p)), m)
            prim = np.tile(np.arange(m), len(p))
            out[s : s + step] = self._combine(self.pair_distances(p[point], prim), point, prim, len(p))[0]
        return out

    def evaluate_grid(
        self,
        *,
        origin: np.ndarray,
        voxel: float,
        dims: tuple[int, int, int],
        block: int = 16,
        leaf: int = 2,
        margin_voxels: float = 1.5,
    ) -> np.ndarray:
        """Sparse octree evaluation on the grid ``origin + voxel * (i, j, k)``.

        dims must be multiples of ``block`` (a power-of-two multiple of ``leaf``). Returns a
        (dims) float64 volume equal to the dense evaluation wherever ``|F| <= voxel *
        margin_voxels``; elsewhere the value of a block centre with the correct sign.
        """
        dims_a = np.asarray(dims, dtype=np.int64)
        if np.any(dims_a % block) or block % leaf or (block // leaf) & (block // leaf - 1):
            raise SkellabError(f"grid dims {tuple(dims)} must be multiples of block {block}, itself leaf·2^j")
        origin = np.asarray(origin, dtype=np.float64)
        flat = np.empty(int(np.prod(dims_a)))
        m = len(self.kind)
        nb = dims_a // block
        blk = np.stack(np.meshgrid(*[np.arange(k) for k in nb], indexing="ij"), -1).reshape(-1, 3) * block
        pair_blk = np.repeat(np.arange(len(blk)), m)  # (block, primitive) pairs, sorted
        pair_prim = np.tile(np.arange(m), len(blk))
        size = block
        while True:
            # 1. F at block centres, from the primitives that may matter in the block
            centres = origin + (blk + 0.5 * (size - 1)) * voxel
            d = self.pair_distances(centres[pair_blk], pair_prim)
            f, m1 = self._combine(d, pair_blk, pair_prim, len(blk))
            half = 0.5 * (size - 1) * np.sqrt(3.0) * voxel  # centre-to-corner distance
            near = np.abs(f) <= half + margin_voxels * voxel
            _fill(flat, dims_a, blk[~near], size, f[~near])
            # 2. cull: a primitive farther than m1 + k everywhere in the block cannot matter
            keep = near[pair_blk] & (d < m1[pair_blk] + 2.0 * half + self.blend)
            pair_blk, pair_prim = pair_blk[keep], pair_prim[keep]
            renum = np.cumsum(near) - 1
            pair_blk = renum[pair_blk]
            blk = blk[near]
            if len(blk) == 0:
                return flat.reshape(tuple(dims_a))
            # 3. split each near block into children (or, at leaf size, into grid points)
            child = size // 2 if size > leaf else 1
            per = (size // child) ** 3
            offs = np.stack(np.meshgrid(*[np.arange(0, size, child)] * 3, indexing="ij"), -1).reshape(-1, 3)
            counts = np.bincount(pair_blk, minlength=len(blk))
            starts = np.cumsum(counts) - counts
            parent = np.repeat(np.arange(len(blk)), per)
            sel = _ragged_arange(starts[parent], counts[parent])
            pair_prim = pair_prim[sel]
            pair_blk = np.repeat(np.arange(len(parent)), counts[parent])
            blk = (blk[:, None, :] + offs[None]).reshape(-1, 3)
            if child == 1:
                pts = origin + blk * voxel
                f, _ = self._combine(self.pair_distances(pts[pair_blk], pair_prim), pair_blk, pair_prim, len(blk))
                _fill(flat, dims_a, blk, 1, f)
                return flat.reshape(tuple(dims_a))
            size = child


def _fill(flat: np.ndarray, dims: np.ndarray, origins: np.ndarray, size: int, values: np.ndarray) -> None:
    """Write ``values[i]`` into the size³ block of the raveled volume starting at ``origins[i]``."""
    if len(origins) == 0:
        return
    offs = np.stack(np.meshgrid(*[np.arange(size)] * 3, indexing="ij"), -1).reshape(-1, 3)
    idx = (origins[:, None, :] + offs[None]).reshape(-1, 3)
    flat[np.ravel_multi_index(tuple(idx.T), tuple(dims))] = np.repeat(values, len(offs))


# -- curves: the axes that tubes are swept along ---------------------------------------
def unit(v: np.ndarray) -> np.ndarray:
    """v / |v| along the last axis."""
    v = np.asarray(v, dtype=np.float64)
    return v / np.linalg.norm(v, axis=-1, keepdims=True)


def rotate(v: np.ndarray, axis: np.ndarray, angle: float) -> np.ndarray:
    """Rotate vector(s) ``v`` (..., 3) by ``angle`` radians about the unit ``axis`` (Rodrigues)."""
    k = unit(axis)
    v = np.asarray(v, dtype=np.float64)
    return v * np.cos(angle) + np.cross(k, v) * np.sin(angle) + k * (v @ k)[..., None] * (1 - np.cos(angle))


def perpendicular_basis(d: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Two unit vectors (3,) completing the unit direction ``d`` to a right-handed frame."""
    d = unit(d)
    helper = np.eye(3)[int(np.argmin(np.abs(d)))]
    e1 = unit(np.cross(d, helper))
    return e1, np.cross(d, e1)


def arc_length(points: np.ndarray, *, closed: bool = False) -> np.ndarray:
    """Cumulative arc length (n,) of a polyline (n, 3); for ``closed`` it has n + 1 entries."""
    p = np.concatenate([points, points[:1]]) if closed else points
    return np.concatenate([[0.0], np.cumsum(np.linalg.norm(np.diff(p, axis=0), axis=1))])


def resample(points: np.ndarray, spacing: float, *, closed: bool = False) -> np.ndarray:
    """Resample a polyline (n, 3) uniformly by arc length with spacing <= ``spacing``.

    Open curves keep both end points; closed curves return points without repeating the first.
    """
    s = arc_length(points, closed=closed)
    p = np.concatenate([points, points[:1]]) if closed else points
    count = max(int(np.ceil(s[-1] / spacing)), 1)
    t = np.linspace(0.0, s[-1], count + 1)
    if closed:
        t = t[:-1]
    return np.stack([np.interp(t, s, p[:, i]) for i in range(3)], axis=1)


def spline(controls: np.ndarray, *, samples: int = 256, closed: bool = False) -> np.ndarray:
    """Cubic spline through control points (k, 3), chord-length parametrised → (samples, 3)."""
    c = np.asarray(controls, dtype=np.float64)
    if closed:
        c = np.concatenate([c, c[:1]])
    knots = arc_length(c)
    cs = CubicSpline(knots, c, bc_type="periodic" if closed else "natural", axis=0)
    t = np.linspace(0.0, knots[-1], samples + int(closed))
    return cs(t[:-1] if closed else t)


def bezier(p0, p1, p2, p3, *, samples: int = 64) -> np.ndarray:
    """Cubic Bézier curve (samples, 3) with control points p0..p3 (each (3,))."""
    t = np.linspace(0.0, 1.0, samples)[:, None]
    return (1 - t) ** 3 * p0 + 3 * (1 - t) ** 2 * t * p1 + 3 * (1 - t) * t**2 * p2 + t**3 * p3


def bspline(controls: np.ndarray, *, samples: int = 256) -> np.ndarray:
    """Clamped cubic B-spline (samples, 3) of control points (k >= 4, 3).

    It starts and ends at the first and last control points and, unlike an interpolating
    spline, stays smooth (no overshoot) when the control polygon turns sharply.
    """
    c = np.asarray(controls, dtype=np.float64)
    knots = np.concatenate([[0.0] * 3, np.linspace(0.0, 1.0, len(c) - 2), [1.0] * 3])
    return BSpline(knots, c, 3)(np.linspace(0.0, 1.0, samples))


# -- construction: tubes and ellipsoids → Composite ---------------------------------------
class Redraw(Exception):
    """Raised by a family builder when its random draw is invalid (tubes collide, …)."""


@dataclass
class Curve:
    """A construction curve: polyline (n, 3), tube radii (n,) or None (skeleton only)."""

    points: np.ndarray
    radii: np.ndarray | None
    parent: int | None
    closed: bool = False


@dataclass
class Construction:
    """A shape under construction: tubes, ellipsoids and skeleton-only curves.

    Tubes are chains of round cones along a polyline (one branch each); ellipsoids are
    one branch each; branches are smooth-unioned by :class:`Composite`. Units are the
    caller's (procedural families use nominal mm).
    """

    blend: float = 0.0  # smooth-union radius between branches; 0 → blend_fraction × smallest tube radius
    blend_fraction: float = 1.0  # used when blend == 0 (≥ ~3 voxels keeps junction crotches clean in MC)
    check_curvature: bool = True  # reject tubes bending tighter than their radius (medial families)
    min_radius_fraction: float = 0.034  # tube radius floor, fraction of the largest extent (3.5 voxels at 112)
    curves: list[Curve] = field(default_factory=list)
    ellipsoids: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = field(default_factory=list)
    params: dict[str, Any] = field(default_factory=dict)

    def tube(self, points, radius: Callable[[np.ndarray], np.ndarray], *, parent=None, closed=False) -> int:
        """Add a tube along ``points`` (n, 3) with radius ``radius(t)``, t = arc fraction in [0, 1]."""
        pts = np.asarray(points, dtype=np.float64)
        s = arc_length(pts, closed=closed)
        spacing = 0.5 * float(np.min(radius(np.linspace(0, 1, 64))))
        dense = resample(pts, spacing, closed=closed)
        t = arc_length(dense, closed=closed)[: len(dense)] / s[-1]
        self.curves.append(Curve(dense, np.asarray(radius(t), dtype=np.float64), parent, closed))
        return len(self.curves) - 1

    def curve(self, points, *, parent=None) -> int:
        """Add a skeleton-only curve (no tube) — e.g. the axis through a row of ellipsoids."""
        self.curves.append(Curve(np.asarray(points, dtype=np.float64), None, parent))
        return len(self.curves) - 1

    def ellipsoid(self, center, axes, rotation=None) -> None:
        """Add an ellipsoid: centre (3,), semi-axes (3,), rotation (3, 3) local→world columns."""
        rot = np.eye(3) if rotation is None else np.asarray(rotation, dtype=np.float64)
        self.ellipsoids.append((np.asarray(center, float), np.asarray(axes, float), rot))

    def point_on(self, index: int, fraction: float) -> tuple[np.ndarray, np.ndarray]:
        """Point (3,) and unit tangent (3,) at arc fraction ``fraction`` along curve ``index``."""
        p = self.curves[index].points
        s = arc_length(p)
        i = int(np.clip(np.searchsorted(s, fraction * s[-1]), 1, len(p) - 1))
        return p[i], (p[i] - p[i - 1]) / np.linalg.norm(p[i] - p[i - 1])

    def radius_at(self, index: int, fraction: float) -> float:
        c = self.curves[index]
        return float(np.interp(fraction, np.linspace(0, 1, len(c.radii)), c.radii))

    def build(self) -> Composite:
        """Apply the radius floor, check the draw (raises :class:`Redraw`), assemble the SDF."""
        return _assemble(self)


def _assemble(con: Construction) -> Composite:
    tubes = [c for c in con.curves if c.radii is not None]
    if not tubes and not con.ellipsoids:
        raise SkellabError("a construction needs at least one tube or ellipsoid")
    lo = np.min([c.points.min(0) - c.radii.max() for c in tubes] + [e[0] - e[1].max() for e in con.ellipsoids], 0)
    hi = np.max([c.points.max(0) + c.radii.max() for c in tubes] + [e[0] + e[1].max() for e in con.ellipsoids], 0)
    floor = con.min_radius_fraction * float((hi - lo).max())
    for c in tubes:
        c.radii = np.maximum(c.radii, floor)
    blend = con.blend or con.blend_fraction * min([float(c.radii.min()) for c in tubes] or [0.0])
    if con.check_curvature:
        for c in tubes:
            _check_curvature(c)
    _check_collisions(con.curves, blend)
    kind, branch, a, b, ra, rb, rot, axes = [], [], [], [], [], [], [], []
    for bi, c in enumerate(tubes):
        p = np.concatenate([c.points, c.points[:1]]) if c.closed else c.points
        r = np.concatenate([c.radii, c.radii[:1]]) if c.closed else c.radii
        n = len(p) - 1
        kind += [ROUND_CONE] * n
        branch += [bi] * n
        a.append(p[:-1]), b.append(p[1:]), ra.append(r[:-1]), rb.append(r[1:])
        rot.append(np.broadcast_to(np.eye(3), (n, 3, 3))), axes.append(np.ones((n, 3)))
    for ei, (center, ax, rmat) in enumerate(con.ellipsoids):
        kind.append(ELLIPSOID), branch.append(len(tubes) + ei)
        a.append(center[None]), b.append(center[None]), ra.append([1.0]), rb.append([1.0])
        rot.append(rmat[None]), axes.append(ax[None])
    return Composite(
        kind=np.asarray(kind, dtype=np.int8),
        branch=np.asarray(branch, dtype=np.int64),
        a=np.concatenate(a),
        b=np.concatenate(b),
        ra=np.concatenate(ra).astype(np.float64),
        rb=np.concatenate(rb).astype(np.float64),
        rotation=np.concatenate(rot),
        axes=np.concatenate(axes),
        blend=float(blend),
    )


def _check_curvature(c: Curve) -> None:
    """The axis is medial only where its radius of curvature exceeds the tube radius."""
    p = np.concatenate([c.points[-1:], c.points, c.points[:1]]) if c.closed else c.points
    e = np.diff(p, axis=0)
    seg = np.linalg.norm(e, axis=1)
    cos = np.einsum("ij,ij->i", e[:-1], e[1:]) / (seg[:-1] * seg[1:])
    angle = np.arccos(np.clip(cos, -1.0, 1.0))
    r = c.radii if c.closed else c.radii[1:-1]
    if np.any(0.5 * (seg[:-1] + seg[1:]) < 1.1 * r * angle):
        raise Redraw("a tube bends tighter than its radius")


def _check_collisions(curves: list[Curve], blend: float) -> None:
    """Reject draws where tubes touch other than where they were joined on purpose.

    A tube and its parent, and siblings leaving the same junction, are never checked;
    other pairs are checked outside their parents; a tube against itself is checked
    between points far apart along it.
    """
    tubes = [i for i, c in enumerate(curves) if c.radii is not None]
    free = {i: _outside_parent(curves, i, blend) for i in tubes}
    for x, i in enumerate(tubes):
        ci = curves[i]
        for j in tubes[x:]:
            cj = curves[j]
            if i != j and _related(curves, i, j):
                continue
            gap = np.linalg.norm(ci.points[:, None] - cj.points[None], axis=-1)
            need = ci.radii[:, None] + cj.radii[None] + blend
            bad = gap < need
            if i == j:  # neighbours along the same tube always overlap
                s = arc_length(ci.points, closed=ci.closed)
                sep = np.abs(s[: len(ci.points), None] - s[None, : len(ci.points)])
                if ci.closed:
                    sep = np.minimum(sep, s[-1] - sep)
                bad &= sep > 3.0 * need
            else:
                bad &= free[i][:, None] & free[j][None]
            if bad.any():
                raise Redraw("two tubes touch away from a junction")


def _related(curves: list[Curve], i: int, j: int) -> bool:
    ci, cj = curves[i], curves[j]
    if ci.parent == j or cj.parent == i:
        return True
    return ci.parent is not None and ci.parent == cj.parent and np.allclose(ci.points[0], cj.points[0])


def _outside_parent(curves: list[Curve], i: int, blend: float) -> np.ndarray:
    """(n,) bool: which axis points of tube ``i`` lie outside its parent tube (+ blend)."""
    c = curves[i]
    parent = None if c.parent is None else curves[c.parent]
    if parent is None or parent.radii is None:
        return np.ones(len(c.points), dtype=bool)
    depth = np.linalg.norm(c.points[:, None] - parent.points[None], axis=-1) - parent.radii[None]
    return depth.min(axis=1) > blend
