"""The latent diffusion model as one object, and its checkpoints (format ``skellab.diffusion/1``).

A plain dict, ``torch.load(weights_only=True)``-safe::

    {"format": "skellab.diffusion/1", "config": asdict(DenoiserConfig), "state_dict": ...,
     "normalizer": {"mean": (D,), "std": (D,)}, "scheduler": scheduler.config,
     "classes": [...] | None, "num_tokens": K, "step": int, "metrics": {...}, "train": {...},
     "guide": {"config": ..., "state_dict": ..., "autoguidance": a, "info": {...},
               "interval": [lo, hi], "class_weights": {name: a}}}   # optional; interval, class_weights optional

``guide`` is a weaker denoiser of the same latents shipped with the model for autoguidance (Karras et al.
2024; :func:`~.sampling.guided_output`), with the weight ``a`` it was measured best at and, optionally, the noise
levels ``lo < σ ≤ hi`` it is applied at (Kynkäänniemi et al. 2024; elsewhere the plain model runs alone), and,
optionally, per-class weights that replace ``a`` for those classes (:attr:`LatentDiffusion.class_autoguidance`).

A **two-stage** model (GEM3D's order: the skeleton first, then what the surface around it looks like) stores its
sphere stage (``config.channels == "spheres"``, 4 channels) as the main network, and its feature stage
(``"features"``, the other channels, reading the clean spheres of every token as context) under
``"features": {"config": ..., "state_dict": ..., "info": {...}, "steps": n}`` (``steps``, optional: the sampler
steps the feature stage takes whatever the sphere stage's, :attr:`LatentDiffusion.feature_steps`); the normalizer
covers whole tokens. Each stage is
trained on its own (``skellab train diffusion --set channels=spheres`` / ``=features``) and the two are joined with
:func:`join_stages`. The guide, if any, guides the sphere stage.

Training lives in :mod:`skellab.train` (``skellab train diffusion``, :func:`skellab.train.train_diffusion`).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

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
from .denoiser import SPHERE_CHANNELS, DenoiserConfig, TokenDenoiser, generated_channels
from .inpainting import check_known, inpaint_latents
from .sampling import DEFAULT_GUIDANCE, LatentNormalizer, check_guide, check_guide_interval, sample_latents
from .schedulers import make_scheduler

__all__ = ["CHECKPOINT_FORMAT", "CONFIG_RANGES", "LatentDiffusion", "attach_guide", "with_class_autoguidance",
           "diffusion_payload",
           "save_diffusion", "load_diffusion", "classes_present", "join_stages"]

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


MAX_STEPS = 10000  # sampler steps beyond this are a typo or a hostile checkpoint


def _check_steps(n: Any, name: str) -> int:
    """A number of sampler steps: an integer in [1, MAX_STEPS] → int; else :class:`SkellabError`."""
    if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= MAX_STEPS:
        raise SkellabError(f"{name} must be an integer in [1, {MAX_STEPS}], got {n!r}")
    return int(n)


def _check_autoguidance(a: Any, maximum: float = math.inf) -> float:
    """An autoguidance weight: a finite number in [0, ``maximum``] → float; else :class:`SkellabError`."""
    if isinstance(a, bool) or not isinstance(a, (int, float)) or not (math.isfinite(a) and 0 <= a <= maximum):
        bound = "" if maximum == math.inf else f" and <= {maximum:g}"
        raise SkellabError(f"autoguidance must be a number >= 0{bound}, got {a!r}")
    return float(a)


def _check_class_autoguidance(weights: Any, classes: list[str] | None) -> dict[str, float]:
    """Per-class autoguidance weights: a dict of known class names → weights in [0, MAX_AUTOGUIDANCE]; else
    :class:`SkellabError` naming the problem. None → {}."""
    if weights is None:
        return {}
    if not isinstance(weights, dict):
        raise SkellabError(f"class autoguidance must map class names to weights, got {type(weights).__name__}")
    out = {}
    for name, a in weights.items():
        if not isinstance(name, str) or name not in (classes or []):
            raise SkellabError(f"class autoguidance names an unknown class {name!r}; known: {', '.join(classes or [])}")
        try:
            out[name] = _check_autoguidance(a, MAX_AUTOGUIDANCE)
        except SkellabError as exc:
            raise SkellabError(f"class autoguidance of {name!r}: {exc}") from exc
    return out


MAX_TOKENS = 4096  # K sampled per organ: attention is O(K²), K = 4096 is already 16× the paper's 256


class _GivenSpheres(nn.Module):
    """The feature stage of a two-stage model with its context bound: ``(x, cond, class_index) → out`` like any
    denoiser the samplers take. ``spheres`` (num, K, 4), standardised; a batch of n·num (classifier-free guidance
    doubles it) reads them n times over."""

    def __init__(self, features: TokenDenoiser, spheres: torch.Tensor):
        super().__init__()
        self.net = features
        self.spheres = spheres.to(next(features.parameters()).device, torch.float32)

    @property
    def config(self) -> DenoiserConfig:
        return self.net.config

    def forward(self, x: torch.Tensor, cond: torch.Tensor, class_index: torch.Tensor | None = None,
                self_cond: torch.Tensor | None = None) -> torch.Tensor:
        reps = x.shape[0] // self.spheres.shape[0]
        return self.net(x, cond, class_index, context=self.spheres.repeat(reps, 1, 1), self_cond=self_cond)


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
    guide_interval : (lo, hi): the guide applies only where lo < σ ≤ hi (:func:`~.sampling.sample_latents`); None:
                 at every step
    class_autoguidance : {class name: weight}: the autoguidance weight of those classes when a sampler is not given
                 one (the others use ``autoguidance``); :func:`with_class_autoguidance`
    trained_classes : the classes that had training latents (None: all of ``classes``). A class the
                 autoencoder knows but the denoiser never saw has an untrained embedding: it is refused.
    features   : a two-stage model's feature stage (``denoiser`` is then its sphere stage); None: a joint model
    features_info : what the feature stage is (its step, metrics, training)
    feature_steps : the sampler steps of a two-stage model's feature stage (None: as many as the sphere stage's).
                 The features given a skeleton are a far easier distribution than the skeleton, so they can be
                 drawn in fewer steps; a sampler's own ``feature_steps`` argument overrides this.
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
    features: TokenDenoiser | None = None
    features_info: dict[str, Any] = field(default_factory=dict)
    feature_steps: int | None = None
    guide_interval: tuple[float, float] | None = None
    class_autoguidance: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.feature_steps is not None:
            self.feature_steps = _check_steps(self.feature_steps, "feature_steps")
        self.guide_interval = check_guide_interval(self.guide_interval)
        self.class_autoguidance = _check_class_autoguidance(self.class_autoguidance, self.classes)
        if self.guide is None and any(a != 1 for a in self.class_autoguidance.values()):
            raise SkellabError("class autoguidance weights other than 1 need a guide network")

    def _interval(self, guide_interval: Any) -> tuple[float, float] | None:
        """The guidance interval of one call: its own (``"model"``: this model's :attr:`guide_interval`)."""
        return self.guide_interval if isinstance(guide_interval, str) and guide_interval == "model" \
            else check_guide_interval(guide_interval)

    def _feature_steps(self, steps: int | None, feature_steps: int | None) -> int | None:
        """The feature stage's sampler steps: the call's ``feature_steps``, else the model's own, else ``steps``."""
        if feature_steps is not None:
            return _check_steps(feature_steps, "feature_steps")
        return self.feature_steps if self.feature_steps is not None else steps

    @property
    def two_stage(self) -> bool:
        """True when spheres are sampled first and the features then given them (:func:`join_stages`)."""
        return self.features is not None

    @property
    def token_dim(self) -> int:
        """D, the numbers per token this model samples (both stages together for a two-stage model)."""
        return int(self.normalizer.mean.shape[0])

    def feature_network(self, spheres: torch.Tensor) -> nn.Module:
        """A two-stage model's feature stage with ``spheres`` (num, K, 4; standardised) bound as its context: a network
        ``(x, cond, class_index) → out`` like any denoiser :func:`sample_latents` or :func:`guided_output` take (a
        batch of n·num reads the spheres n times over). What :meth:`sample` runs after the sphere stage."""
        if self.features is None:
            raise SkellabError("only a two-stage model has a feature stage (join_stages)")
        spheres = torch.as_tensor(spheres, dtype=torch.float32)
        if spheres.ndim != 3 or spheres.shape[-1] != SPHERE_CHANNELS:
            raise SkellabError(f"spheres must be (num, K, {SPHERE_CHANNELS}), got {tuple(spheres.shape)}")
        return _GivenSpheres(self.features, spheres)

    def _whole(self) -> None:
        """A lone stage of a two-stage model cannot sample organs: :class:`SkellabError` naming the fix."""
        channels = self.denoiser.config.channels
        if channels != "all" and not (channels == "spheres" and self.features is not None):
            raise SkellabError(f"this checkpoint holds one stage of a two-stage model (channels {channels!r}); "
                               "join its sphere and feature stages with skellab.diffusion.join_stages")

    @property
    def organs(self) -> list[str]:
        """The class names this model can generate: those it had training latents of."""
        return list(self.trained_classes if self.trained_classes is not None else (self.classes or []))

    def default_autoguidance(self, class_index: int | str | torch.Tensor | None = None) -> float:
        """The autoguidance weight a sampler of ``class_index`` uses when it is not given one: the class's own
        (:attr:`class_autoguidance`), else :attr:`autoguidance`. A batch of several classes whose weights differ →
        :class:`SkellabError` (sample them one class at a time, or pass a weight)."""
        if not self.class_autoguidance or class_index is None:
            return self.autoguidance
        if isinstance(class_index, torch.Tensor):
            ids = sorted({int(i) for i in class_index.reshape(-1).tolist()})
        else:
            ids = [self.class_id(class_index)]
        names = [self.classes[i] if self.classes and 0 <= i < len(self.classes) else None for i in ids]
        weights = {self.class_autoguidance.get(n, self.autoguidance) if n is not None else self.autoguidance
                   for n in names}
        if len(weights) > 1:
            raise SkellabError(f"classes {', '.join(str(n) for n in names)} have different autoguidance weights "
                               "(class_autoguidance): sample one class at a time or pass autoguidance=")
        return weights.pop()

    def guiding(self, autoguidance: float | None = None,
                class_index: int | str | torch.Tensor | None = None) -> tuple[TokenDenoiser | None, float]:
        """(guide network, autoguidance weight) for a sampler: ``autoguidance`` None → the weight of
        ``class_index`` (:meth:`default_autoguidance`: its own, else this model's); (None, 1.0) when the model has no
        guide or the weight is 1. A weight without a guide → SkellabError."""
        a = _check_autoguidance(self.default_autoguidance(class_index) if autoguidance is None else autoguidance)
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
               return_trajectory: bool = False, autoguidance: float | None = None, precision: str = "auto",
               scheduler: Any | None = None, feature_steps: int | None = None,
               guide_interval: tuple[float, float] | None | str = "model"):
        """:func:`sample_latents` in latent units: tokens (num, K, D) (+ trajectory of x̂₀, latent units).
        ``autoguidance`` None: this model's own weight with its guide network (:meth:`guiding`); ``precision``
        as :func:`sample_latents`; ``scheduler`` replaces this model's own for this call (e.g. DDIM for a
        DDPM-trained model); ``guide_interval``: the noise levels the guide applies at (``"model"``: this model's
        :attr:`guide_interval`; None: every step). A two-stage model samples the spheres, then the features given them (one
        generator, in that order; the features in ``feature_steps`` steps, :attr:`feature_steps`); its trajectory
        shows the sphere stage's frames, then the feature stage's."""
        self._whole()
        class_index = self._class_arg(class_index)
        guide, a = self.guiding(autoguidance, class_index)
        interval = self._interval(guide_interval)
        sched = scheduler if scheduler is not None else self.scheduler
        kw = dict(num=num, num_tokens=num_tokens or self.num_tokens, class_index=class_index, guidance=guidance,
                  steps=steps, generator=generator, return_trajectory=return_trajectory, precision=precision)
        if not self.two_stage:
            return sample_latents(self.denoiser, sched, normalizer=self.normalizer, guide=guide, autoguidance=a,
                                  guide_interval=interval, **kw)
        frames: list[torch.Tensor] = []

        def run(net, g, ga, n):
            out = sample_latents(net, sched, guide=g, autoguidance=ga, guide_interval=interval, **{**kw, "steps": n})
            if return_trajectory:
                out, traj = out
                frames.append(traj)
            return out

        sph = run(self.denoiser, guide, a, steps)  # the skeleton, then the features given it
        feat = run(self.feature_network(sph), None, 1.0, self._feature_steps(steps, feature_steps))
        tokens = self.normalizer.denormalize(torch.cat([sph, feat], dim=-1))
        if not return_trajectory:
            return tokens
        # the skeleton forms first (features at their mean meanwhile), then the features around the final spheres
        zeros = torch.zeros(*sph.shape[:-1], feat.shape[-1])
        traj = [self.normalizer.denormalize(torch.cat([f, zeros], -1)) for f in frames[0]] + \
               [self.normalizer.denormalize(torch.cat([sph, f], -1)) for f in frames[1]]
        return tokens, traj

    def vary(self, tokens: torch.Tensor, start_sigma: float, *, class_index: int | str | torch.Tensor | None = None,
             guidance: float = DEFAULT_GUIDANCE, steps: int | None = None, generator: torch.Generator | None = None,
             autoguidance: float | None = None, precision: str = "auto",
             feature_steps: int | None = None, guide_interval: tuple[float, float] | None | str = "model") -> torch.Tensor:
        """Variations of given organs (SDEdit): ``tokens`` (num, K, D) in latent units, noised to ``start_sigma``
        (standardised units; EDM) and denoised by this model (:func:`sample_latents` with ``init``); a two-stage
        model varies the spheres, then the features given the varied spheres (``feature_steps`` as :meth:`sample`)."""
        class_index = self._class_arg(class_index)
        tokens = torch.as_tensor(tokens, dtype=torch.float32)
        if tokens.ndim != 3:
            raise SkellabError(f"tokens must be (num, K, D) token sets, got shape {tuple(tokens.shape)}")
        self._whole()
        guide, a = self.guiding(autoguidance, class_index)
        interval = self._interval(guide_interval)
        kw = dict(num=tokens.shape[0], num_tokens=tokens.shape[1], class_index=class_index, guidance=guidance,
                  steps=steps, generator=generator, precision=precision, start_sigma=start_sigma)
        if not self.two_stage:
            return sample_latents(self.denoiser, self.scheduler, normalizer=self.normalizer, guide=guide,
                                  autoguidance=a, guide_interval=interval, init=tokens, **kw)
        z = self.normalizer.normalize(tokens)
        sph = sample_latents(self.denoiser, self.scheduler, guide=guide, autoguidance=a, guide_interval=interval,
                             init=z[..., :SPHERE_CHANNELS], **kw)
        feat = sample_latents(self.feature_network(sph), self.scheduler, init=z[..., SPHERE_CHANNELS:],
                              **{**kw, "steps": self._feature_steps(steps, feature_steps)})
        return self.normalizer.denormalize(torch.cat([sph, feat], dim=-1))

    def complete(self, known: torch.Tensor, mask: torch.Tensor, num: int, *,
                 class_index: int | str | torch.Tensor | None = None, guidance: float = DEFAULT_GUIDANCE, steps: int | None = None,
                 resample: int = 4, generator: torch.Generator | None = None,
                 autoguidance: float | None = None, precision: str = "auto", scheduler: Any | None = None,
                 feature_steps: int | None = None,
                 guide_interval: tuple[float, float] | None | str = "model") -> torch.Tensor:
        """:func:`inpaint_latents` in latent units: ``num`` token sets (num, K, D) keeping ``known[mask]``
        (``scheduler``: as :meth:`sample`, EDM). A two-stage model completes the spheres (RePaint), then the features
        given them (in ``feature_steps`` steps, as :meth:`sample`); a stage with everything kept is not sampled, one
        with nothing kept is sampled plainly."""
        self._whole()
        class_index = self._class_arg(class_index)
        guide, a = self.guiding(autoguidance, class_index)
        sched = scheduler if scheduler is not None else self.scheduler
        kw = dict(num=num, class_index=class_index, guidance=guidance, steps=steps, generator=generator,
                  precision=precision, guide_interval=self._interval(guide_interval))
        if not self.two_stage:
            return inpaint_latents(self.denoiser, sched, known, mask, resample=resample, normalizer=self.normalizer,
                                   guide=guide, autoguidance=a, **kw)
        D = self.token_dim
        known, mask = check_known(known, mask, D)
        z_known = self.normalizer.normalize(torch.where(mask, known, self.normalizer.mean))
        K = known.shape[0]

        def stage(net, g, ga, z_part, m, n):
            kn = {**kw, "steps": n}
            if bool(m.all()):  # everything of this stage is given (e.g. an edited skeleton): nothing to draw
                return z_part.expand(num, *z_part.shape).clone()
            if not bool(m.any()):  # nothing given: plain sampling (RePaint's jumps would only cost time)
                return sample_latents(net, sched, num_tokens=K, guide=g, autoguidance=ga, **kn)
            return inpaint_latents(net, sched, z_part, m, resample=resample, guide=g, autoguidance=ga, **kn)

        sph = stage(self.denoiser, guide, a, z_known[:, :SPHERE_CHANNELS], mask[:, :SPHERE_CHANNELS], steps)
        feat = stage(self.feature_network(sph), None, 1.0, z_known[:, SPHERE_CHANNELS:], mask[:, SPHERE_CHANNELS:],
                     self._feature_steps(steps, feature_steps))
        out = self.normalizer.denormalize(torch.cat([sph, feat], dim=-1))
        return torch.where(mask.expand(num, K, D), known.expand(num, K, D), out)  # kept entries exactly

    def finish_skeleton(self, spheres: torch.Tensor, num: int, *, class_index: int | str | torch.Tensor | None = None,
                        guidance: float = DEFAULT_GUIDANCE, steps: int | None = None, resample: int = 4,
                        generator: torch.Generator | None = None, autoguidance: float | None = None,
                        precision: str = "auto", feature_steps: int | None = None,
                        guide_interval: tuple[float, float] | None | str = "model") -> torch.Tensor:
        """``num`` organs' tokens (num, K, D) for one given skeleton ``spheres`` (K, 4) (xyz, r; latent units, e.g.
        an edited one): the spheres are kept exactly and diffusion draws the features around them. A two-stage
        model runs its feature stage given the spheres (one plain sampling pass of ``feature_steps`` steps, as
        :meth:`sample`); a joint model completes the feature channels by inpainting (RePaint, ``resample`` jumps per
        step, ``steps`` steps)."""
        spheres = torch.as_tensor(spheres, dtype=torch.float32)
        if spheres.ndim != 2 or spheres.shape[-1] != SPHERE_CHANNELS or spheres.shape[0] < 1:
            raise SkellabError(f"spheres must be (K, {SPHERE_CHANNELS}) (xyz, r), got {tuple(spheres.shape)}")
        if not bool(torch.isfinite(spheres).all()):
            raise SkellabError("spheres contain NaN or infinite values")
        known = self.normalizer.mean.expand(spheres.shape[0], self.token_dim).clone()
        known[:, :SPHERE_CHANNELS] = spheres
        mask = torch.zeros_like(known, dtype=torch.bool)
        mask[:, :SPHERE_CHANNELS] = True
        return self.complete(known, mask, num, class_index=class_index, guidance=guidance, steps=steps,
                             resample=resample, generator=generator, autoguidance=autoguidance, precision=precision,
                             feature_steps=feature_steps, guide_interval=guide_interval)


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
                      "autoguidance": float(diffusion.autoguidance), "info": dict(diffusion.guide_info),
                      **({"interval": [float(v) for v in diffusion.guide_interval]}
                         if diffusion.guide_interval is not None else {}),
                      **({"class_weights": dict(diffusion.class_autoguidance)}
                         if diffusion.class_autoguidance else {})}}
           if diffusion.guide is not None else {}),
        **({"features": {"config": diffusion.features.config.to_dict(),
                         "state_dict": stored_weights(diffusion.features.state_dict(), storage),
                         "info": dict(diffusion.features_info),
                         **({"steps": int(diffusion.feature_steps)} if diffusion.feature_steps is not None else {})}}
           if diffusion.features is not None else {}),
    }


