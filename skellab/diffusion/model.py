"""The latent diffusion model as one object, and its checkpoints (format ``skellab.diffusion/1``).

A plain dict, ``torch.load(weights_only=True)``-safe::

    {"format": "skellab.diffusion/1", "config": asdict(DenoiserConfig), "state_dict": ...,
     "normalizer": {"mean": (D,), "std": (D,)}, "scheduler": scheduler.config,
     "classes": [...] | None, "num_tokens": K, "step": int, "metrics": {...}, "train": {...},
     "guide": {"config": ..., "state_dict": ..., "autoguidance": a, "info": {...}}}   # optional

``guide`` is a weaker denoiser of the same latents shipped with the model for autoguidance (Karras et al.
2024; :func:`~.sampling.guided_output`), with the weight ``a`` it was measured best at.

Training lives in :mod:`skellab.train` (``skellab train diffusion``, :func:`skellab.train.train_diffusion`).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from ..checkpoint import (
    build_with_weights,
    checkpoint_config,
    read_checkpoint,
    stored_weights,
    write_checkpoint,
)
from ..errors import SkellabError
from ..runtime import resolve_device
from ..schema import SIZE_RANGE, validate_config
from ..weights import weights_path
from .denoiser import DenoiserConfig, TokenDenoiser
from .inpainting import inpaint_latents
from .sampling import DEFAULT_GUIDANCE, LatentNormalizer, check_guide, sample_latents
from .schedulers import make_scheduler

__all__ = ["CHECKPOINT_FORMAT", "CONFIG_RANGES", "LatentDiffusion", "attach_guide", "diffusion_payload",
           "save_diffusion", "load_diffusion", "classes_present"]

CHECKPOINT_FORMAT = "skellab.diffusion/1"

#: sane ranges of the :class:`DenoiserConfig` fields, checked on load and on ``skellab train --set``
CONFIG_RANGES: dict[str, tuple[Any, Any]] = {
    **{name: SIZE_RANGE for name in ("token_dim", "width", "depth", "heads", "time_embed_dim")},
    "num_tokens": (0, 4096),
    "mlp_ratio": (1e-3, 64.0),
    "num_classes": (0, 65536),
    "sphere_frequencies": (0, 16),
}
MAX_AUTOGUIDANCE = 100.0  # a stored autoguidance weight beyond this is a typo or a hostile checkpoint


def _check_autoguidance(a: Any, maximum: float = math.inf) -> float:
    """An autoguidance weight: a finite number in [0, ``maximum``] → float; else :class:`SkellabError`."""
    if isinstance(a, bool) or not isinstance(a, (int, float)) or not (math.isfinite(a) and 0 <= a <= maximum):
        bound = "" if maximum == math.inf else f" and <= {maximum:g}"
        raise SkellabError(f"autoguidance must be a number >= 0{bound}, got {a!r}")
    return float(a)
MAX_TOKENS = 4096  # K sampled per organ: attention is O(K²), K = 4096 is already 16× the paper's 256


def classes_present(classes: list[str], class_index: torch.Tensor) -> list[str]:
    """The names of ``classes`` that at least one training latent has (``class_index``: (S,) indices), in order."""
    seen = set(class_index.tolist())
    return [c for i, c in enumerate(classes) if i in seen]


@dataclass(frozen=True)
class _Entries:
    """The checkpoint entries besides config, weights, normalizer and scheduler, as they must be typed."""

    classes: tuple[str, ...] | None = None
    trained_classes: tuple[str, ...] | None = None
    num_tokens: int = field(default=256, metadata={"range": (1, MAX_TOKENS)})
    step: int = 0
    metrics: dict | None = None
    train: dict | None = None
    scheduler: dict = field(default_factory=dict)
    normalizer: dict = field(default_factory=dict)


@dataclass
class LatentDiffusion:
    """Everything needed to sample latents: network, scheduler, normalizer, class names.

    denoiser   : :class:`TokenDenoiser` (eval mode) working on standardised tokens
    scheduler  : the scheduler it was trained with (a DDPM-trained one may be swapped for DDIM)
    normalizer : maps standardised tokens back to latent units
    classes    : class names, ``classes[i]`` ↔ class index i (None: unnamed / unconditional)
    num_tokens : K of the training latents (the default number of tokens to sample)
    info       : ``step``, ``metrics``, ``train`` from training or the checkpoint
    guide      : a weaker denoiser of the same latents for autoguidance (None: none; :func:`attach_guide`)
    autoguidance : the autoguidance weight used when a sampler is not given one (1: off)
    guide_info : what the guide is (its step, parameters, source)
    trained_classes : the classes that had training latents (None: all of ``classes``). A class the
                 autoencoder knows but the denoiser never saw has an untrained embedding: it is refused.
    """

    denoiser: TokenDenoiser
    scheduler: Any
    normalizer: LatentNormalizer
    classes: list[str] | None = None
    num_tokens: int = 256
    info: dict[str, Any] = field(default_factory=dict)
    guide: TokenDenoiser | None = None
    autoguidance: float = 1.0
    guide_info: dict[str, Any] = field(default_factory=dict)
    trained_classes: list[str] | None = None

    @property
    def organs(self) -> list[str]:
        """The class names this model can generate: those it had training latents of."""
        return list(self.trained_classes if self.trained_classes is not None else (self.classes or []))

    def guiding(self, autoguidance: float | None = None) -> tuple[TokenDenoiser | None, float]:
        """(guide network, autoguidance weight) for a sampler: ``autoguidance`` None → this model's own weight;
        (None, 1.0) when the model has no guide or the weight is 1. A weight without a guide → SkellabError."""
        a = _check_autoguidance(self.autoguidance if autoguidance is None else autoguidance)
        if a == 1:
            return None, 1.0
        if self.guide is None:
            raise SkellabError("this diffusion model has no guide network, so autoguidance must be 1 (off)")
        return self.guide, a

    def class_id(self, name_or_index: str | int) -> int:
        """Class index of a class name (or an index, checked)."""
        n = self.denoiser.config.num_classes
        if isinstance(name_or_index, str):
            if not self.classes or name_or_index not in self.classes:
                raise SkellabError(f"unknown class {name_or_index!r}; known: {', '.join(self.classes or [])}")
            if name_or_index not in self.organs:
                raise SkellabError(f"class {name_or_index!r} had no training shapes in this diffusion model; "
                                   f"it can generate: {', '.join(self.organs)}")
            return self.classes.index(name_or_index)
        if not 0 <= int(name_or_index) < n:
            raise SkellabError(f"class index {name_or_index} out of range [0, {n})")
        return int(name_or_index)

    def _class_arg(self, class_index: int | str | torch.Tensor | None) -> int | torch.Tensor | None:
        """A sampler's class argument: a name or a single index checked by :meth:`class_id`; tensors and None as given."""
        if isinstance(class_index, (str, int)) and not isinstance(class_index, bool):
            return self.class_id(class_index)
        return class_index

    def sample(self, num: int, *, class_index: int | str | torch.Tensor | None = None, guidance: float = DEFAULT_GUIDANCE,
               steps: int | None = None, generator: torch.Generator | None = None, num_tokens: int | None = None,
               return_trajectory: bool = False, autoguidance: float | None = None, precision: str = "auto"):
        """:func:`sample_latents` in latent units: tokens (num, K, D) (+ trajectory of x̂₀, latent units).
        ``autoguidance`` None: this model's own weight with its guide network (:meth:`guiding`); ``precision``
        as :func:`sample_latents`."""
        class_index = self._class_arg(class_index)
        guide, a = self.guiding(autoguidance)
        return sample_latents(self.denoiser, self.scheduler, num=num, num_tokens=num_tokens or self.num_tokens,
                              class_index=class_index, guidance=guidance, steps=steps, generator=generator,
                              normalizer=self.normalizer, return_trajectory=return_trajectory, guide=guide,
                              autoguidance=a, precision=precision)

    def vary(self, tokens: torch.Tensor, start_sigma: float, *, class_index: int | str | torch.Tensor | None = None,
             guidance: float = DEFAULT_GUIDANCE, steps: int | None = None, generator: torch.Generator | None = None,
             autoguidance: float | None = None, precision: str = "auto") -> torch.Tensor:
        """Variations of given organs (SDEdit): ``tokens`` (num, K, D) in latent units, noised to ``start_sigma``
        (standardised units; EDM) and denoised by this model (:func:`sample_latents` with ``init``)."""
        class_index = self._class_arg(class_index)
        tokens = torch.as_tensor(tokens, dtype=torch.float32)
        if tokens.ndim != 3:
            raise SkellabError(f"tokens must be (num, K, D) token sets, got shape {tuple(tokens.shape)}")
        guide, a = self.guiding(autoguidance)
        return sample_latents(self.denoiser, self.scheduler, num=tokens.shape[0], num_tokens=tokens.shape[1],
                              class_index=class_index, guidance=guidance, steps=steps, generator=generator,
                              normalizer=self.normalizer, guide=guide, autoguidance=a, precision=precision,
                              init=tokens, start_sigma=start_sigma)

    def complete(self, known: torch.Tensor, mask: torch.Tensor, num: int, *,
                 class_index: int | str | torch.Tensor | None = None, guidance: float = DEFAULT_GUIDANCE, steps: int | None = None,
                 resample: int = 4, generator: torch.Generator | None = None,
                 autoguidance: float | None = None, precision: str = "auto") -> torch.Tensor:
        """:func:`inpaint_latents` in latent units: ``num`` token sets (num, K, D) keeping ``known[mask]``."""
        class_index = self._class_arg(class_index)
        guide, a = self.guiding(autoguidance)
        return inpaint_latents(self.denoiser, self.scheduler, known, mask, num=num, class_index=class_index,
                               guidance=guidance, steps=steps, resample=resample, generator=generator,
                               normalizer=self.normalizer, guide=guide, autoguidance=a, precision=precision)


