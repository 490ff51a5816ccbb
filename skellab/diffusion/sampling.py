"""Sampling latents: the diffusion loop written out, classifier-free guidance, latent standardisation.

The loop in :func:`sample_latents` is the one the notebooks show; it works with any
scheduler of :mod:`.schedulers` and any denoiser with the signature
``denoiser(x (B, K, D), cond (B,), class_index (B,) | None) -> (B, K, D)``
(:class:`~.denoiser.TokenDenoiser`, or the point-cloud baseline's network).

Classifier-free guidance (Ho & Salimans 2022) mixes the network's conditional and
unconditional (null-class) outputs, out = uncond + w·(cond − uncond): w = 0 is
unconditional, w = 1 plain conditional, w > 1 (paper: 2.0) sharpens the class. The mix
is applied to the raw network output; all our parameterisations (ε, v, x₀, EDM's F) are
affine in it with coefficients that do not depend on the class, so mixing outputs equals
mixing the x̂₀ estimates.

Autoguidance (Karras et al. 2024, "Guiding a diffusion model with a bad version of itself") mixes the
network's conditional output with that of a *weaker* denoiser of the same latents (smaller and/or trained less),
out = guide + a·(main − guide), both conditioned on the class: it pushes samples away from the errors the weaker
model makes, where classifier-free guidance pushes them towards the class and away from the others. Pass
``guide=`` the weaker network (same scheduler, same normalizer) and ``autoguidance=`` a; a = 1 is off. With
both weights ≠ 1 the two directions add: uncond + w·(cond − uncond) + (a − 1)·(cond − guide).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..errors import SkellabError
from ..runtime import inference_autocast, resolve_precision

__all__ = ["DEFAULT_GUIDANCE", "LatentNormalizer", "sample_latents", "guided_output", "call_sigma", "check_guide_interval"]

#: The classifier-free guidance weight every sampler in skellab uses unless told otherwise. The paper uses 2.0;
#: on the previous release's denoiser w = 1 (plain conditional sampling, one network call per step instead of two) was closer
#: to fresh references on every procedural family: mean 1-NNA-CD 0.682 vs 0.779 at w = 2 (N = 64; w = 0.7 scored
#: 0.726 vs 0.691 at N = 32) (benchmarks/README.md, "Sampler settings"). Pass ``guidance=2.0`` for the paper's setting.
DEFAULT_GUIDANCE = 1.0


@dataclass
class LatentNormalizer:
    """Per-channel standardisation of tokens: z = (x − mean)/std, statistics over all training tokens.

    mean, std : (D,) float32 (std floored at ``eps``). Diffusion runs on z; samples are mapped back.
    """

    mean: torch.Tensor
    std: torch.Tensor

    @classmethod
    def fit(cls, tokens: torch.Tensor, eps: float = 1e-6, shared: slice | None = None) -> "LatentNormalizer":
        """Statistics of tokens (S, K, D) (or (N, D)) over every axis but the last.

        shared : channels that share one mean and std, those of all their values pooled (e.g. ``slice(4, None)``,
                 the feature channels: :attr:`DenoiserConfig.feature_norm` ``"pooled"``); None: per channel.
        """
        t = torch.as_tensor(tokens).detach().float()
        if t.ndim < 2 or t.numel() == 0:
            raise SkellabError(f"need tokens of shape (S, K, D) to fit a normalizer, got {tuple(t.shape)}")
        flat = t.reshape(-1, t.shape[-1])
        if not torch.isfinite(flat).all():
            raise SkellabError("latent tokens contain NaN or infinite values")
        mean, std = flat.mean(0), flat.std(0, unbiased=False)
        if shared is not None:
            group = flat[:, shared]
            if group.shape[1] == 0:
                raise SkellabError(f"shared channels {shared} select none of the {flat.shape[1]} token channels")
            mean[shared], std[shared] = group.mean(), group.std(unbiased=False)
        return cls(mean.cpu(), std.clamp_min(eps).cpu())

    @classmethod
    def identity(cls, dim: int) -> "LatentNormalizer":
        """Mean 0, std 1: no standardisation."""
        return cls(torch.zeros(dim), torch.ones(dim))

    def normalize(self, tokens: torch.Tensor) -> torch.Tensor:
        """(…, D) latent tokens → standardised tokens."""
        self._check(tokens)
        return (tokens - self.mean.to(tokens)) / self.std.to(tokens)

    def denormalize(self, z: torch.Tensor) -> torch.Tensor:
        """(…, D) standardised tokens → latent tokens."""
        self._check(z)
        return z * self.std.to(z) + self.mean.to(z)

    def _check(self, x: torch.Tensor) -> None:
        if x.shape[-1] != self.mean.shape[0]:
            raise SkellabError(f"tokens have {x.shape[-1]} channels, the normalizer {self.mean.shape[0]}")

    def to_dict(self) -> dict[str, Any]:
        return {"mean": self.mean.detach().cpu().clone(), "std": self.std.detach().cpu().clone()}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "LatentNormalizer":
        try:
            mean, std = torch.as_tensor(d["mean"]).float(), torch.as_tensor(d["std"]).float()
        except (KeyError, TypeError) as exc:
            raise SkellabError("normalizer dict needs 'mean' and 'std'") from exc
        if mean.shape != std.shape or mean.ndim != 1 or (std <= 0).any():
            raise SkellabError("normalizer mean/std must be matching (D,) vectors with std > 0")
        return cls(mean, std)


def batch_classes(class_index: int | torch.Tensor | None, num: int, device: torch.device) -> torch.Tensor | None:
    """One class for all ``num`` samples (int or 1 value) or one each ((num,)) → (num,) int64 on ``device``."""
    if class_index is None:
        return None
    ci = torch.as_tensor(class_index, dtype=torch.long, device=device).reshape(-1)
    ci = ci.expand(num).clone() if ci.numel() == 1 else ci
    if ci.shape[0] != num:
        raise SkellabError(f"class_index has {ci.shape[0]} entries for num={num}")
    return ci


def check_guide(denoiser: nn.Module, guide: nn.Module | None) -> None:
    """An autoguidance ``guide`` must read and write the same tokens as ``denoiser``: same token size, token
    order and classes (its weights and size may differ)."""
    if guide is None:
        return
    a, b = denoiser.config, getattr(guide, "config", None)
    if b is None:
        raise SkellabError("the guide network has no config: pass a TokenDenoiser")
    for name in ("token_dim", "num_classes", "token_order", "channels", "self_condition"):
        if getattr(a, name, None) != getattr(b, name, None):
            raise SkellabError(f"the guide network's {name} is {getattr(b, name, None)!r}, the denoiser's "
                               f"{getattr(a, name, None)!r}: autoguidance needs a weaker model of the same latents")


def self_conditioned(denoiser: nn.Module) -> bool:
    """Whether ``denoiser`` reads its previous x̂₀ estimate (``DenoiserConfig.self_condition``)."""
    return bool(getattr(getattr(denoiser, "config", None), "self_condition", False))


def guided_output(denoiser: nn.Module, x: torch.Tensor, cond: torch.Tensor, class_index: torch.Tensor | None,
                  guidance: float, guide: nn.Module | None = None, autoguidance: float = 1.0,
                  self_cond: torch.Tensor | None = None) -> torch.Tensor:
    """Guided network output, (B, K, D).

    Classifier-free: uncond + w·(cond − uncond) (w = ``guidance``). With a ``guide`` network and
    ``autoguidance`` a ≠ 1, the autoguidance direction is added: + (a − 1)·(main − guide), both with the
    condition the sample follows (the class, or none when w = 0 or ``class_index`` is None). With w = 1
    this is guide + a·(main − guide), Karras et al. 2024's form.

    Network passes: one batched forward of 2B when both classifier-free branches are needed, one of B when
    ``class_index`` is None (unconditional), w = 0 (unconditional only) or w = 1 (conditional only); plus
    one forward of the guide when autoguidance is on.

    self_cond : a self-conditioned denoiser's previous x̂₀ estimate (:func:`self_conditioned`), given to every pass
                (both branches, and the guide); None for any other network.
    """
    kw = {} if self_cond is None else {"self_cond": self_cond}
    if class_index is None or guidance == 0:
        out = main = denoiser(x, cond, None, **kw)
        label = None
    elif guidance == 1:
        out = main = denoiser(x, cond, class_index, **kw)
        label = class_index
    else:
        null = torch.full_like(class_index, -1)
        both = denoiser(torch.cat([x, x]), torch.cat([cond, cond]), torch.cat([class_index, null]),
                        **{k: torch.cat([v, v]) for k, v in kw.items()})
        main, out_uncond = both.chunk(2)
        out = out_uncond + guidance * (main - out_uncond)
        label = class_index
    if guide is not None and autoguidance != 1:
        out = out + (autoguidance - 1) * (main - guide(x, cond, label, **kw))
    return out


def check_guide_interval(interval: Any) -> tuple[float, float] | None:
    """A guidance interval ``(lo, hi)`` of noise levels, 0 ≤ lo < hi (lo finite, hi may be ∞) → a tuple of floats;
    None → None; anything else → :class:`SkellabError`."""
    if interval is None:
        return None
    try:
        lo, hi = (float(v) for v in interval)
    except (TypeError, ValueError):
        raise SkellabError(f"guide_interval must be two noise levels (lo, hi), got {interval!r}") from None
    if not (math.isfinite(lo) and not math.isnan(hi) and 0 <= lo < hi):
        raise SkellabError(f"guide_interval must be noise levels 0 <= lo < hi (hi may be inf), got {interval!r}")
    return lo, hi


def call_sigma(scheduler: Any, t: Any) -> float:
    """The noise level σ (EDM's axis) of one sampler call at timestep ``t``: EDM's t itself; DDPM / DDIM's
    √((1 − ᾱ_t) / ᾱ_t)."""
    if getattr(scheduler, "name", None) == "edm":
        return float(t)
    a = scheduler._alpha_bar(int(t))
    return math.sqrt((1.0 - a) / a)


def interval_guide(guide: nn.Module | None, interval: tuple[float, float] | None, sigma: float) -> nn.Module | None:
    """``guide`` where autoguidance applies at noise level ``sigma`` (``lo < σ ≤ hi``, or everywhere when ``interval``
    is None), else None: the call is the plain model's."""
    if guide is None or interval is None or interval[0] < sigma <= interval[1]:
        return guide
    return None


@torch.no_grad()
def sample_latents(
    denoiser: nn.Module,
    scheduler: Any,
    *,
    num: int,
    num_tokens: int,
    class_index: int | torch.Tensor | None = None,
    guidance: float = DEFAULT_GUIDANCE,
    steps: int | None = None,
    generator: torch.Generator | None = None,
    normalizer: LatentNormalizer | None = None,
    return_trajectory: bool = False,
    device: str | torch.device | None = None,
    guide: nn.Module | None = None,
    autoguidance: float = 1.0,
    precision: str = "auto",
    init: torch.Tensor | None = None,
    start_sigma: float | None = None,
    guide_interval: tuple[float, float] | None = None,
) -> torch.Tensor | tuple[torch.Tensor, list[torch.Tensor]]:
    """Draw ``num`` token sets from the diffusion model.

    denoiser    : network ``(x, cond, class_index) -> out`` trained with ``scheduler``'s parameterisation
    scheduler   : an :class:`EDMScheduler`, :class:`DDPMScheduler` or :class:`DDIMScheduler` (its state is reset)
    class_index : one class for all samples (int), (num,) int64, or None for unconditional samples
    guidance    : classifier-free guidance weight w (0: unconditional, 1: conditional, paper 2.0;
                  default :data:`DEFAULT_GUIDANCE`)
    steps       : sampling steps (None: the scheduler's ``num_steps``; EDM default 20, Heun: 2·steps − 1 calls)
    normalizer  : when given, the result (and trajectory) is mapped back from standardised to latent units
    guide       : a weaker denoiser of the same latents, for autoguidance with weight ``autoguidance``
                  (1: off; :func:`guided_output`)
    guide_interval : (lo, hi): autoguidance only at the calls whose noise level σ (EDM's axis, :func:`call_sigma`)
                  lies in lo < σ ≤ hi, the plain model elsewhere (Kynkäänniemi et al. 2024: guidance at high noise
                  costs diversity, at low noise it does little); None: at every call. Outside it the guide is not run.
    precision   : the network passes' arithmetic: ``"auto"`` (bf16 autocast where the device multiplies bf16
                  natively — CUDA, CPUs with AMX or AVX512-BF16 — else fp32), ``"fp32"`` or ``"bf16"``
                  (:func:`skellab.runtime.inference_autocast`); the sampler's own steps stay fp32
    init, start_sigma : SDEdit (EDM only): start from the token sets ``init`` (num, K, D) — latent units when a
                  ``normalizer`` is given, else standardised — noised to the first step at σ̂ ≤ ``start_sigma``
                  (standardised units) instead of pure noise, and run only the steps from there
                  (:meth:`EDMScheduler.start_at`). Small σ keeps the organ and redraws its detail; σ_max is a
                  fresh sample. Both or neither.
    returns     : tokens (num, K, D) on CPU, and with ``return_trajectory`` a list of the x̂₀
                  estimates after each network call (each (num, K, D), CPU) — the scrubber's frames.
    Deterministic given ``generator``; not differentiable (runs under ``no_grad``).
    """
    if num < 1 or num_tokens < 1:
        raise SkellabError(f"num and num_tokens must be >= 1, got {num}, {num_tokens}")
    if not guidance >= 0 or not autoguidance >= 0:
        raise SkellabError(f"guidance and autoguidance must be >= 0, got {guidance}, {autoguidance}")
    dev = torch.device(device) if device is not None else next(denoiser.parameters()).device
    dim = denoiser.config.token_dim
    check_guide(denoiser, guide)
    guide_interval = check_guide_interval(guide_interval)
    resolve_precision(dev, precision)  # an unknown precision fails here, before any work
    class_index = batch_classes(class_index, num, dev)
    was_training = denoiser.training
    denoiser.eval()
    guide_was_training = guide.training if guide is not None else False
    if guide is not None:
        guide.eval()

    # 1. the schedule, and pure noise at its largest noise level (SDEdit: the clean init noised to start_sigma)
    scheduler.set_timesteps(steps if steps is not None else scheduler.num_steps)
    timesteps = scheduler.timesteps
    if (init is None) != (start_sigma is None):
        raise SkellabError("init and start_sigma go together (SDEdit): give both or neither")
    if init is None:
        x = scheduler.init_noise((num, num_tokens, dim), generator, device=dev)
    else:
        if not hasattr(scheduler, "start_from"):
            raise SkellabError(f"starting from given tokens (start_sigma) needs the EDM scheduler, not "
                               f"{type(scheduler).__name__}")
        init = torch.as_tensor(init, dtype=torch.float32)
        if tuple(init.shape) != (num, num_tokens, dim) or not torch.isfinite(init).all():
            raise SkellabError(f"init must be finite token sets of shape ({num}, {num_tokens}, {dim}), "
                               f"got {tuple(init.shape)}")
        x0 = normalizer.normalize(init) if normalizer is not None else init
        x, first = scheduler.start_from(x0.to(dev), float(start_sigma), generator)
        timesteps = timesteps[first:]
    trajectory: list[torch.Tensor] = []
    # self-conditioning: each call reads the x̂₀ estimate of the call before it (zeros at the first)
    x0_prev = torch.zeros_like(x) if self_conditioned(denoiser) else None
    # bf16 autocast (precision "auto" on a device with native bf16) changes only the networks' matrix products; the
    # sampler's elementwise steps stay fp32. Entered once for the loop, so each weight is cast to bf16 once.
    with inference_autocast(dev, precision):
        for t in timesteps:
            # 2. what the network sees at this noise level (EDM: c_in·x and c_noise(σ); DDPM: x_t and t)
            x_in, cond = scheduler.scale_model_input(x, t)
            # 3. the network's output, guided: uncond + w·(cond − uncond)
            g = interval_guide(guide, guide_interval, call_sigma(scheduler, t))
            out = guided_output(denoiser, x_in, cond, class_index, guidance, g, autoguidance, x0_prev).float()
            # 4. one scheduler step: the less noisy sample, and the current estimate of the clean tokens
            step = scheduler.step(out, t, x, generator=generator)
            x = step.prev_sample
            if x0_prev is not None:
                x0_prev = step.pred_original_sample.to(x.dtype)
            if return_trajectory:
                x0 = step.pred_original_sample.float().cpu()
                trajectory.append(normalizer.denormalize(x0) if normalizer is not None else x0)
    denoiser.train(was_training)
    if guide is not None:
        guide.train(guide_was_training)

    # 5. back from standardised to latent units
    tokens = x.float().cpu()
    tokens = normalizer.denormalize(tokens) if normalizer is not None else tokens
    return (tokens, trajectory) if return_trajectory else tokens