def attach_guide(diffusion: LatentDiffusion, guide: LatentDiffusion, autoguidance: float,
                 info: dict[str, Any] | None = None, *,
                 interval: tuple[float, float] | None = None,
                 class_weights: dict[str, float] | None = None) -> LatentDiffusion:
    """``diffusion`` with ``guide``'s network as its autoguidance guide and ``autoguidance`` as its default weight
    (``class_weights``: {class: weight} for the classes that sample with another weight; weights measured with
    a previous guide are dropped).

    The guide must be a denoiser of the same latents: same classes, token size and order, scheduler
    parameterisation and (to 1e-2 of a standard deviation) latent normalisation; else :class:`SkellabError`.
    ``interval`` (lo, hi): the noise levels the guide applies at (:attr:`LatentDiffusion.guide_interval`; None: all).
    """
    check_guide(diffusion.denoiser, guide.denoiser)
    interval = check_guide_interval(interval)
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
    return replace(diffusion, guide=guide.denoiser.eval(), autoguidance=weight, guide_interval=interval,
                   class_autoguidance=class_weights, guide_info={"step": guide.info.get("step"), "parameters": params,
                               "config": guide.denoiser.config.to_dict(), **(info or {})})


def with_class_autoguidance(diffusion: LatentDiffusion, weights: dict[str, float] | None) -> LatentDiffusion:
    """``diffusion`` whose classes named in ``weights`` sample with their own autoguidance weight by default
    (:attr:`LatentDiffusion.class_autoguidance`; the others keep :attr:`~LatentDiffusion.autoguidance`; None or {}:
    none). The networks are shared, not copied. Unknown classes, bad weights, or weights without a guide →
    :class:`SkellabError`."""
    return replace(diffusion, class_autoguidance=weights)  # checked and copied by LatentDiffusion.__post_init__


