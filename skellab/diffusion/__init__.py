"""Latent diffusion over skeletal token sets (METHOD §6): schedulers, denoiser, sampling, checkpoints.

Typical use (training is :mod:`skellab.train`: ``skellab train diffusion`` or :func:`skellab.train.train_diffusion`)::

    from skellab.diffusion import load_diffusion
    diffusion = load_diffusion()                    # the shipped model (skellab/weights/diffusion.pt)
    tokens = diffusion.sample(8, class_index="kidney", generator=make_generator(0))  # (8, K, D)
"""

from .denoiser import (
    CHANNELS,
    SPHERE_CHANNELS,
    DenoiserConfig,
    TokenDenoiser,
    fourier_inputs,
    generated_channels,
    order_tokens,
    sort_tokens,
    split_channels,
    timestep_embedding,
)
from .inpainting import inpaint_latents
from .model import (
    CHECKPOINT_FORMAT,
    LatentDiffusion,
    attach_guide,
    with_class_autoguidance,
    classes_present,
    join_stages,
    diffusion_payload,
    load_diffusion,
    save_diffusion,
)
from .sampling import (DEFAULT_GUIDANCE, LatentNormalizer, call_sigma, check_guide_interval, guided_output, sample_latents,
                       self_conditioned)
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
from .synthetic import make_synthetic_latents

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
    "order_tokens",
    "sort_tokens",
    "fourier_inputs",
    "split_channels",
    "generated_channels",
    "CHANNELS",
    "SPHERE_CHANNELS",
    "timestep_embedding",
    "DEFAULT_GUIDANCE",
    "LatentNormalizer",
    "sample_latents",
    "guided_output",
    "self_conditioned",
    "call_sigma",
    "check_guide_interval",
    "inpaint_latents",
    "CHECKPOINT_FORMAT",
    "LatentDiffusion",
    "attach_guide",
    "with_class_autoguidance",
    "classes_present",
    "join_stages",
    "diffusion_payload",
    "save_diffusion",
    "load_diffusion",
    "make_synthetic_latents",
]
