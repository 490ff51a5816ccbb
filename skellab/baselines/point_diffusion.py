"""A PVD-like baseline: diffusion directly on surface point clouds (no skeleton, no latent).

Point-Voxel Diffusion (Zhou, Du & Wu 2021) runs DDPM on 2,048-point clouds with a
point-voxel CNN. This baseline keeps the idea — the same schedulers, training loop and
sampling loop as the latent model (:mod:`skellab.diffusion`), applied to (B, N, 3) point
coordinates in the normalised frame — with a small, CPU-friendly, permutation-equivariant
**PointNet-style** network instead of the voxel CNN: per-point MLPs, and in every block a
global max- and mean-pooled feature broadcast back to the points, all conditioned on the
noise level and the class by adaLN-Zero (as :class:`~skellab.diffusion.TokenDenoiser`).
Cost is linear in N (no attention over 2,048 points). It has no local neighbourhood
features, so expect blurrier surfaces than PVD: it is a baseline, not a contender.

Checkpoint format ``skellab.point_diffusion/1`` (``torch.load(weights_only=True)``-safe).
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..checkpoint import build_with_weights, read_checkpoint, save_bytes
from ..diffusion.denoiser import _modulate, class_or_null, timestep_embedding
from ..diffusion.sampling import DEFAULT_GUIDANCE, sample_latents
from ..diffusion.schedulers import make_scheduler
from ..errors import SkellabError
from ..runtime import atomic_path, resolve_device
from ..schema import SIZE_RANGE, validate_config

__all__ = ["PointDenoiserConfig", "PointDenoiser", "PointDiffusion",
           "sample_point_clouds", "save_point_diffusion", "load_point_diffusion", "CHECKPOINT_FORMAT"]

CHECKPOINT_FORMAT = "skellab.point_diffusion/1"


@dataclass(frozen=True)
class PointDenoiserConfig:
    """Architecture of :class:`PointDenoiser`."""

    token_dim: int = 3  # numbers per point (xyz); the sampling loop reads it
    width: int = 128  # channels per point
    depth: int = 4  # blocks (per-point MLP + global-feature mixing)
    time_embed_dim: int = 64  # sinusoidal noise-condition embedding size
    num_classes: int = 0  # classes; 0 = unconditional
    class_dropout: float = 0.2  # P(class → null) in training, for classifier-free guidance

    def __post_init__(self) -> None:
        if min(self.token_dim, self.width, self.depth, self.time_embed_dim) < 1 or self.time_embed_dim % 2:
            raise SkellabError("PointDenoiserConfig: sizes must be >= 1 and time_embed_dim even")
        if self.num_classes < 0 or not 0 <= self.class_dropout < 1:
            raise SkellabError("PointDenoiserConfig: num_classes >= 0 and class_dropout in [0, 1)")

    @classmethod
    def tiny(cls, **overrides: Any) -> "PointDenoiserConfig":
        """CI / CPU preset: width 32, depth 2."""
        return replace(cls(width=32, depth=2, time_embed_dim=32), **overrides)

    @classmethod
    def default(cls, **overrides: Any) -> "PointDenoiserConfig":
        return replace(cls(), **overrides)


class _PointBlock(nn.Module):
    def __init__(self, width: int):
        super().__init__()
        self.norm1 = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        self.local = nn.Sequential(nn.Linear(width, width), nn.GELU(), nn.Linear(width, width))
        self.norm2 = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        self.mix = nn.Sequential(nn.Linear(3 * width, width), nn.GELU(), nn.Linear(width, width))
        self.ada = nn.Sequential(nn.SiLU(), nn.Linear(width, 6 * width))
        nn.init.zeros_(self.ada[1].weight)
        nn.init.zeros_(self.ada[1].bias)

    def forward(self, h: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        shift1, scale1, gate1, shift2, scale2, gate2 = self.ada(c).chunk(6, dim=-1)  # (B, W) each
        h = h + gate1[:, None] * self.local(_modulate(self.norm1(h), shift1, scale1))  # (B, N, W)
        u = _modulate(self.norm2(h), shift2, scale2)
        pooled = torch.cat([u.max(dim=1).values, u.mean(dim=1)], dim=-1)  # (B, 2W), permutation-invariant
        return h + gate2[:, None] * self.mix(torch.cat([u, pooled[:, None].expand(-1, u.shape[1], -1)], dim=-1))


class PointDenoiser(nn.Module):
    """Permutation-equivariant PointNet-style denoiser: (B, N, 3), (B,), (B,) | None → (B, N, 3)."""

    def __init__(self, *, config: PointDenoiserConfig | None = None):
        super().__init__()
        cfg = self.config = config or PointDenoiserConfig()
        self.input = nn.Linear(cfg.token_dim, cfg.width)
        self.time_mlp = nn.Sequential(nn.Linear(cfg.time_embed_dim, cfg.width), nn.SiLU(),
                                      nn.Linear(cfg.width, cfg.width))
        self.class_embed = nn.Embedding(cfg.num_classes + 1, cfg.width)  # last row: the null class
        nn.init.normal_(self.class_embed.weight, std=1.0)  # as strong as the time signal from step 0
        self.blocks = nn.ModuleList(_PointBlock(cfg.width) for _ in range(cfg.depth))
        self.norm_out = nn.LayerNorm(cfg.width, elementwise_affine=False, eps=1e-6)
        self.ada_out = nn.Sequential(nn.SiLU(), nn.Linear(cfg.width, 2 * cfg.width))
        self.output = nn.Linear(cfg.width, cfg.token_dim)
        for lin in (self.ada_out[1], self.output):
            nn.init.zeros_(lin.weight)
            nn.init.zeros_(lin.bias)

    def forward(self, x: torch.Tensor, t: torch.Tensor, class_index: torch.Tensor | None = None) -> torch.Tensor:
        if x.ndim != 3 or x.shape[-1] != self.config.token_dim:
            raise SkellabError(f"point denoiser input must be (B, N, {self.config.token_dim}), got {tuple(x.shape)}")
        b = x.shape[0]
        t = torch.as_tensor(t, device=x.device).reshape(-1).expand(b)
        c = self.time_mlp(timestep_embedding(t, self.config.time_embed_dim)) \
            + self.class_embed(class_or_null(class_index, self.config.num_classes, b, x.device))  # (B, W)
        h = self.input(x)
        for block in self.blocks:
            h = block(h, c)
        shift, scale = self.ada_out(c).chunk(2, dim=-1)
        return self.output(_modulate(self.norm_out(h), shift, scale))


#: sane ranges of the :class:`PointDenoiserConfig` fields (checked when a checkpoint is loaded)
CONFIG_RANGES = {**{n: SIZE_RANGE for n in ("token_dim", "width", "depth", "time_embed_dim")}, "num_classes": (0, 65536)}


@dataclass(frozen=True)
class _Entries:
    """The checkpoint entries besides config and weights, as they must be typed."""

    classes: tuple[str, ...] | None = None
    num_points: int = field(default=2048, metadata={"range": (1, 1 << 20)})
    info: dict | None = None
    scheduler: dict = field(default_factory=dict)


@dataclass
class PointDiffusion:
    """A trained point-cloud diffusion baseline: network, scheduler, class names, points per cloud."""

    denoiser: PointDenoiser
    scheduler: Any
    classes: list[str] | None = None
    num_points: int = 2048
    info: dict[str, Any] = field(default_factory=dict)

    def sample(self, num: int, **kwargs: Any) -> torch.Tensor:
        """:func:`sample_point_clouds` with this model's network and scheduler."""
        kwargs.setdefault("num_points", self.num_points)
        return sample_point_clouds(self.denoiser, self.scheduler, num=num, **kwargs)


