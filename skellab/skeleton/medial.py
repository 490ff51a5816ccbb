"""Medial skeletonization by shrinking balls (Ma, Bae & Oliver 2012) — skellab's default.

For each surface sample ``p`` with outward unit normal ``n``, the maximal ball that
touches ``p`` and has its centre on the inward normal ray, ``c = p − r·n``, is the
inscribed (medial) ball at ``p``. A sample ``q`` lies strictly inside the ball of
radius ``r`` iff ``(p−q)·n > 0`` and ``r > ρ(p, q)`` with

    ρ(p, q) = ‖p − q‖² / (2 (p − q)·n)                       (the ball through p and q),

so the medial radius is ``min_q ρ(p, q)``. Shrinking balls finds that minimum without
touching all pairs: start from a big ball, look at the samples nearest its centre,
shrink to the smallest ``ρ`` among them, repeat until no sample is inside.

Noise rule (separation angle). On a noisy or coarsely sampled surface, neighbours of
``p`` poke slightly into every ball and stop it early. We ignore a sample ``q`` when
the angle it subtends, ``φ = ∠ p c q``, is below ``separation_deg``. For the ball
through ``p`` and ``q`` tangent at ``p`` this angle has the closed form
``sin(φ/2) = (p−q)·n / ‖p−q‖``, so the rule is a cone test on ``p − q``. (Ma et al.
stop at the first small-angle ball; we skip such samples and keep shrinking against
the others, which is equivalent on clean data and more robust on noisy data.)

Selection. Balls that never touch a second sample (wrong normals, open surfaces) stay
at the cap ``max_radius`` and are dropped, as are balls whose final object angle
``∠ p c q*`` is below ``min_object_deg`` (spurious medial branches that reach toward
small surface bumps). Farthest-point sampling on the surviving centres picks K spheres.

Gradients. The search (which ``q*`` touches each ball) runs without gradients; the
final radius is then recomputed in closed form, ``r = ρ(p, q*)``, and ``c = p − r·n``,
so centres and radii are differentiable wrt the surface points (``p`` and ``q*``) and
the normals ``n``. The discrete choices (touching sample, FPS) are not.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch

from ..errors import SkellabError
from .ops import NeighborIndex, farthest_point_sampling, gather

__all__ = ["MedialConfig", "MedialBalls", "shrinking_balls", "medial_spheres"]


@dataclass(frozen=True)
class MedialConfig:
    """Parameters of the shrinking-ball skeletonization (normalised frame, [-1, 1])."""

    max_radius: float = 1.0  # initial ball radius and cap; balls still this big are "unconverged"
    iterations: int = 16  # maximum shrinking steps per ball
    candidates: int = 8  # samples nearest the current centre examined per step
    separation_deg: float = 60.0  # ignore samples subtending ∠pcq below this (noise rule)
    min_object_deg: float = 90.0  # drop balls whose final ∠pcq* is below this (spurious branches)
    tol: float = 1e-3  # a step must shrink r by more than this fraction to count
    num_balls: int | None = 1024  # surface samples that get a ball (None: all N; else a subset, strided or random)
    bound_samples: int = 64  # FPS samples giving each ball a tight starting radius (0: start at max_radius)
    knn_backend: str = "auto"  # "auto" | "kdtree" | "dense" nearest-neighbour search (see ops.NeighborIndex)

    def __post_init__(self) -> None:
        if not self.max_radius > 0:
            raise SkellabError(f"MedialConfig.max_radius must be > 0, got {self.max_radius}")
        if self.iterations < 1 or self.candidates < 1:
            raise SkellabError("MedialConfig.iterations and .candidates must be >= 1")
        if not 0 <= self.separation_deg < 180 or not 0 <= self.min_object_deg < 180:
            raise SkellabError("MedialConfig angles must lie in [0, 180) degrees")
        if self.num_balls is not None and self.num_balls < 1:
            raise SkellabError(f"MedialConfig.num_balls must be >= 1 or None, got {self.num_balls}")

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class MedialBalls:
    """One shrinking ball per surface sample (batched).

    centers   : (B, M, 3) medial points ``p − r·n`` (differentiable)
    radii     : (B, M) inscribed radii ``ρ(p, q*)`` (differentiable)
    touch     : (B, M) int64 index of the touching sample ``q*`` (−1: none found)
    angle     : (B, M) object angle ``∠ p c q*`` in radians (0 where none found)
    source    : (B, M) int64 index of the surface sample ``p`` each ball belongs to
    converged : (B, M) bool, the ball touches a second sample and stopped shrinking
    """

    centers: torch.Tensor
    radii: torch.Tensor
    touch: torch.Tensor
    angle: torch.Tensor
    source: torch.Tensor
    converged: torch.Tensor


def _check_oriented(points: torch.Tensor, normals: torch.Tensor) -> None:
    if points.ndim != 3 or points.shape[-1] != 3:
        raise SkellabError(f"points must have shape (B, N, 3), got {tuple(points.shape)}")
    if normals.shape != points.shape:
        raise SkellabError(f"normals must match points {tuple(points.shape)}, got {tuple(normals.shape)}")


def _rho(p: torch.Tensor, n: torch.Tensor, q: torch.Tensor, sin_half: float) -> torch.Tensor:
    """ρ(p, q) for p, n (..., 3) and q (..., S, 3); ``inf`` where q fails the separation cone."""
    d = p.unsqueeze(-2) - q  # p − q, (..., S, 3)
    num = (d * d).sum(-1)  # ‖p − q‖²
    den = (d * n.unsqueeze(-2)).sum(-1)  # (p − q)·n
    ok = den > sin_half * num.sqrt() + 1e-12  # inside the cone ⟺ ∠pcq ≥ separation angle
    return torch.where(ok, num / (2 * den.clamp_min(1e-12)), torch.inf)


def _radius_bound(
    p: torch.Tensor, n: torch.Tensor, points: torch.Tensor, s: int, sin_half: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Upper bound (B, M) on each medial radius from s FPS samples, and the sample (B, M) giving it.

    Same arithmetic as :func:`_rho` (exact differences, so near neighbours of ``p`` are
    rejected reliably), but laid out coordinate-major: nine (B, M, s) elementwise ops
    instead of (B, M, s, 3) difference tensors reduced over a length-3 axis.
    """
    sel = farthest_point_sampling(points, min(s, points.shape[1]))  # (B, s)
    q = gather(points, sel).transpose(1, 2)  # (B, 3, s)
    num = den = None
    for j in range(3):
        dj = p[..., j : j + 1] - q[:, j : j + 1, :]  # (B, M, s) component j of p − q
        nj = n[..., j : j + 1] * dj
        num = dj * dj if num is None else num.addcmul_(dj, dj)
        den = nj if den is None else den.add_(nj)
    ok = den > sin_half * num.sqrt() + 1e-12  # inside the cone ⟺ ∠pcq ≥ separation angle
    rho = num.div_(den.clamp_min_(1e-12).mul_(2.0)).masked_fill_(~ok, torch.inf)
    bound, arg = rho.min(-1)
    return bound, torch.gather(sel, 1, arg)


