"""Library entry points that train one model in memory (no run folder needed), all on the engine.

* :func:`train_autoencoder` — the skeletal latent autoencoder on a MedSDF folder;
* :func:`train_learned` / :func:`training_clouds` — the learned (Point2Skeleton-style) skeleton;
* :func:`train_diffusion` — latent diffusion on a tensor of latents;
* :func:`fit_denoiser` — denoising training of any token denoiser (latents or the point-cloud baseline);
* :func:`train_point_diffusion` — the point-cloud diffusion baseline.

Each takes a ``preset`` and field overrides resolved by :func:`~skellab.train.presets.stage_config`,
so a notebook, a test and ``skellab train`` use the same recipe.
"""

from __future__ import annotations

import os
from dataclasses import asdict, replace
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch import nn

from ..autoencoder.model import AutoencoderConfig, SkeletalAutoencoder
from ..baselines.point_diffusion import (
    PointDenoiser,
    PointDenoiserConfig,
    PointDiffusion,
)
from ..data.sampling import sample_surface
from ..diffusion.denoiser import DenoiserConfig, TokenDenoiser, generated_channels, sort_tokens
from ..diffusion.model import LatentDiffusion
from ..diffusion.sampling import LatentNormalizer
from ..diffusion.schedulers import make_scheduler
from ..errors import SkellabError
from ..runtime import resolve_device
from ..skeleton.learned import LearnedSkeletonConfig, PointSkeletonNet
from .engine import EngineConfig, fit
from .presets import stage_config
from .tasks import AutoencoderTask, CloudSkeletonTask, DenoisingTask

__all__ = ["train_autoencoder", "train_learned", "training_clouds", "fit_denoiser", "train_diffusion",
           "train_point_diffusion"]


def _seed_of(generator: torch.Generator | None) -> int:
    return 0 if generator is None else int(torch.randint(2**62, (1,), generator=generator, device=generator.device))


# ---------------------------------------------------------------------- autoencoder
def train_autoencoder(
    dataset_root: str | os.PathLike,
    *,
    preset: str = "tiny",
    config: AutoencoderConfig | None = None,
    device: str | torch.device = "auto",
    seed: int = 0,
    out: str | os.PathLike | None = None,
    resume: bool = False,
    progress: bool = True,
    **overrides: Any,
) -> tuple[SkeletalAutoencoder, dict[str, list]]:
    """Train a :class:`SkeletalAutoencoder` on a MedSDF folder (train split; val split for the val loss).

    preset    : ``"tiny"`` (seconds on a CPU) or ``"default"`` (the shipped model's recipe)
    config    : model config replacing the preset's (``num_classes`` is set from the data); its
                ``skeleton_method`` / ``skeleton_checkpoint`` say how the token spheres are made
    overrides : fields of the model config, :class:`AutoencoderSampling` or :class:`EngineConfig`
                (e.g. ``steps=200, num_queries=1024, lr=1e-3``)
    out       : optional run folder (``skeletons.npz`` cache, ``checkpoint.pt``, ``model.pt``, ``log.csv``)
    returns   : the trained model (eval mode, on ``device``) and the history ``{"step", "loss",
                "sdf", "skeleton", "lr", "seconds", "val_step", "val_sdf"}`` (losses in units of τ²).
    """
    stage = stage_config("autoencoder", preset, **overrides)
    model_cfg = config if config is not None else stage.model
    task = AutoencoderTask(dataset_root, model_cfg, stage.sampling, seed=seed)
    res = fit(task, stage.engine.replace(seed=seed), out=out, device=device, resume=resume, progress=progress)
    hist: dict[str, list] = {k: [r[k] for r in res.history] for k in ("step", "loss", "sdf", "skeleton", "lr", "seconds")}
    hist["val_step"], hist["val_sdf"] = res.column("val_sdf")
    return res.model, hist