def sample_point_clouds(denoiser: nn.Module, scheduler: Any, *, num: int, num_points: int = 2048,
                        class_index: int | torch.Tensor | None = None, guidance: float = DEFAULT_GUIDANCE,
                        steps: int | None = None, generator: torch.Generator | None = None,
                        return_trajectory: bool = False, precision: str = "auto"):
    """Point clouds (num, num_points, 3) in the normalised frame: the same loop as
    :func:`skellab.diffusion.sample_latents` (``precision`` too), on points instead of tokens."""
    return sample_latents(denoiser, scheduler, num=num, num_tokens=num_points, class_index=class_index,
                          guidance=guidance, steps=steps, generator=generator, return_trajectory=return_trajectory,
                          precision=precision)


def save_point_diffusion(path: str | os.PathLike, model: PointDiffusion) -> Path:
    """Write a ``skellab.point_diffusion/1`` checkpoint atomically."""
    payload = {"format": CHECKPOINT_FORMAT, "config": asdict(model.denoiser.config),
               "state_dict": {k: v.detach().cpu() for k, v in model.denoiser.state_dict().items()},
               "scheduler": dict(model.scheduler.config), "classes": model.classes,
               "num_points": int(model.num_points), "info": model.info}
    with atomic_path(path) as tmp:
        save_bytes(payload, tmp)
    return Path(path)


def load_point_diffusion(path: str | os.PathLike, *, device: str | torch.device = "cpu") -> PointDiffusion:
    """Rebuild a :class:`PointDiffusion` from its checkpoint; bad files → :class:`SkellabError`."""
    p = Path(path)
    ckpt = read_checkpoint(p, format=CHECKPOINT_FORMAT, kind="point diffusion")
    raw = ckpt.get("config")
    if isinstance(raw, dict):  # fields a newer writer added are ignored, as before
        raw = {k: v for k, v in raw.items() if k in {f.name for f in fields(PointDenoiserConfig)}}
    cfg = validate_config(PointDenoiserConfig, raw, where=f"{p}: config", ranges=CONFIG_RANGES)
    entries = validate_config(_Entries, {k: ckpt[k] for k in ("classes", "num_points", "info", "scheduler") if k in ckpt},
                              where=str(p))
    if "scheduler" not in ckpt:
        raise SkellabError(f"{p}: checkpoint has no 'scheduler' entry")
    try:
        sched = make_scheduler(**entries.scheduler)
    except SkellabError as exc:
        raise SkellabError(f"{p}: {exc}") from exc
    except (TypeError, ValueError, OverflowError) as exc:
        raise SkellabError(f"{p}: checkpoint scheduler is malformed ({exc})") from exc
    model = build_with_weights(lambda: PointDenoiser(config=cfg), ckpt.get("state_dict"), path=p)
    return PointDiffusion(model.to(resolve_device(device)).eval(), sched,
                          list(entries.classes) if entries.classes is not None else None,
                          int(entries.num_points), entries.info or {})
