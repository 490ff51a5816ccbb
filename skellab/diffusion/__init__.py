"""Latent diffusion over skeletal token sets (METHOD §6): schedulers, denoiser, sampling, training.

Typical use::

    from skellab.diffusion import DenoiserConfig, train_diffusion, save_diffusion, load_diffusion
    diffusion, history = train_diffusion(latents, class_index, config=DenoiserConfig.tiny(num_classes=2))
    tokens = diffusion.sample(8, class_index=0, guidance=2.0, generator=make_generator(0))  # (8, K, D)
"""

from .denoiser import DenoiserConfig, TokenDenoiser, timestep_embedding
from .sampling import LatentNormalizer, guided_output, sample_latents
from .schedulers import (
    BETA_SCHEDULES,
    PREDICTION_TYPES,
    SCHEDULERS,
    DDIMScheduler,
    DDPMScheduler,
    EDMScheduler,
    SchedulerOutput,
    make_scheduler,
)
from .train import (
    CHECKPOINT_FORMAT,
    LatentDiffusion,
    fit_denoiser,
    load_diffusion,
    make_synthetic_latents,
    save_diffusion,
    train_diffusion,
)

__all__ = [
    "EDMScheduler",
    "DDPMScheduler",
    "DDIMScheduler",
    "SchedulerOutput",
    "make_scheduler",
    "SCHEDULERS",
    "PREDICTION_TYPES",
    "BETA_SCHEDULES",
    "DenoiserConfig",
    "TokenDenoiser",
    "timestep_embedding",
    "LatentNormalizer",
    "sample_latents",
    "guided_output",
    "CHECKPOINT_FORMAT",
    "LatentDiffusion",
    "train_diffusion",
    "fit_denoiser",
    "save_diffusion",
    "load_diffusion",
    "make_synthetic_latents",
]
