"""Training at scale: one engine for every stage, the CLI ``skellab train``, and ``torchrun`` entry.

Library::

    from skellab.train import train_stage, run_pipeline
    result = run_pipeline("medsdf-mini", "runs/r1", preset="default", device="auto")

Command line (same code)::

    skellab train autoencoder --data medsdf-mini --out runs/r1 --preset default [--resume]
    torchrun --nproc_per_node 4 -m skellab.train diffusion --data medsdf-mini --out runs/r1

See :mod:`skellab.train.engine` for what the engine guarantees (exact resume, DDP equivalence).
"""

from .engine import DistContext, EngineConfig, FitResult, StepSampler, TrainingTask, derive_seed, fit, read_log
from .stages import PRESETS, STAGES, PipelineResult, precompute_latents, run_pipeline, stage_config, train_stage
from .tasks import AutoencoderTask, DenoisingTask, SkeletonTask

__all__ = [
    "EngineConfig", "TrainingTask", "StepSampler", "DistContext", "FitResult", "fit", "read_log", "derive_seed",
    "STAGES", "PRESETS", "stage_config", "train_stage", "precompute_latents", "run_pipeline", "PipelineResult",
    "SkeletonTask", "AutoencoderTask", "DenoisingTask",
]