# ---------------------------------------------------------------------- checkpoints
def diffusion_payload(diffusion: LatentDiffusion, *, step: int | None = None,
                      metrics: dict[str, Any] | None = None, storage: str = "fp32") -> dict[str, Any]:
    """The ``skellab.diffusion/1`` checkpoint dict (config, normalizer, scheduler, classes embedded); ``storage``
    ``"bf16"`` rounds the networks' weights to bfloat16 (half the bytes, :func:`skellab.checkpoint.stored_weights`)."""
    info = diffusion.info or {}
    return {
        "format": CHECKPOINT_FORMAT,
        "config": diffusion.denoiser.config.to_dict(),
        "state_dict": stored_weights(diffusion.denoiser.state_dict(), storage),
        "normalizer": diffusion.normalizer.to_dict(),
        "scheduler": dict(diffusion.scheduler.config),
        "classes": list(diffusion.classes) if diffusion.classes else None,
        **({"trained_classes": list(diffusion.trained_classes)} if diffusion.trained_classes is not None else {}),
        "num_tokens": int(diffusion.num_tokens),
        "step": int(step if step is not None else info.get("step", 0)),
        "metrics": dict(metrics if metrics is not None else info.get("metrics", {})),
        "train": info.get("train"),
        **({"guide": {"config": diffusion.guide.config.to_dict(),
                      "state_dict": stored_weights(diffusion.guide.state_dict(), storage),
                      "autoguidance": float(diffusion.autoguidance), "info": dict(diffusion.guide_info)}}
           if diffusion.guide is not None else {}),
    }


