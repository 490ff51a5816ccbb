"""Baselines to compare skeletal latent diffusion against (METHOD §6, §9)."""

from .point_diffusion import (
    PointDenoiser,
    PointDenoiserConfig,
    PointDiffusion,
    load_point_diffusion,
    sample_point_clouds,
    save_point_diffusion,
)

__all__ = [
    "PointDenoiserConfig",
    "PointDenoiser",
    "PointDiffusion",
    "sample_point_clouds",
    "save_point_diffusion",
    "load_point_diffusion",
]