def shrinking_balls(
    points: torch.Tensor,
    normals: torch.Tensor,
    *,
    config: MedialConfig = MedialConfig(),
    source: torch.Tensor | None = None,
) -> MedialBalls:
    """Medial ball of each surface sample by shrinking (see the module docstring).

    points  : (B, N, 3) surface samples
    normals : (B, N, 3) unit **outward** normals (inward balls go along −n)
    source  : optional (B, M) indices of the samples that get a ball (default: all)
    returns : :class:`MedialBalls` with M balls per batch item.

    Differentiable wrt ``points`` and ``normals`` through the closed-form final radius.
    """
    _check_oriented(points, normals)
    B, N, _ = points.shape
    if source is None:
        source = torch.arange(N, device=points.device).expand(B, N)
    p = gather(points, source)  # (B, M, 3)
    n = gather(normals, source)
    kc = min(config.candidates, N)
    sin_half = math.sin(math.radians(config.separation_deg) / 2)
    index = NeighborIndex(points, backend=config.knn_backend)

    with torch.no_grad():
        M = p.shape[1]
        pd, nd = p.detach().reshape(B * M, 3), n.detach().reshape(B * M, 3)  # flat (B·M, 3)
        xd = points.detach()
        batch = torch.arange(B, device=p.device).repeat_interleave(M)  # batch item of each ball
        r = torch.full((B * M,), float(config.max_radius), dtype=p.dtype, device=p.device)
        touch = torch.full((B * M,), -1, dtype=torch.long, device=p.device)
        if config.bound_samples > 0:  # any admissible q gives ρ(p, q) ≥ r*, a safe start
            bound, bound_q = _radius_bound(p.detach(), n.detach(), xd, config.bound_samples, sin_half)
            better = bound.view(-1) < r
            r = torch.where(better, bound.view(-1), r)
            touch = torch.where(better, bound_q.view(-1), touch)
        active = torch.arange(B * M, device=p.device)  # balls that shrank last step
        for _ in range(config.iterations):
            pa, na, ra, ba = pd[active], nd[active], r[active], batch[active]
            c = pa - ra.unsqueeze(-1) * na  # (L, 3) current centres
            idx = index.query_index_flat(c, ba, kc)  # (L, kc) samples nearest each centre
            rho = _rho(pa, na, xd[ba.unsqueeze(1), idx], sin_half)  # (L, kc), ∞ where ignored
            best, arg = rho.min(-1)
            shrink = best < ra * (1 - config.tol)
            active_next = active[shrink]
            r[active_next] = best[shrink]
            touch[active_next] = idx[shrink, arg[shrink]]
            active = active_next
            if active.numel() == 0:
                break
        r, touch = r.view(B, M), touch.view(B, M)

    # Differentiable closed form from the chosen touching sample (step "r = ρ(p, q*)").
    found = touch >= 0
    q = gather(points, touch.clamp_min(0))
    d = p - q
    num = (d * d).sum(-1)
    den = (d * n).sum(-1)
    safe_den = torch.where(found, den, torch.ones_like(den)).clamp_min(1e-12)
    radii = torch.where(found, num / (2 * safe_den), torch.full_like(num, float(config.max_radius)))
    centers = p - radii.unsqueeze(-1) * n
    with torch.no_grad():
        s = (den / num.clamp_min(1e-24).sqrt()).clamp(0.0, 1.0)
        angle = torch.where(found, 2 * torch.asin(s), torch.zeros_like(s))
    return MedialBalls(centers, radii, touch, angle, source, found)


