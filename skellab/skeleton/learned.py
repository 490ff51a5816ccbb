"""Learned skeletonization in the style of Point2Skeleton (Lin et al., CVPR 2021; METHOD.md §3).

A point encoder predicts, for each of K skeletal spheres, a softmax over the N input
points; the sphere centre is the resulting convex combination of the inputs, so it always
lies in their convex hull. Trained without labels from three geometric losses:

* sampling loss — 8 points on each sphere (directions (±1, ±1, ±1)/√3) must match the input
  surface (unsquared Chamfer, both directions);
* point-to-sphere loss — every input point should lie on its nearest sphere, and every sphere
  should touch its nearest input point;
* radius loss — −mean(r), which pushes the spheres toward maximal inscribed balls, i.e. the
  centres toward the medial axis;
* inside loss (ours, training only, needs surface normals) — mean of max(0, (c_i − q_i)·n_i)
  with q_i the input point nearest to c_i and n_i its outward normal. Without it the first
  three losses cannot tell the inner medial axis from the outer one: on a torus the largest
  empty balls sit in the hole, and an untrained-for-orientation model put ~80% of its centres
  there. Inference still takes bare points; ``weight_inside=0`` is the paper's recipe.

Radius choice (``radius_mode``). Point2Skeleton uses r_i = Σ_j W_ij · min_k ‖p_j − c_k‖
(``"point2skeleton"``). The default here, ``"clearance"``, is r_i = min_j ‖c_i − p_j‖: the
largest ball around c_i that is empty of input points. It is exact for the sampled surface
(the second point-to-sphere term is then zero by construction), it can never produce a sphere
that pokes through the sampled surface, and with it the radius loss becomes "maximise the
clearance", whose gradient pushes every centre away from its nearest surface point — toward the
medial axis. Measured on held-out tubes it was the better of the two (see the weights index).

Inputs are surface point clouds in the normalised frame (bbox centre 0, max |coord| = 1);
the network is not scale-invariant. Edges are left empty: build them with the graph module.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from ..checkpoint import build_with_weights, read_checkpoint, save_bytes
from ..errors import SkellabError
from ..runtime import atomic_path, resolve_device
from ..schema import SIZE_RANGE, validate_config
from ..weights import weights_path
from .ops import farthest_point_sampling, gather, knn, pairwise_sq_dist
from .types import Skeleton

CHECKPOINT_FORMAT = "skellab.learned_skeleton/1"
#: optimisation fields that older checkpoints stored in the model config (now :class:`skellab.train.EngineConfig`)
LEGACY_FIELDS = ("lr", "steps", "batch_size", "grad_clip")
#: sane ranges of the :class:`LearnedSkeletonConfig` fields that size tensors (checked on load and ``--set``)
CONFIG_RANGES = {"k": (1, 4096), "num_points": (1, 1 << 20), "width": SIZE_RANGE, "knn": (1, 1024)}
SPHERE_DIRECTIONS = tuple((x, y, z) for x in (-1, 1) for y in (-1, 1) for z in (-1, 1))  # × 1/√3


@dataclass(frozen=True, kw_only=True)
class LearnedSkeletonConfig:
    """Architecture, losses and optimisation of :class:`PointSkeletonNet`."""

    k: int = 256  # skeletal spheres predicted per shape
    num_points: int = 2048  # input surface points per cloud (inputs are resampled to this)
    width: int = 32  # channels of the first edge-conv layer (the third has 2×, the global feature 8×)
    knn: int = 12  # neighbours of each point in the (static, xyz) edge-conv graph
    radius_mode: str = "clearance"  # "clearance": min_j |c_i - p_j|; "point2skeleton": Σ_j W_ij min_k |p_j - c_k|
    weight_sample: float = 1.0  # weight of the sampling (sphere-surface Chamfer) loss
    weight_p2s: float = 0.3  # weight of the point-to-sphere loss
    weight_radius: float = 0.4  # weight of the radius loss (−mean r)
    weight_inside: float = 1.0  # weight of the inside loss (needs training normals; 0 = paper)
    augment_rotation: bool = True  # random rotation of each training cloud (then re-normalised)

    def __post_init__(self) -> None:
        if self.radius_mode not in ("clearance", "point2skeleton"):
            raise SkellabError(f"radius_mode must be 'clearance' or 'point2skeleton', got {self.radius_mode!r}")
        for name in ("k", "num_points", "width", "knn"):
            if int(getattr(self, name)) < 1:
                raise SkellabError(f"LearnedSkeletonConfig.{name} must be >= 1, got {getattr(self, name)}")
        if self.knn >= self.num_points:
            raise SkellabError(f"knn ({self.knn}) must be smaller than num_points ({self.num_points})")


class EdgeConv(nn.Module):
    """DGCNN edge convolution on a fixed kNN graph: h_i' = max_j σ(A·h_i + B·(h_j − h_i)).

    h : (B, N, C_in), idx : (B, N, k) → (B, N, C_out). Written as (A − B)·h_i + B·h_j so the
    linear maps run per point and only the projected features are gathered.
    """

    def __init__(self, c_in: int, c_out: int):
        super().__init__()
        self.center = nn.Linear(c_in, c_out)
        self.neighbor = nn.Linear(c_in, c_out, bias=False)
        self.norm = nn.LayerNorm(c_out)

    def forward(self, h: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        nb = self.neighbor(h)  # (B, N, C_out)
        edge = (self.center(h) - nb).unsqueeze(2) + gather(nb, idx)  # (B, N, k, C_out)
        return self.norm(F.leaky_relu(edge, 0.2).amax(dim=2))


class PointSkeletonNet(nn.Module):
    """Surface points (B, N, 3) → K skeletal spheres as convex combinations of the inputs.

    Encoder: three edge-conv layers (widths w, w, 2w) on the xyz kNN graph, a point-wise
    linear layer to 8w channels and a global max-pool; the head maps [local, global] per point
    to K logits and a softmax over the N points gives W (B, K, N). Differentiable end to end.
    """

    def __init__(self, *, config: LearnedSkeletonConfig | None = None):
        super().__init__()
        self.config = cfg = config or LearnedSkeletonConfig()
        w = cfg.width
        self.convs = nn.ModuleList([EdgeConv(3, w), EdgeConv(w, w), EdgeConv(w, 2 * w)])
        local = 4 * w
        self.lift = nn.Sequential(nn.Linear(local, 8 * w), nn.LeakyReLU(0.2))
        self.head = nn.Sequential(
            nn.Linear(local + 8 * w, 4 * w), nn.LayerNorm(4 * w), nn.LeakyReLU(0.2),
            nn.Linear(4 * w, 2 * w), nn.LeakyReLU(0.2),
            nn.Linear(2 * w, cfg.k),
        )  # fmt: skip

    def weights(self, points: torch.Tensor) -> torch.Tensor:
        """Convex-combination weights W (B, K, N): non-negative, each row sums to 1."""
        _, idx = knn(points, points, self.config.knn, exclude_self=True)  # (B, N, k)
        feats, h = [], points
        for conv in self.convs:
            h = conv(h, idx)
            feats.append(h)
        local = torch.cat(feats, dim=-1)  # (B, N, 4w)
        glob = self.lift(local).amax(dim=1, keepdim=True)  # (B, 1, 8w)
        logits = self.head(torch.cat([local, glob.expand(-1, local.shape[1], -1)], dim=-1))  # (B, N, K)
        return torch.softmax(logits, dim=1).transpose(1, 2)

    def forward(self, points: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """points (B, N, 3) → centres (B, K, 3), radii (B, K), weights (B, K, N)."""
        if points.ndim != 3 or points.shape[-1] != 3:
            raise SkellabError(f"PointSkeletonNet expects (B, N, 3) points, got {tuple(points.shape)}")
        w = self.weights(points)
        centers = w @ points  # (B, K, 3): convex combinations
        if self.config.radius_mode == "clearance":
            radii = nearest_distance(centers, points)  # (B, K)
        else:
            radii = (w * nearest_distance(points, centers).unsqueeze(1)).sum(-1)
        return centers, radii, w


def nearest_distance(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """min_j ‖a_i − b_j‖ → (B, M) for a (B, M, 3), b (B, N, 3).

    The argmin is taken on detached data and the distance recomputed from exact differences,
    so the value is differentiable wrt both inputs (exact gradients, no matmul round-off).
    """
    idx = pairwise_sq_dist(a.detach(), b.detach()).argmin(dim=-1)  # (B, M)
    return (a - gather(b, idx.unsqueeze(-1)).squeeze(2)).norm(dim=-1)


def sphere_points(centers: torch.Tensor, radii: torch.Tensor) -> torch.Tensor:
    """8 points on each sphere along (±1, ±1, ±1)/√3 → (B, 8K, 3). Differentiable."""
    dirs = torch.tensor(SPHERE_DIRECTIONS, dtype=centers.dtype, device=centers.device) / math.sqrt(3.0)
    pts = centers.unsqueeze(2) + radii[..., None, None] * dirs  # (B, K, 8, 3)
    return pts.reshape(centers.shape[0], -1, 3)


def skeleton_losses(
    points: torch.Tensor,
    centers: torch.Tensor,
    radii: torch.Tensor,
    config: LearnedSkeletonConfig,
    normals: torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    """The Point2Skeleton losses, our inside loss, and their weighted total (differentiable scalars).

    points (B, N, 3), centers (B, K, 3), radii (B, K), normals (B, N, 3) outward unit normals
    of ``points`` or None (then the inside loss is 0). Each term is a mean over its points
    (and the batch), unsquared distances.
    """
    sp = sphere_points(centers, radii)  # (B, 8K, 3)
    d2 = pairwise_sq_dist(sp.detach(), points.detach())  # (B, 8K, N), ranking only
    to_surface = (sp - gather(points, d2.argmin(dim=2, keepdim=True)).squeeze(2)).norm(dim=-1)
    to_spheres = (points - gather(sp, d2.argmin(dim=1).unsqueeze(-1)).squeeze(2)).norm(dim=-1)
    sample = to_surface.mean() + to_spheres.mean()
    nn_c = pairwise_sq_dist(points.detach(), centers.detach()).argmin(dim=-1)  # (B, N)
    c_of_p = gather(centers, nn_c.unsqueeze(-1)).squeeze(2)  # (B, N, 3)
    r_of_p = torch.gather(radii, 1, nn_c)  # (B, N)
    p2s = ((points - c_of_p).norm(dim=-1) - r_of_p).abs().mean()
    p2s = p2s + (nearest_distance(centers, points) - radii).abs().mean()
    radius = -radii.mean()
    inside = centers.new_zeros(())
    if normals is not None:
        nn_p = pairwise_sq_dist(centers.detach(), points.detach()).argmin(dim=-1, keepdim=True)  # (B, K, 1)
        q, n = gather(points, nn_p).squeeze(2), gather(normals, nn_p).squeeze(2)  # (B, K, 3)
        inside = F.relu(((centers - q) * n).sum(-1)).mean()
    total = (
        config.weight_sample * sample
        + config.weight_p2s * p2s
        + config.weight_radius * radius
        + config.weight_inside * inside
    )
    return {"total": total, "sample": sample, "p2s": p2s, "radius": radius, "inside": inside}


def random_rotations(n: int, *, generator: torch.Generator) -> torch.Tensor:
    """(n, 3, 3) rotations, uniform on SO(3) (QR of a Gaussian matrix with sign fix)."""
    q, r = torch.linalg.qr(torch.randn(n, 3, 3, generator=generator, device=generator.device))
    q = q * torch.sign(torch.diagonal(r, dim1=1, dim2=2)).unsqueeze(1)
    det = torch.linalg.det(q)
    q[:, :, 0] = q[:, :, 0] * det.unsqueeze(1)  # reflect to det = +1
    return q


def renormalize(points: torch.Tensor) -> torch.Tensor:
    """Per cloud: bbox centre → 0, max |coord| → 1 (the library's normalised frame). (B, N, 3)."""
    lo, hi = points.amin(dim=1, keepdim=True), points.amax(dim=1, keepdim=True)
    centred = points - 0.5 * (lo + hi)
    return centred / centred.abs().amax(dim=(1, 2), keepdim=True).clamp_min(1e-12)


def save_checkpoint(
    model: PointSkeletonNet, path: str | os.PathLike, *, metrics: dict[str, Any] | None = None,
    training: dict[str, Any] | None = None,
) -> dict[str, Any]:  # fmt: skip
    """Write ``{"format", "config", "state_dict"}`` atomically (loadable with ``weights_only=True``).

    Also writes an index entry ``<path>.json`` beside it (name, file, sha256, config, metrics,
    training details) and returns that entry.
    """
    path = Path(path)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    payload = {"format": CHECKPOINT_FORMAT, "config": asdict(model.config), "state_dict": state}
    with atomic_path(path) as tmp:
        save_bytes(payload, tmp)
    entry = {
        "name": path.stem,
        "file": path.name,
        "format": CHECKPOINT_FORMAT,
        "sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
        "bytes": path.stat().st_size,
        "parameters": sum(p.numel() for p in model.parameters()),
        "config": asdict(model.config),
        "metrics": metrics or {},
        "training": training or {},
    }
    with atomic_path(path.with_suffix(".json")) as tmp:
        tmp.write_text(json.dumps(entry, indent=2) + "\n")
    return entry


def load_checkpoint(path: str | os.PathLike | None = None, *, device: str | torch.device = "cpu") -> PointSkeletonNet:
    """Rebuild a :class:`PointSkeletonNet` (eval mode) from a checkpoint file.

    path : a file written by :func:`save_checkpoint`; ``None`` → the shipped
        ``skellab/weights/skeleton_learned.pt``. Raises :class:`SkellabError` for a missing or
        unreadable file, a wrong format tag, an unknown config, or weights that don't fit.
    """
    path = Path(path) if path is not None else weights_path("skeleton_learned")
    payload = read_checkpoint(path, format=CHECKPOINT_FORMAT, kind="learned-skeleton")
    raw = payload.get("config")
    if isinstance(raw, dict):
        raw = {k: v for k, v in raw.items() if k not in LEGACY_FIELDS}
    cfg = validate_config(LearnedSkeletonConfig, raw, where=f"{path}: config", ranges=CONFIG_RANGES)
    model = build_with_weights(lambda: PointSkeletonNet(config=cfg), payload.get("state_dict"), path=path)
    return model.to(resolve_device(device)).eval()


def _resample(points: torch.Tensor, n: int, generator: torch.Generator | None) -> torch.Tensor:
    """(B, N, 3) → (B, n, 3): FPS when N > n, random repeats (from ``generator``) when N < n."""
    b, m, _ = points.shape
    if m == n:
        return points
    if m > n:
        return gather(points, farthest_point_sampling(points, n, generator=generator))
    extra = torch.randint(m, (b, n - m), generator=generator, device=generator.device if generator else "cpu")
    return torch.cat([points, gather(points, extra.to(points.device))], dim=1)


def skeletonize_learned(
    points: torch.Tensor | np.ndarray,
    *,
    k: int | None = None,
    checkpoint: str | os.PathLike | PointSkeletonNet | None = None,
    device: str | torch.device = "auto",
    generator: torch.Generator | None = None,
) -> Skeleton | list[Skeleton]:
    """Skeletal spheres of surface point clouds with a trained :class:`PointSkeletonNet`.

    points : (N, 3) or (B, N, 3) surface points in the normalised frame; resampled to the
        model's ``num_points`` (FPS down, random repeats up, seeded by ``generator``).
    k : number of spheres, at most the model's K (``None``: all K). The network predicts K spheres;
        fewer are chosen from them by farthest-point sampling on the centres (deterministic).
    checkpoint : a path, a loaded model, or ``None`` for the shipped weights.
    returns : one :class:`Skeleton` (centres (K, 3), radii (K,), no edges) for (N, 3) input,
        else a list of B. Runs under ``torch.no_grad`` (use the model directly for gradients).
    """
    model = checkpoint if isinstance(checkpoint, PointSkeletonNet) else load_checkpoint(checkpoint, device="cpu")
    cfg = model.config
    if k is not None and not 1 <= int(k) <= cfg.k:
        raise SkellabError(f"this learned-skeleton model predicts {cfg.k} spheres: ask for k between 1 and {cfg.k}, "
                           f"not {k}")
    pts = torch.as_tensor(np.asarray(points) if isinstance(points, np.ndarray) else points).float()
    single = pts.ndim == 2
    if single:
        pts = pts.unsqueeze(0)
    if pts.ndim != 3 or pts.shape[-1] != 3 or pts.shape[1] < 1:
        raise SkellabError(f"learned skeleton expects (N, 3) or (B, N, 3) points, got {tuple(pts.shape)}")
    if not torch.isfinite(pts).all():
        raise SkellabError("learned skeleton: input points contain NaN or infinite coordinates")
    dev = resolve_device(device)
    model = model.to(dev).eval()
    with torch.no_grad():
        x = _resample(pts.cpu(), cfg.num_points, generator).to(dev)
        centers, radii, _ = model(x)
        if k is not None and int(k) < cfg.k:  # fewer spheres: an even spread of the predicted ones
            keep = farthest_point_sampling(centers, int(k))  # deterministic (starts at sphere 0)
            centers, radii = gather(centers, keep), torch.gather(radii, 1, keep)
    meta = {"k": int(centers.shape[1]), "predicted": cfg.k, "num_points": cfg.num_points,
            "input_points": int(pts.shape[1]), "radius_mode": cfg.radius_mode}  # fmt: skip
    out = [Skeleton(centers=c.cpu(), radii=r.cpu(), method="learned", meta=dict(meta)) for c, r in zip(centers, radii)]
    return out[0] if single else out