def join_stages(spheres: LatentDiffusion, features: LatentDiffusion, *,
                feature_steps: int | None = None) -> LatentDiffusion:
    """A two-stage model from its two separately trained stages: ``spheres`` (``channels="spheres"``; its guide and
    autoguidance weight, if any, are kept) and ``features`` (``channels="features"``). Both must model the same
    latents: same classes, tokens per organ, scheduler parameterisation and (to 1e-2 of a standard deviation)
    whole-token normalisation; else :class:`SkellabError`. ``features.info`` becomes ``features_info``;
    ``feature_steps`` becomes the joined model's :attr:`~LatentDiffusion.feature_steps` (None: as many as the spheres')."""
    a, b = spheres.denoiser.config, features.denoiser.config
    if a.channels != "spheres" or b.channels != "features":
        raise SkellabError(f"join_stages needs a sphere stage and a feature stage, got channels {a.channels!r} and "
                           f"{b.channels!r}")
    if list(spheres.classes or []) != list(features.classes or []) or a.num_classes != b.num_classes:
        raise SkellabError("the two stages were trained on other classes")
    if spheres.num_tokens != features.num_tokens:
        raise SkellabError(f"the stages model {spheres.num_tokens} and {features.num_tokens} tokens per organ")
    keys = ("name", "sigma_data", "prediction_type")
    if {k: spheres.scheduler.config.get(k) for k in keys} != {k: features.scheduler.config.get(k) for k in keys}:
        raise SkellabError("the stages were trained with other scheduler parameterisations")
    na, nb = spheres.normalizer, features.normalizer
    if (na.mean.shape != nb.mean.shape or b.token_dim + SPHERE_CHANNELS != na.mean.shape[0]
            or float(((na.mean - nb.mean).abs() / na.std).max()) > 1e-2
            or float(((na.std - nb.std).abs() / na.std).max()) > 1e-2):
        raise SkellabError("the stages' latent normalisation differs: they were not trained on the same latents")
    trained = spheres.trained_classes
    if features.trained_classes is not None:
        trained = [c for c in (trained if trained is not None else features.classes or [])
                   if c in features.trained_classes]
    return replace(spheres, features=features.denoiser.eval(), features_info=dict(features.info or {}),
                   trained_classes=trained, feature_steps=feature_steps)