# ---------------------------------------------------------------------- learned skeleton
def training_clouds(shapes: Sequence[Any], *, num_points: int, seed: int) -> torch.Tensor:
    """Oriented surface samples (S, num_points, 6) float32 from Shapes or trimeshes: xyz, outward normal.

    Shape ``i`` is sampled with seed ``seed + i``; pass clouds with more points than the
    model's ``num_points`` so that :func:`train_learned` draws a fresh subset every step.
    """
    if len(shapes) == 0:
        raise SkellabError("training_clouds needs at least one shape")
    samples = [np.concatenate(sample_surface(s, num_points, seed=seed + i), axis=1) for i, s in enumerate(shapes)]
    return torch.from_numpy(np.stack(samples))


def train_learned(
    data: torch.Tensor | np.ndarray | Callable[[int, torch.Generator], torch.Tensor],
    *,
    preset: str = "tiny",
    config: LearnedSkeletonConfig | None = None,
    generator: torch.Generator,
    device: str | torch.device = "auto",
    progress: bool = True,
    model: PointSkeletonNet | None = None,
    on_step: Callable[[int, PointSkeletonNet, dict[str, list[float]]], None] | None = None,
    **overrides: Any,
) -> tuple[PointSkeletonNet, dict[str, list[float]]]:
    """Train a :class:`PointSkeletonNet` on surface point clouds (self-supervised).

    data      : training clouds (S, N0, 3) in the normalised frame with N0 ≥ ``num_points``, or
                (S, N0, 6) with outward unit normals in channels 3:6 (enables the inside loss); each
                step draws ``batch_size`` clouds and a random ``num_points`` subset of each. Or a
                function ``(step, generator) -> (B, num_points, 3 or 6)`` producing batches.
    preset    : the engine recipe (``stage_config("skeleton", preset)``); ``overrides`` name fields of
                :class:`LearnedSkeletonConfig` or :class:`EngineConfig` (e.g. ``steps=30, lr=3e-3``)
    config    : model config replacing the preset's (default: ``model.config`` when continuing ``model``)
    generator : a CPU ``torch.Generator``; it seeds batch sampling, augmentation and init.
    on_step   : ``on_step(step, model, history)`` after every step (live plots); the model is in train mode.
    returns   : the trained model (eval mode, on ``device``) and per-step losses
                ``{"total", "sample", "p2s", "radius", "inside"}`` plus ``"seconds"``.
    """
    stage = stage_config("skeleton", preset, **overrides)
    cfg = config or (model.config if model is not None else stage.model)
    if model is not None:
        arch = ("k", "num_points", "width", "knn", "radius_mode")
        diff = [f for f in arch if getattr(model.config, f) != getattr(cfg, f)]
        if diff:
            raise SkellabError(f"train_learned: model and config disagree on architecture fields {diff}")
        model.config = cfg
    clouds = None
    if not callable(data):
        clouds = torch.as_tensor(np.asarray(data) if isinstance(data, np.ndarray) else data).float().cpu()
    seed = _seed_of(generator)
    task = CloudSkeletonTask(clouds, cfg, seed=seed, batch_fn=data if callable(data) else None, model=model)
    engine = stage.engine.replace(seed=seed, val_every=0, checkpoint_every=0)
    history: dict[str, list[float]] = {"total": [], "sample": [], "p2s": [], "radius": [], "inside": []}

    def hook(step: int, row: dict[str, float]) -> None:
        for name in history:
            history[name].append(float(row["loss" if name == "total" else name]))
        if on_step is not None:
            on_step(step, task.live_model, history)

    result = fit(task, engine, device=device, progress=progress, callback=hook)
    history["seconds"] = [result.seconds]
    return result.model.eval(), history


