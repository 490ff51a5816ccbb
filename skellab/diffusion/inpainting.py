"""Edit, then let diffusion finish the organ: sample token sets that keep given tokens (RePaint-style).

Given some known numbers of a token set — whole tokens (a branch the user selected), or only their
skeletal channels xyz + r (a skeleton the user moved or scaled, whose features diffusion must
redo) — :func:`inpaint_latents` samples the rest consistently with them. At every network call
at noise level σ the known entries are replaced by a fresh noisy version of themselves,
``x_known + σ·ε`` (what the forward process would have made of them), so the network always sees a
sample of the right noise level whose known part is the user's; RePaint's resampling
(Lugmayr et al., CVPR 2022) then jumps back from σ_{i+1} to σ_i ``resample − 1`` times per step,
``x ← x + √(σ_i² − σ_{i+1}²)·ε``, and redoes the step, which lets the unknown part harmonise
with the known one. The last step puts the known entries back exactly.

EDM only (the scheduler of the shipped model): its σ-parameterisation makes the re-noising exact.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ..errors import SkellabError
from ..runtime import inference_autocast, resolve_precision
from .denoiser import order_tokens
from .sampling import (
    DEFAULT_GUIDANCE,
    LatentNormalizer,
    batch_classes,
    check_guide,
    check_guide_interval,
    guided_output,
    interval_guide,
    self_conditioned,
)
from .schedulers import EDMScheduler, _randn

__all__ = ["inpaint_latents"]


def check_known(known: torch.Tensor, mask: torch.Tensor, dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """What to keep, checked: ``known`` (K, dim) float32 and ``mask`` (K,) or (K, dim) → (known, (K, dim) bool mask);
    a wrong shape or a NaN / infinite kept entry → SkellabError."""
    known = torch.as_tensor(known, dtype=torch.float32)
    if known.ndim != 2 or known.shape[-1] != dim:
        raise SkellabError(f"known tokens must be (K, {dim}), got {tuple(known.shape)}")
    mask = torch.as_tensor(mask, dtype=torch.bool)
    if mask.ndim == 1 and mask.shape[0] == known.shape[0]:
        mask = mask[:, None].expand_as(known)
    if tuple(mask.shape) != tuple(known.shape):
        raise SkellabError(f"mask must be (K,) or (K, D) = {tuple(known.shape)}, got {tuple(mask.shape)}")
    if not bool(torch.isfinite(known[mask]).all()):
        raise SkellabError("known tokens contain NaN or infinite values")
    return known, mask


@torch.no_grad()
def inpaint_latents(
    denoiser: nn.Module,
    scheduler: EDMScheduler,
    known: torch.Tensor,
    mask: torch.Tensor,
    *,
    num: int,
    class_index: int | torch.Tensor | None = None,
    guidance: float = DEFAULT_GUIDANCE,
    steps: int | None = None,
    resample: int = 4,
    generator: torch.Generator | None = None,
    normalizer: LatentNormalizer | None = None,
    guide: nn.Module | None = None,
    autoguidance: float = 1.0,
    precision: str = "auto",
    guide_interval: tuple[float, float] | None = None,
) -> torch.Tensor:
    """``num`` token sets (num, K, D) that agree with ``known`` where ``mask`` is True.

    known      : (K, D) tokens in latent units (the ``normalizer`` maps them to the model's space);
                 entries where ``mask`` is False are ignored
    mask       : (K, D) or (K,) bool — True: keep (a (K,) mask keeps whole tokens; ``mask[:, :4]``
                 keeps only the skeleton of a token and lets diffusion choose its features)
    resample   : RePaint's jumps per step (1: plain replacement; cost × resample)
    guide      : a weaker denoiser of the same latents, for autoguidance with weight ``autoguidance`` (1: off;
                 :func:`~.sampling.guided_output`)
    precision, guide_interval : as :func:`~.sampling.sample_latents`
    returns    : tokens (num, K, D) on CPU, latent units; kept entries equal ``known`` exactly.
    Deterministic given ``generator``.
    """
    if not isinstance(scheduler, EDMScheduler):
        raise SkellabError("inpainting needs the EDM scheduler (the one skellab's diffusion models are trained with)")
    dim = denoiser.config.token_dim
    known, mask = check_known(known, mask, dim)
    if num < 1 or int(resample) < 1 or not guidance >= 0 or not autoguidance >= 0:
        raise SkellabError("num and resample must be >= 1, guidance and autoguidance >= 0")
    # an ordered denoiser sees the tokens in its order; the result goes back to the caller's order at the end
    order = getattr(denoiser.config, "token_order", "set")
    perm = order_tokens(known, order) if order != "set" else None
    if perm is not None:
        known, mask = known[perm], mask[perm]
    dev = next(denoiser.parameters()).device
    resolve_precision(dev, precision)  # an unknown precision fails here, before any work
    K = known.shape[0]
    z_known = (normalizer.normalize(known) if normalizer is not None else known).to(dev).expand(num, K, dim)
    m = mask.to(dev).expand(num, K, dim)
    class_index = batch_classes(class_index, num, dev)
    check_guide(denoiser, guide)
    guide_interval = check_guide_interval(guide_interval)
    was_training = denoiser.training
    denoiser.eval()
    guide_was_training = guide.training if guide is not None else False
    if guide is not None:
        guide.eval()
    scheduler.set_timesteps(steps if steps is not None else scheduler.num_steps)
    sigmas = [float(s) for s in scheduler.sigmas]
    noise = lambda: _randn((num, K, dim), generator, device=dev)  # noqa: E731

    # a self-conditioned denoiser reads its estimate from the call before (zeros at the first), as in sample_latents
    prev = torch.zeros(num, K, dim, device=dev) if self_conditioned(denoiser) else None

    def denoise(x: torch.Tensor, sigma: float) -> torch.Tensor:
        nonlocal prev
        x = torch.where(m, z_known + sigma * noise(), x)  # the known part, at this noise level
        x_in, cond = scheduler.scale_model_input(x, sigma)
        g = interval_guide(guide, guide_interval, sigma)
        out = guided_output(denoiser, x_in, cond, class_index, guidance, g, autoguidance, prev).float()
        d = scheduler.predict_original(out, sigma, x).to(x.dtype)
        prev = d if prev is not None else None
        return x, d

    x = noise() * sigmas[0]
    with inference_autocast(dev, precision):  # the networks' products only; entered once, as sample_latents
        for i in range(len(sigmas) - 1):
            s, s1 = sigmas[i], sigmas[i + 1]
            for u in range(int(resample)):
                x, d0 = denoise(x, s)
                d = (x - d0) / s
                x1 = x + (s1 - s) * d
                if s1 > 0 and scheduler.solver == "heun":  # Heun's correction at σ_{i+1}
                    x1, d1 = denoise(x1, s1)
                    x1 = x + (s1 - s) * 0.5 * (d + (x1 - d1) / s1)
                if u < int(resample) - 1 and s1 > 0:  # jump back to σ_i and redo the step
                    x = x1 + math.sqrt(s * s - s1 * s1) * noise()
                else:
                    x = x1
    denoiser.train(was_training)
    if guide is not None:
        guide.train(guide_was_training)
    x = torch.where(m, z_known, x).float().cpu()
    out = normalizer.denormalize(x) if normalizer is not None else x
    out = torch.where(mask.expand(num, K, dim), known.expand(num, K, dim), out)  # exact, no round trip
    return out if perm is None else out[:, torch.argsort(perm)]
