"""Training at scale: one engine for every stage, presets, stage runners, library recipes, releases.

Library::

    from skellab.train import run_pipeline, train_autoencoder, train_diffusion, stage_config
    result = run_pipeline("medsdf-mini", "runs/r1", preset="default", device="auto")
    model, history = train_autoencoder("medsdf-tiny", preset="tiny", steps=100)

Command line (same code; the CLI is :mod:`skellab.cli.train`)::

    skellab train autoencoder --data medsdf-mini --out runs/r1 --preset default [--resume]
    torchrun --nproc_per_node 4 -m skellab.train diffusion --data medsdf-mini --out runs/r1

Modules: :mod:`.engine` (the loop: exact resume, DDP), :mod:`.presets` (every recipe, one place),
:mod:`.tasks` (what each stage learns), :mod:`.stages` (run folders, the pipeline),
:mod:`.recipes` (in-memory training functions), :mod:`.release` (run → shipped weights).
Nothing in the model packages imports this package.
"""

from .engine import (
    DistContext,
    EngineConfig,
    FitResult,
    StepSampler,
    StopTraining,
    TrainingTask,
    derive_seed,
    ema_update,
    fit,
    read_log,
)
from .presets import PRESETS, STAGES, AutoencoderSampling, StageConfig, stage_config
from .recipes import (
    fit_denoiser,
    train_autoencoder,
    train_diffusion,
    train_learned,
    train_point_diffusion,
    training_clouds,
)
from .release import add_metrics, release_weights
from .stages import PipelineResult, precompute_latents, run_pipeline, train_stage
from .tasks import AutoencoderTask, CloudSkeletonTask, DenoisingTask, SkeletonTask

__all__ = [
    "EngineConfig", "TrainingTask", "StepSampler", "DistContext", "FitResult", "StopTraining", "fit", "read_log",
    "derive_seed", "ema_update",
    "STAGES", "PRESETS", "StageConfig", "AutoencoderSampling", "stage_config",
    "train_stage", "precompute_latents", "run_pipeline", "PipelineResult",
    "train_autoencoder", "train_learned", "training_clouds", "fit_denoiser", "train_diffusion", "train_point_diffusion",
    "release_weights", "add_metrics",
    "SkeletonTask", "CloudSkeletonTask", "AutoencoderTask", "DenoisingTask",
]
