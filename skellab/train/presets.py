"""Every stage's presets in one place: the model config, what each step samples, and the engine.

``stage_config(stage, preset, **overrides)`` is the only source of the recipes: the CLI, the
library functions (:func:`train_autoencoder`, :func:`train_learned`, :func:`train_diffusion`),
notebook 07 and the shipped weights' recipe (``default``) all read them from here. An override
may name a field of the model config, of the stage's sampling config, or of
:class:`~skellab.train.engine.EngineConfig`; anything else is refused.
"""

from __future__ import annotations

import typing
from dataclasses import dataclass, fields
from typing import Any

from ..autoencoder.io import CONFIG_RANGES as AUTOENCODER_RANGES
from ..autoencoder.model import AutoencoderConfig
from ..diffusion.denoiser import DenoiserConfig
from ..diffusion.model import CONFIG_RANGES as DENOISER_RANGES
from ..errors import SkellabError
from ..schema import SIZE_RANGE, apply_overrides, parse_value
from ..skeleton.learned import CONFIG_RANGES as SKELETON_RANGES
from ..skeleton.learned import LearnedSkeletonConfig
from .engine import EngineConfig

__all__ = ["STAGES", "PRESETS", "AutoencoderSampling", "StageConfig", "stage_config"]

STAGES = ("skeleton", "autoencoder", "diffusion")
PRESETS = ("tiny", "default")


@dataclass(frozen=True)
class AutoencoderSampling:
    """What one autoencoder training sample draws from a stored shape (besides ``num_surface`` points)."""

    num_queries: int = 2048  # SDF queries per shape per step
    near_fraction: float = 0.9  # fraction of queries from the near-surface band (paper 0.9)

    def __post_init__(self) -> None:
        if int(self.num_queries) < 1 or not 0.0 <= float(self.near_fraction) <= 1.0:
            raise SkellabError("AutoencoderSampling: num_queries must be >= 1 and near_fraction in [0, 1]")


@dataclass(frozen=True)
class StageConfig:
    """One stage's full recipe: ``model`` config, ``engine`` (optimisation) and, for the autoencoder, ``sampling``."""

    model: Any
    engine: EngineConfig
    sampling: AutoencoderSampling | None = None


#: sane ranges of the overridable fields (besides each type's defaults: ints >= 0, floats finite)
RANGES: dict[type, dict[str, tuple[Any, Any]]] = {
    AutoencoderConfig: AUTOENCODER_RANGES,
    DenoiserConfig: DENOISER_RANGES,
    LearnedSkeletonConfig: SKELETON_RANGES,
    EngineConfig: {"steps": (1, 10**9), "batch_size": SIZE_RANGE, "lr": (0.0, 10.0), "weight_decay": (0.0, None),
                   "grad_clip": (0.0, None), "seed": (0, 2**32 - 1)},
    AutoencoderSampling: {"num_queries": (1, 1 << 20)},
}


def _presets(stage: str, preset: str) -> StageConfig:
    if stage == "skeleton":
        if preset == "tiny":  # k matches the tiny autoencoder's 64 tokens
            return StageConfig(LearnedSkeletonConfig(k=64, num_points=256, width=16, knn=8),
                               EngineConfig(steps=30, batch_size=2, lr=2e-3, schedule="cosine", lr_final_fraction=0.05,
                                            val_every=15, checkpoint_every=10))
        return StageConfig(LearnedSkeletonConfig(k=256, num_points=2048, width=32, knn=12),
                           EngineConfig(steps=600, batch_size=2, lr=1e-3, schedule="cosine", lr_final_fraction=0.05,
                                        val_every=100, checkpoint_every=50))
    if stage == "autoencoder":
        if preset == "tiny":
            return StageConfig(
                AutoencoderConfig(num_tokens=64, num_surface=512, encoder_width=32, encoder_blocks=1, group_k=16,
                                  num_frequencies=4, decoder_width=32, decoder_heads=2, decoder_blocks=1),
                EngineConfig(steps=50, batch_size=2, lr=2e-3, warmup=5, val_every=25, checkpoint_every=10),
                AutoencoderSampling(num_queries=512))
        return StageConfig(AutoencoderConfig(encoder_blocks=2, decoder_blocks=2),
                           EngineConfig(steps=1200, batch_size=4, lr=5e-4, warmup=50, val_every=100,
                                        checkpoint_every=100),
                           AutoencoderSampling())
    if preset == "tiny":  # token_dim / num_classes are set from the autoencoder's latents
        return StageConfig(DenoiserConfig.tiny(),
                           EngineConfig(steps=60, batch_size=8, lr=2e-3, warmup=5, schedule="cosine",
                                        lr_final_fraction=0.1, ema_decay=0.99, val_every=30, checkpoint_every=20))
    return StageConfig(DenoiserConfig.tiny(),
                       EngineConfig(steps=4000, batch_size=32, lr=1e-3, warmup=100, schedule="cosine",
                                    lr_final_fraction=0.1, ema_decay=0.999, val_every=250, checkpoint_every=250))


def stage_config(stage: str, preset: str = "tiny", **overrides: Any) -> StageConfig:
    """The :class:`StageConfig` of a stage preset; ``overrides`` may name fields of any of its parts.

    A value given as text (``skellab train --set key=value``) is parsed to the field's type; every
    value is then checked for its type and a sane range (:func:`skellab.schema.apply_overrides`).
    Unknown stage, preset or field, or a bad value → one-line :class:`SkellabError` naming the field.
    """
    if stage not in STAGES:
        raise SkellabError(f"unknown stage {stage!r}: use {', '.join(STAGES)}")
    if preset not in PRESETS:
        raise SkellabError(f"unknown preset {preset!r}: use {' or '.join(PRESETS)}")
    cfg = _presets(stage, preset)
    parts = {"engine": cfg.engine, "model": cfg.model, "sampling": cfg.sampling}
    changes: dict[str, dict[str, Any]] = {name: {} for name in parts}
    for key, value in overrides.items():
        owner = next((name for name, part in parts.items()
                      if part is not None and key in {f.name for f in fields(part)}), None)
        if owner is None:
            raise SkellabError(f"unknown {stage} config field(s): {key}")
        changes[owner][key] = value
    done = {}
    for name, part in parts.items():
        if part is None or not changes[name]:
            done[name] = part
            continue
        hints = typing.get_type_hints(type(part))
        typed = {key: parse_value(value, hints.get(key, Any), f"{stage} config {key}") if isinstance(value, str)
                 else value for key, value in changes[name].items()}  # text (``--set key=value``) → the field's type
        done[name] = apply_overrides(part, typed, where=f"{stage} config", ranges=RANGES.get(type(part)))
    return StageConfig(done["model"], done["engine"], done["sampling"])