def attach_guide(diffusion: LatentDiffusion, guide: LatentDiffusion, autoguidance: float,
                 info: dict[str, Any] | None = None) -> LatentDiffusion:
    """``diffusion`` with ``guide``'s network as its autoguidance guide and ``autoguidance`` as its default weight.

    The guide must be a denoiser of the same latents: same classes, token size and order, scheduler
    parameterisation and (to 1e-2 of a standard deviation) latent normalisation; else :class:`SkellabError`.
    """
    check_guide(diffusion.denoiser, guide.denoiser)
    if list(guide.classes or []) != list(diffusion.classes or []):
        raise SkellabError("the guide was trained on other classes")
    keys = ("name", "sigma_data", "prediction_type")
    if {k: guide.scheduler.config.get(k) for k in keys} != {k: diffusion.scheduler.config.get(k) for k in keys}:
        raise SkellabError("the guide was trained with another scheduler parameterisation")
    a, b = diffusion.normalizer, guide.normalizer
    if float(((a.mean - b.mean).abs() / a.std).max()) > 1e-2 or float(((a.std - b.std).abs() / a.std).max()) > 1e-2:
        raise SkellabError("the guide's latent normalisation differs: it was not trained on the same latents")
    weight = _check_autoguidance(autoguidance, MAX_AUTOGUIDANCE)
    params = sum(p.numel() for p in guide.denoiser.parameters())
    return replace(diffusion, guide=guide.denoiser.eval(), autoguidance=weight,
                   guide_info={"step": guide.info.get("step"), "parameters": params,
                               "config": guide.denoiser.config.to_dict(), **(info or {})})