def medial_spheres(
    points: torch.Tensor,
    normals: torch.Tensor,
    *,
    k: int,
    config: MedialConfig = MedialConfig(),
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """K skeletal spheres from oriented surface points (shrinking balls + FPS).

    points    : (B, N, 3) surface samples, normalised frame
    normals   : (B, N, 3) unit outward normals
    k         : spheres per shape
    generator : drives the random ball subset (``config.num_balls``) and the FPS start;
                without one the result is deterministic (strided subset, FPS from the first kept)
    returns   : centers (B, K, 3), radii (B, K) — differentiable wrt points and normals —
                and ``info`` with per-item counts (``kept``, ``converged``) as lists.
    """
    _check_oriented(points, normals)
    B, N, _ = points.shape
    if k > N:
        raise SkellabError(f"cannot pick k={k} skeletal spheres from {N} surface points")
    source = None
    m = N if config.num_balls is None else min(max(config.num_balls, k), N)
    if m < N and generator is not None:  # a random subset of the samples gets balls
        noise = torch.rand(B, N, generator=generator, device=generator.device)
        source = noise.to(points.device).topk(m, dim=1).indices.sort(dim=1).values
    elif m < N:  # deterministic: evenly strided sample indices
        source = torch.linspace(0, N - 1, m, device=points.device).round().long().expand(B, m)
    balls = shrinking_balls(points, normals, config=config, source=source)

    keep = balls.converged & (balls.angle >= math.radians(config.min_object_deg))
    short = (k - keep.sum(1)).clamp_min(0)
    if bool((short > 0).any()):  # too few clean balls: admit the widest-angle remaining ones
        score = torch.where(keep, torch.inf, balls.angle + balls.converged.to(balls.angle.dtype))
        rank = score.argsort(dim=1, descending=True).argsort(dim=1)
        keep = rank < torch.maximum(keep.sum(1), torch.full_like(short, k)).unsqueeze(1)
    sel = farthest_point_sampling(balls.centers.detach(), k, generator=generator, mask=keep)
    centers = gather(balls.centers, sel)
    radii = torch.gather(balls.radii, 1, sel)
    info = {
        "config": config.to_dict(),
        "balls": int(balls.radii.shape[1]),
        "converged": balls.converged.sum(1).tolist(),
        "kept": keep.sum(1).tolist(),
    }
    return centers, radii, info