# ---------------------------------------------------------------------- denoising
def fit_denoiser(
    model: nn.Module,
    data: torch.Tensor,
    class_index: torch.Tensor | None,
    scheduler: Any,
    engine: EngineConfig,
    *,
    class_dropout: float,
    generator: torch.Generator | None = None,
    progress: bool = True,
    desc: str = "diffusion",
    callback: Callable[[int, float], None] | None = None,
) -> tuple[nn.Module, dict[str, Any]]:
    """Denoising training of ``model`` on samples (S, K, D), shared by latents and the point-cloud baseline.

    Each step: a batch, a noise level and noise per sample, class → null with probability
    ``class_dropout`` (classifier-free guidance), the scheduler's weighted regression target, with the
    optimisation of ``engine``. ``generator`` (if given) replaces ``engine.seed`` by a seed drawn from
    it. ``callback(step, loss)`` runs after every step and may raise to stop. Returns (the EMA copy
    if ``engine.ema_decay`` else the model, in eval mode; history ``{"loss", "lr", "seconds"}``).
    """
    seed = _seed_of(generator) if generator is not None else engine.seed
    task = DenoisingTask(data, class_index, scheduler, model, class_dropout=class_dropout, seed=seed, name=desc)
    hook = None if callback is None else (lambda step, row: callback(step, row["loss"]))
    result = fit(task, engine.replace(seed=seed, val_every=0, checkpoint_every=0), device=data.device,
                 progress=progress, callback=hook)
    history = {"loss": [r["loss"] for r in result.history], "lr": [r["lr"] for r in result.history],
               "seconds": result.seconds}
    return result.model, history


def _class_indices(n: int, class_index: Any) -> torch.Tensor | None:
    if class_index is None:
        return None
    ci = torch.as_tensor(class_index).long().reshape(-1)
    if ci.shape[0] != n:
        raise SkellabError(f"{ci.shape[0]} class indices for {n} samples")
    if int(ci.min()) < 0:
        raise SkellabError("class indices must be >= 0")
    return ci