def save_diffusion(path: str | os.PathLike, diffusion: LatentDiffusion, *, step: int | None = None,
                   metrics: dict[str, Any] | None = None, storage: str = "fp32") -> Path:
    """Write a ``skellab.diffusion/1`` checkpoint atomically (config, normalizer, scheduler embedded; ``storage``
    as :func:`diffusion_payload`)."""
    write_checkpoint(path, diffusion_payload(diffusion, step=step, metrics=metrics, storage=storage))
    return Path(path)


def load_diffusion(path: str | os.PathLike | None = None, *, device: str | torch.device = "cpu") -> LatentDiffusion:
    """Rebuild a :class:`LatentDiffusion` from its checkpoint alone (default: the shipped ``weights_path("diffusion")``).

    A missing or corrupt file, another format, or weights that do not fit the stored
    config → :class:`SkellabError`.
    """
    p = Path(path) if path is not None else weights_path("diffusion")
    ckpt = read_checkpoint(p, format=CHECKPOINT_FORMAT, kind="diffusion")
    cfg = checkpoint_config(ckpt, DenoiserConfig, path=p, ranges=CONFIG_RANGES)
    entries = validate_config(_Entries, {k: ckpt[k] for k in ("classes", "trained_classes", "num_tokens", "step",
                                                              "metrics", "train", "scheduler", "normalizer")
                                         if k in ckpt},
                              where=str(p), require_all=False)
    for key in ("scheduler", "normalizer"):
        if key not in ckpt:
            raise SkellabError(f"{p}: checkpoint has no {key!r} entry")
    try:
        normalizer = LatentNormalizer.from_dict(entries.normalizer)
        sched = make_scheduler(**entries.scheduler)
    except SkellabError as exc:
        raise SkellabError(f"{p}: {exc}") from exc
    except (KeyError, TypeError, ValueError, OverflowError) as exc:
        raise SkellabError(f"{p}: checkpoint normalizer or scheduler is malformed ({exc})") from exc
    if normalizer.mean.shape[0] != cfg.token_dim:
        raise SkellabError(f"{p}: the normalizer has {normalizer.mean.shape[0]} channels, the config's "
                           f"token_dim is {cfg.token_dim}")
    classes = list(entries.classes) if entries.classes else None
    trained = list(entries.trained_classes) if entries.trained_classes is not None else None
    if trained is not None and not set(trained) <= set(classes or []):
        raise SkellabError(f"{p}: trained_classes names classes the checkpoint does not have")
    model = build_with_weights(lambda: TokenDenoiser(config=cfg), ckpt.get("state_dict"), path=p)
    info = {"step": entries.step, "metrics": entries.metrics, "train": entries.train}
    dev = resolve_device(device)
    guide, autoguidance, guide_info = None, 1.0, {}
    if ckpt.get("guide") is not None:
        g = ckpt["guide"]
        if not isinstance(g, dict):
            raise SkellabError(f"{p}: checkpoint 'guide' entry is malformed")
        gcfg = checkpoint_config(g, DenoiserConfig, path=f"{p}: guide", ranges=CONFIG_RANGES)
        guide = build_with_weights(lambda: TokenDenoiser(config=gcfg), g.get("state_dict"), path=f"{p}: guide")
        guide_info = g.get("info") if isinstance(g.get("info"), dict) else {}
        try:
            autoguidance = _check_autoguidance(g.get("autoguidance"), MAX_AUTOGUIDANCE)
            check_guide(model, guide)
        except SkellabError as exc:
            raise SkellabError(f"{p}: {exc}") from exc
        guide = guide.to(dev).eval()
    return LatentDiffusion(model.to(dev).eval(), sched, normalizer, classes, int(entries.num_tokens), info,
                           guide, autoguidance, guide_info, trained)
