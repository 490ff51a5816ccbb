"""Training the latent diffusion model, its checkpoints, and synthetic latents for development.

Recipe (METHOD §6, shrunk for CPU): latents precomputed by the frozen autoencoder are
standardised per channel (:class:`LatentNormalizer`); each step draws a batch, a noise
level per sample (EDM: ln σ ~ N(−1.2, 1.2²); DDPM: t uniform), noises the batch, drops
the class to the null class with probability ``class_dropout`` (for classifier-free
guidance) and regresses the scheduler's training target. Adam, linear warm-up, gradient
clipping, optional EMA of the weights (the EMA copy is the one returned and saved).

Checkpoint format ``skellab.diffusion/1`` (a plain dict, ``torch.load(weights_only=True)``-safe)::

    {"format": "skellab.diffusion/1", "config": asdict(DenoiserConfig), "state_dict": ...,
     "normalizer": {"mean": (D,), "std": (D,)}, "scheduler": scheduler.config,
     "classes": [...] | None, "num_tokens": K, "step": int, "metrics": {...}, "train": {...}}
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from ..checkpoint import read_checkpoint, write_checkpoint
from ..errors import SkellabError
from ..runtime import resolve_device
from .denoiser import DenoiserConfig, TokenDenoiser
from .sampling import LatentNormalizer, sample_latents
from .schedulers import _randn, make_scheduler

__all__ = ["CHECKPOINT_FORMAT", "LatentDiffusion", "train_diffusion", "fit_denoiser", "diffusion_payload", "save_diffusion",
           "load_diffusion", "make_synthetic_latents"]

CHECKPOINT_FORMAT = "skellab.diffusion/1"


@dataclass
class LatentDiffusion:
    """Everything needed to sample latents: network, scheduler, normalizer, class names.

    denoiser   : :class:`TokenDenoiser` (eval mode) working on standardised tokens
    scheduler  : the scheduler it was trained with (a DDPM-trained one may be swapped for DDIM)
    normalizer : maps standardised tokens back to latent units
    classes    : class names, ``classes[i]`` ↔ class index i (None: unnamed / unconditional)
    num_tokens : K of the training latents (the default number of tokens to sample)
    info       : ``step``, ``metrics``, ``train`` from training or the checkpoint
    """

    denoiser: TokenDenoiser
    scheduler: Any
    normalizer: LatentNormalizer
    classes: list[str] | None = None
    num_tokens: int = 256
    info: dict[str, Any] = field(default_factory=dict)

    def class_id(self, name_or_index: str | int) -> int:
        """Class index of a class name (or an index, checked)."""
        n = self.denoiser.config.num_classes
        if isinstance(name_or_index, str):
            if not self.classes or name_or_index not in self.classes:
                raise SkellabError(f"unknown class {name_or_index!r}; known: {', '.join(self.classes or [])}")
            return self.classes.index(name_or_index)
        if not 0 <= int(name_or_index) < n:
            raise SkellabError(f"class index {name_or_index} out of range [0, {n})")
        return int(name_or_index)

    def sample(self, num: int, *, class_index: int | str | torch.Tensor | None = None, guidance: float = 2.0,
               steps: int | None = None, generator: torch.Generator | None = None, num_tokens: int | None = None,
               return_trajectory: bool = False):
        """:func:`sample_latents` in latent units: tokens (num, K, D) (+ trajectory of x̂₀, latent units)."""
        if isinstance(class_index, (str, int)) and not isinstance(class_index, bool):
            class_index = self.class_id(class_index)
        return sample_latents(self.denoiser, self.scheduler, num=num, num_tokens=num_tokens or self.num_tokens,
                              class_index=class_index, guidance=guidance, steps=steps, generator=generator,
                              normalizer=self.normalizer, return_trajectory=return_trajectory)


def fit_denoiser(
    model: nn.Module,
    data: torch.Tensor,
    class_index: torch.Tensor | None,
    scheduler: Any,
    *,
    steps: int,
    batch_size: int,
    lr: float,
    class_dropout: float,
    generator: torch.Generator | None = None,
    grad_clip: float | None = 1.0,
    warmup: int = 0,
    ema_decay: float | None = None,
    progress: bool = True,
    desc: str = "diffusion",
    callback: Callable[[int, float], None] | None = None,
) -> tuple[nn.Module, dict[str, Any]]:
    """Denoising training of ``model`` on samples (S, K, D), shared by latents and the point-cloud baseline.

    Runs the shared engine (:func:`skellab.train.fit` with a :class:`skellab.train.DenoisingTask`):
    each step a batch, a noise level and noise per sample, class → null with probability
    ``class_dropout`` (classifier-free guidance), the scheduler's weighted regression target;
    AdamW, linear warm-up then a constant LR, gradient clipping, optional EMA. ``generator`` seeds
    it (default seed 0). ``callback(step, loss)`` runs after every step and may raise to stop.
    Returns (the EMA copy if ``ema_decay`` else the model, in eval mode; history with per-step
    ``loss`` and ``lr`` and the ``seconds`` spent).
    """
    from ..train.engine import EngineConfig, fit
    from ..train.tasks import DenoisingTask

    seed = 0 if generator is None else int(torch.randint(2**62, (1,), generator=generator,
                                                         device=generator.device))
    task = DenoisingTask(data, class_index, scheduler, model, class_dropout=class_dropout, seed=seed, name=desc)
    cfg = EngineConfig(steps=steps, batch_size=batch_size, lr=lr, warmup=warmup, schedule="constant",
                       grad_clip=grad_clip, ema_decay=ema_decay, seed=seed)
    hook = None if callback is None else (lambda step, row: callback(step, row["loss"]))
    result = fit(task, cfg, device=data.device, progress=progress, callback=hook)
    history = {"loss": [r["loss"] for r in result.history], "lr": [r["lr"] for r in result.history],
               "seconds": result.seconds}
    return result.model, history


def train_diffusion(
    latents: torch.Tensor,
    class_index: torch.Tensor | None = None,
    *,
    config: DenoiserConfig | None = None,
    scheduler: str | Any = "edm",
    steps: int = 2000,
    batch_size: int = 64,
    lr: float = 1e-3,
    grad_clip: float | None = 1.0,
    warmup: int = 100,
    ema_decay: float | None = 0.999,
    classes: list[str] | None = None,
    normalizer: LatentNormalizer | None = None,
    generator: torch.Generator | None = None,
    device: str | torch.device = "auto",
    progress: bool = True,
) -> tuple[LatentDiffusion, dict[str, Any]]:
    """Train a :class:`TokenDenoiser` on latents.

    latents     : (S, K, D) float tensor of latent tokens (or an autoencoder ``Latent``; its classes are used)
    class_index : (S,) int64 in [0, num_classes) (None: unconditional; then config.num_classes may be 0)
    config      : :class:`DenoiserConfig` (default: ``DenoiserConfig.tiny`` with token_dim = D and
                  num_classes = max(class_index) + 1)
    scheduler   : ``"edm"`` | ``"ddpm"`` | a scheduler object (its parameterisation is what the network learns)
    normalizer  : default: fitted on ``latents`` (per-channel mean/std)
    returns     : (:class:`LatentDiffusion` on ``device``, history {"loss": [...], "lr": [...], "seconds"})
    """
    if hasattr(latents, "tokens"):  # skellab.autoencoder.Latent
        class_index = latents.class_index if class_index is None else class_index
        latents = latents.tokens
    latents = torch.as_tensor(latents).detach().float()
    if latents.ndim != 3 or latents.shape[0] < 1:
        raise SkellabError(f"latents must be (S, K, D) with S >= 1, got {tuple(latents.shape)}")
    if class_index is not None:
        class_index = torch.as_tensor(class_index).long().reshape(-1)
        if class_index.shape[0] != latents.shape[0]:
            raise SkellabError(f"{class_index.shape[0]} class indices for {latents.shape[0]} latents")
    n_cls = int(class_index.max()) + 1 if class_index is not None else 0
    config = config or DenoiserConfig.tiny(token_dim=latents.shape[-1], num_classes=n_cls)
    if config.token_dim != latents.shape[-1]:
        raise SkellabError(f"config.token_dim={config.token_dim} but latents have D={latents.shape[-1]}")
    if class_index is not None and (n_cls > config.num_classes or int(class_index.min()) < 0):
        raise SkellabError(f"class indices must lie in [0, {config.num_classes}) for this config")
    if steps < 1 or batch_size < 1 or not lr > 0:
        raise SkellabError("steps and batch_size must be >= 1 and lr > 0")
    sched = make_scheduler(scheduler) if isinstance(scheduler, str) else scheduler
    dev = resolve_device(device)
    normalizer = normalizer or LatentNormalizer.fit(latents)
    data = normalizer.normalize(latents).to(dev)
    model = TokenDenoiser(config=config).to(dev)
    model, history = fit_denoiser(
        model, data, None if class_index is None else class_index.to(dev), sched, steps=steps,
        batch_size=batch_size, lr=lr, class_dropout=config.class_dropout if class_index is not None else 0.0,
        generator=generator, grad_clip=grad_clip, warmup=warmup, ema_decay=ema_decay, progress=progress)
    train = {"steps": steps, "batch_size": batch_size, "lr": lr, "grad_clip": grad_clip, "warmup": warmup,
             "ema_decay": ema_decay, "num_latents": int(latents.shape[0])}
    tail = history["loss"][-max(1, min(100, steps // 10)):]
    info = {"step": steps, "metrics": {"final_loss": sum(tail) / len(tail)}, "train": train}
    return LatentDiffusion(model, sched, normalizer, list(classes) if classes else None, int(latents.shape[1]),
                           info), history


# ---------------------------------------------------------------------- checkpoints
def diffusion_payload(diffusion: LatentDiffusion, *, step: int | None = None,
                      metrics: dict[str, Any] | None = None) -> dict[str, Any]:
    """The ``skellab.diffusion/1`` checkpoint dict (config, normalizer, scheduler, classes embedded)."""
    info = diffusion.info or {}
    return {
        "format": CHECKPOINT_FORMAT,
        "config": diffusion.denoiser.config.to_dict(),
        "state_dict": {k: v.detach().cpu() for k, v in diffusion.denoiser.state_dict().items()},
        "normalizer": diffusion.normalizer.to_dict(),
        "scheduler": dict(diffusion.scheduler.config),
        "classes": list(diffusion.classes) if diffusion.classes else None,
        "num_tokens": int(diffusion.num_tokens),
        "step": int(step if step is not None else info.get("step", 0)),
        "metrics": dict(metrics if metrics is not None else info.get("metrics", {})),
        "train": info.get("train"),
    }


def save_diffusion(path: str | os.PathLike, diffusion: LatentDiffusion, *, step: int | None = None,
                   metrics: dict[str, Any] | None = None) -> Path:
    """Write a ``skellab.diffusion/1`` checkpoint atomically (config, normalizer, scheduler embedded)."""
    write_checkpoint(path, diffusion_payload(diffusion, step=step, metrics=metrics))
    return Path(path)


def load_diffusion(path: str | os.PathLike, *, device: str | torch.device = "cpu") -> LatentDiffusion:
    """Rebuild a :class:`LatentDiffusion` from its checkpoint alone (denoiser in eval mode).

    A missing or corrupt file, another format, or weights that do not fit the stored
    config → :class:`SkellabError`.
    """
    p = Path(path)
    ckpt = read_checkpoint(p, format=CHECKPOINT_FORMAT, kind="diffusion")
    try:
        cfg = DenoiserConfig.from_dict(ckpt["config"])
        normalizer = LatentNormalizer.from_dict(ckpt["normalizer"])
        sched = make_scheduler(**ckpt["scheduler"])
    except (KeyError, TypeError) as exc:
        raise SkellabError(f"{p}: checkpoint config, normalizer or scheduler is missing or malformed") from exc
    model = TokenDenoiser(config=cfg)
    try:
        model.load_state_dict(ckpt["state_dict"])
    except (KeyError, RuntimeError) as exc:
        raise SkellabError(f"{p}: checkpoint weights do not fit its config (other architecture?)") from exc
    info = {k: ckpt.get(k) for k in ("step", "metrics", "train")}
    return LatentDiffusion(model.to(resolve_device(device)).eval(), sched, normalizer, ckpt.get("classes"),
                           int(ckpt.get("num_tokens", 256)), info)


# ---------------------------------------------------------------------- synthetic data
def make_synthetic_latents(num_per_class: int = 64, *, num_classes: int = 2, num_tokens: int = 32,
                           token_dim: int = 16, noise: float = 0.1, separation: float = 2.0,
                           generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Synthetic token sets for development: class prototypes, randomly permuted and jittered.

    Each class c has a prototype token set P_c (K, D) = N(0, 0.5²) + an offset o_c with
    ‖o_c‖ = ``separation`` (so class means differ); a sample is P_c with its K tokens in
    random order plus N(0, noise²). Returns (latents (S, K, D), class_index (S,),
    prototypes (C, K, D)), S = num_per_class · num_classes, classes interleaved.
    """
    if num_per_class < 1 or num_classes < 1 or num_tokens < 1 or token_dim < 1:
        raise SkellabError("make_synthetic_latents: all sizes must be >= 1")
    offsets = _randn((num_classes, token_dim), generator, device="cpu")
    offsets = separation * offsets / offsets.norm(dim=-1, keepdim=True)
    protos = 0.5 * _randn((num_classes, num_tokens, token_dim), generator, device="cpu") + offsets[:, None]
    cls = torch.arange(num_classes).repeat(num_per_class)  # (S,)
    gdev = generator.device if generator is not None else "cpu"
    keys = torch.rand((cls.shape[0], num_tokens), generator=generator, device=gdev).cpu()
    perm = keys.argsort(dim=1)  # a random order of the K tokens per sample
    lat = torch.gather(protos[cls], 1, perm[..., None].expand(-1, -1, token_dim))
    lat = lat + noise * _randn(tuple(lat.shape), generator, device="cpu")
    return lat, cls, protos