def train_diffusion(
    latents: Any,
    class_index: torch.Tensor | None = None,
    *,
    preset: str = "tiny",
    config: DenoiserConfig | None = None,
    scheduler: str | Any = "edm",
    classes: list[str] | None = None,
    normalizer: LatentNormalizer | None = None,
    generator: torch.Generator | None = None,
    device: str | torch.device = "auto",
    progress: bool = True,
    **overrides: Any,
) -> tuple[LatentDiffusion, dict[str, Any]]:
    """Train a :class:`TokenDenoiser` on latents in memory, with the ``skellab train diffusion`` recipe.

    latents     : (S, K, D) float tensor (or an autoencoder ``Latent``; its class indices are used). With
                  ``channels="spheres"`` / ``"features"`` (override or config) one stage of a two-stage model is
                  trained (its normaliser still covers whole tokens); join the two with
                  :func:`skellab.diffusion.join_stages`
    class_index : (S,) int64 in [0, num_classes) (None: unconditional)
    preset      : ``"tiny"`` or ``"default"`` (the shipped recipe); ``overrides`` name fields of
                  :class:`DenoiserConfig` or :class:`EngineConfig` (e.g. ``steps=300, ema_decay=None``)
    config      : denoiser config replacing the preset's (token_dim / num_classes are set from the data)
    scheduler   : ``"edm"`` | ``"ddpm"`` | a scheduler object (its parameterisation is what the network learns)
    normalizer  : default: fitted on ``latents`` (per-channel mean/std; the config's ``feature_norm``)
    returns     : (:class:`LatentDiffusion` on ``device``, history {"loss", "lr", "seconds"})
    """
    if hasattr(latents, "tokens"):  # skellab.autoencoder.Latent
        class_index = latents.class_index if class_index is None else class_index
        latents = latents.tokens
    latents = torch.as_tensor(latents).detach().float()
    if latents.ndim != 3 or latents.shape[0] < 1:
        raise SkellabError(f"latents must be (S, K, D) with S >= 1, got {tuple(latents.shape)}")
    class_index = _class_indices(latents.shape[0], class_index)
    n_cls = int(class_index.max()) + 1 if class_index is not None else 0
    stage = stage_config("diffusion", preset, **overrides)
    channels = (config or stage.model).channels  # a stage of a two-stage model generates some of the D channels
    D = latents.shape[-1]
    dim = generated_channels(channels, D)
    config = config or replace(stage.model, token_dim=dim, num_classes=n_cls,
                               num_tokens=latents.shape[1] if stage.model.token_order != "set" else 0)
    if config.token_dim != dim:
        raise SkellabError(f"config.token_dim={config.token_dim} but latents with D={D} give {dim} channels "
                           f"to generate (channels {channels!r})")
    if n_cls > config.num_classes:
        raise SkellabError(f"class indices must lie in [0, {config.num_classes}) for this config")
    sched = make_scheduler(scheduler) if isinstance(scheduler, str) else scheduler
    dev = resolve_device(device)
    normalizer = normalizer or LatentNormalizer.fit(latents, shared=config.shared_channels())
    data = normalizer.normalize(sort_tokens(latents, config.token_order)).to(dev)
    model = TokenDenoiser(config=config).to(dev)
    model, history = fit_denoiser(
        model, data, None if class_index is None else class_index.to(dev), sched, stage.engine,
        class_dropout=config.class_dropout if class_index is not None else 0.0, generator=generator,
        progress=progress)
    steps = stage.engine.steps
    train = {**asdict(stage.engine), "num_latents": int(latents.shape[0])}
    tail = history["loss"][-max(1, min(100, steps // 10)):]
    info = {"step": steps, "metrics": {"final_loss": sum(tail) / len(tail)}, "train": train}
    return LatentDiffusion(model, sched, normalizer, list(classes) if classes else None, int(latents.shape[1]),
                           info), history


def train_point_diffusion(
    clouds: torch.Tensor,
    class_index: torch.Tensor | None = None,
    *,
    config: PointDenoiserConfig | None = None,
    scheduler: str | Any = "ddpm",
    engine: EngineConfig | None = None,
    classes: list[str] | None = None,
    generator: torch.Generator | None = None,
    device: str | torch.device = "auto",
    progress: bool = True,
    **overrides: Any,
) -> tuple[PointDiffusion, dict[str, Any]]:
    """Train the point-cloud baseline on clouds (S, N, 3) in the normalised frame (no standardisation: PVD's setup).

    scheduler : ``"ddpm"`` (PVD's choice) | ``"edm"`` | a scheduler object; class_index (S,) or None.
    engine    : optimisation (default: 2,000 steps, batch 16, lr 1e-3, warm-up 100, constant LR, EMA 0.999);
                ``overrides`` replace its fields (e.g. ``steps=200, ema_decay=None``)
    returns   : (:class:`PointDiffusion`, history {"loss", "lr", "seconds"})
    """
    clouds = torch.as_tensor(clouds).detach().float()
    if clouds.ndim != 3 or clouds.shape[-1] != 3 or clouds.shape[0] < 1:
        raise SkellabError(f"clouds must be (S, N, 3), got {tuple(clouds.shape)}")
    class_index = _class_indices(clouds.shape[0], class_index)
    n_cls = int(class_index.max()) + 1 if class_index is not None else 0
    config = config or PointDenoiserConfig.tiny(num_classes=n_cls)
    if n_cls > config.num_classes:
        raise SkellabError(f"class indices must lie in [0, {config.num_classes}) for this config")
    engine = engine or EngineConfig(steps=2000, batch_size=16, lr=1e-3, warmup=100, schedule="constant",
                                    ema_decay=0.999)
    try:
        engine = engine.replace(**overrides)
    except TypeError as exc:
        raise SkellabError(f"train_point_diffusion: {exc}") from exc
    sched = make_scheduler(scheduler) if isinstance(scheduler, str) else scheduler
    dev = resolve_device(device)
    model = PointDenoiser(config=config).to(dev)
    model, history = fit_denoiser(
        model, clouds.to(dev), None if class_index is None else class_index.to(dev), sched, engine,
        class_dropout=config.class_dropout if class_index is not None else 0.0, generator=generator,
        progress=progress, desc="point diffusion")
    info = {"step": engine.steps, "train": {"steps": engine.steps, "batch_size": engine.batch_size, "lr": engine.lr,
                                            "ema_decay": engine.ema_decay, "num_clouds": int(clouds.shape[0])}}
    return PointDiffusion(model, sched, list(classes) if classes else None, int(clouds.shape[1]), info), history