def save_diffusion(path: str | os.PathLike, diffusion: LatentDiffusion, *, step: int | None = None,
                   metrics: dict[str, Any] | None = None, storage: str = "fp32") -> Path:
    """Write a ``skellab.diffusion/1`` checkpoint atomically (config, normalizer, scheduler embedded; ``storage``
    as :func:`diffusion_payload`)."""
    write_checkpoint(path, diffusion_payload(diffusion, step=step, metrics=metrics, storage=storage))
    return Path(path)


def _stored_network(ckpt: dict[str, Any], key: str, p: Path) -> tuple[TokenDenoiser | None, dict[str, Any], dict]:
    """A second network stored under ``ckpt[key]`` (the guide, a feature stage): (network on CPU, its info dict, the
    entry), or (None, {}, {}) when absent; a malformed entry or weights that do not fit its config → SkellabError."""
    entry = ckpt.get(key)
    if entry is None:
        return None, {}, {}
    if not isinstance(entry, dict):
        raise SkellabError(f"{p}: checkpoint {key!r} entry is malformed")
    cfg = checkpoint_config(entry, DenoiserConfig, path=f"{p}: {key}", ranges=CONFIG_RANGES)
    net = build_with_weights(lambda: TokenDenoiser(config=cfg), entry.get("state_dict"), path=f"{p}: {key}")
    return net, entry.get("info") if isinstance(entry.get("info"), dict) else {}, entry


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
    dims = normalizer.mean.shape[0]
    try:
        fits = generated_channels(cfg.channels, dims) == cfg.token_dim
    except SkellabError:
        fits = False
    if not fits:
        raise SkellabError(f"{p}: the normalizer has {dims} channels, which does not fit the config "
                           f"(token_dim {cfg.token_dim}, channels {cfg.channels!r})")
    classes = list(entries.classes) if entries.classes else None
    trained = list(entries.trained_classes) if entries.trained_classes is not None else None
    if trained is not None and not set(trained) <= set(classes or []):
        raise SkellabError(f"{p}: trained_classes names classes the checkpoint does not have")
    model = build_with_weights(lambda: TokenDenoiser(config=cfg), ckpt.get("state_dict"), path=p)
    info = {"step": entries.step, "metrics": entries.metrics, "train": entries.train}
    dev = resolve_device(device)
    autoguidance, interval, class_weights = 1.0, None, {}
    guide, guide_info, g = _stored_network(ckpt, "guide", p)
    if guide is not None:
        try:
            autoguidance = _check_autoguidance(g.get("autoguidance"), MAX_AUTOGUIDANCE)
            check_guide(model, guide)
            interval = check_guide_interval(g.get("interval"))
            class_weights = _check_class_autoguidance(g.get("class_weights"), classes)
        except SkellabError as exc:
            raise SkellabError(f"{p}: {exc}") from exc
        guide = guide.to(dev).eval()
    features, features_info, f = _stored_network(ckpt, "features", p)
    feature_steps = None
    if features is not None:
        if f.get("steps") is not None:
            try:
                feature_steps = _check_steps(f["steps"], "the feature stage's steps")
            except SkellabError as exc:
                raise SkellabError(f"{p}: {exc}") from exc
        fcfg = features.config
        if cfg.channels != "spheres" or fcfg.channels != "features" or fcfg.num_classes != cfg.num_classes \
                or fcfg.token_dim + SPHERE_CHANNELS != normalizer.mean.shape[0]:
            raise SkellabError(f"{p}: the feature stage does not fit the sphere stage and normalizer")
        features = features.to(dev).eval()
    return LatentDiffusion(model.to(dev).eval(), sched, normalizer, classes, int(entries.num_tokens), info,
                           guide, autoguidance, guide_info, trained, features, features_info, feature_steps, interval,
                           class_weights)
