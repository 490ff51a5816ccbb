"""Noise schedulers for diffusion on token sets: EDM, DDPM and DDIM (METHOD §6).

Schedulers are plain objects (not ``nn.Module``\\ s) that hold no model. They share one
small API, so the sampling loop in :mod:`skellab.diffusion.sampling` reads the same for
all of them::

    scheduler.set_timesteps(num_steps)
    x = scheduler.init_noise(shape, generator)                  # x_T
    for t in scheduler.timesteps:
        x_in, cond = scheduler.scale_model_input(x, t)          # what the network sees
        out = network(x_in, cond, class_index)                  # raw network output
        x = scheduler.step(out, t, x, generator=generator).prev_sample

and training reads the same too::

    t = scheduler.sample_training_timesteps(B, generator)       # (B,) t or σ
    x_t = scheduler.add_noise(x0, noise, t)
    x_in, cond = scheduler.scale_model_input(x_t, t)
    loss = scheduler.training_weight(t) · ‖network(x_in, cond, c) − scheduler.training_target(x0, noise, t)‖²

``cond`` is the scalar noise condition handed to the network: the integer timestep t
for DDPM/DDIM (as Ho et al. 2020), c_noise(σ) = ¼ ln σ for EDM (Karras et al. 2022,
Table 1). Equations are cited by number from:

* DDPM — J. Ho, A. Jain, P. Abbeel, "Denoising Diffusion Probabilistic Models", 2020;
* DDIM — J. Song, C. Meng, S. Ermon, "Denoising Diffusion Implicit Models", 2021;
* EDM  — T. Karras, M. Aittala, T. Aila, S. Laine, "Elucidating the Design Space of
  Diffusion-Based Generative Models", 2022.

A network trained with DDPM can be sampled with DDIM (same ᾱ_t, same prediction type);
EDM networks are preconditioned differently and need :class:`EDMScheduler`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

from ..errors import SkellabError

__all__ = ["SchedulerOutput", "EDMScheduler", "DDPMScheduler", "DDIMScheduler", "make_scheduler",
           "SCHEDULERS", "PREDICTION_TYPES", "BETA_SCHEDULES"]

PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")
BETA_SCHEDULES = ("linear", "cosine")


@dataclass
class SchedulerOutput:
    """Result of one ``step``.

    prev_sample          : (B, ...) the next, less noisy sample (x_{t−1}, or x at the next σ)
    pred_original_sample : (B, ...) the current estimate of the clean sample x̂₀
    """

    prev_sample: torch.Tensor
    pred_original_sample: torch.Tensor


def _randn(shape: tuple[int, ...], generator: torch.Generator | None, *, device: torch.device | str | None = None,
           dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Standard normal noise drawn on the generator's device, then moved to ``device``."""
    gdev = generator.device if generator is not None else (device or "cpu")
    z = torch.randn(tuple(shape), generator=generator, device=gdev, dtype=dtype)
    return z.to(device) if device is not None else z


def _per_sample(v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """(B,) → (B, 1, 1, …) broadcastable against ``like`` (B, ...)."""
    return v.to(like.device, like.dtype).reshape(-1, *([1] * (like.ndim - 1)))


def _as_batch(t: Any, batch: int, device: torch.device, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    t = torch.as_tensor(t, dtype=dtype, device=device)
    return t.expand(batch).clone() if t.ndim == 0 else t.reshape(-1)


MAX_STEPS = 100_000  # timesteps of a chain or steps of a sampler: beyond this, a typo or a hostile checkpoint


def _check_steps(num_steps: int) -> int:
    if isinstance(num_steps, bool) or not isinstance(num_steps, int) or not 0 < num_steps <= MAX_STEPS:
        raise SkellabError(f"num_steps must be an integer in 1..{MAX_STEPS}, got {num_steps!r}")
    return num_steps


# ============================================================================ EDM
class EDMScheduler:
    """Karras et al. 2022 (EDM): σ-parameterised ODE sampler with preconditioning.

    The forward process is x_σ = x₀ + σ·ε (VE, s(t) = 1, σ(t) = t). The network F is
    wrapped as the denoiser D(x; σ) = c_skip(σ)·x + c_out(σ)·F(c_in(σ)·x, c_noise(σ)),
    eq. (7) with Table 1's coefficients, and sampled with Heun's 2nd-order method or Euler.

    ``s_churn`` = 0 (default) is the deterministic sampler (Alg. 1). ``s_churn`` > 0 is the
    stochastic sampler of Alg. 2: before step i, when S_tmin ≤ σ_i ≤ S_tmax, noise raises
    the sample from σ_i to σ̂_i = (1 + γ_i)·σ_i, γ_i = min(S_churn/N, √2 − 1) (lines 4–6;
    x̂ = x + √(σ̂² − σ²)·S_noise·ε), and the step then runs from σ̂_i to σ_{i+1}. Fresh noise
    corrects errors the network made at earlier steps (the paper's §4), at the price of
    randomness that depends on the generator. Here the noise is added at the end of the
    previous ``step`` (and drawn at σ̂_0 by ``init_noise``), so the sampling loop is the same
    for both samplers.

    ``timesteps`` lists the σ at which the network is evaluated, in order (σ̂_i where churn
    applies). For Heun a step from σ̂_i to σ_{i+1} > 0 needs two evaluations (σ̂_i, σ_{i+1}):
    2N − 1 evaluations for N steps, as in the paper. ``step`` keeps the half-finished Heun
    step internally; call it once per entry of ``timesteps``, in order.
    """

    name = "edm"

    def __init__(self, *, sigma_min: float = 0.002, sigma_max: float = 80.0, sigma_data: float = 0.5,
                 rho: float = 7.0, p_mean: float = -1.2, p_std: float = 1.2, solver: str = "heun",
                 num_steps: int = 20, s_churn: float = 0.0, s_tmin: float = 0.0, s_tmax: float | None = None,
                 s_noise: float = 1.0):
        if not 0 < sigma_min < sigma_max:
            raise SkellabError(f"EDM needs 0 < sigma_min < sigma_max, got {sigma_min}, {sigma_max}")
        if not sigma_data > 0 or not rho > 0 or not p_std > 0:
            raise SkellabError("EDM sigma_data, rho and p_std must be > 0")
        if solver not in ("heun", "euler"):
            raise SkellabError(f"unknown EDM solver {solver!r}: use heun or euler")
        if not (math.isfinite(s_churn) and s_churn >= 0) or not (math.isfinite(s_noise) and s_noise > 0):
            raise SkellabError(f"EDM needs s_churn >= 0 and s_noise > 0, got {s_churn}, {s_noise}")
        if not (math.isfinite(s_tmin) and s_tmin >= 0) or (s_tmax is not None and not s_tmax >= s_tmin):
            raise SkellabError(f"EDM needs 0 <= s_tmin <= s_tmax (or s_tmax None), got {s_tmin}, {s_tmax}")
        self.sigma_min, self.sigma_max, self.sigma_data = float(sigma_min), float(sigma_max), float(sigma_data)
        self.rho, self.p_mean, self.p_std = float(rho), float(p_mean), float(p_std)
        self.solver = solver
        self.s_churn, self.s_tmin, self.s_noise = float(s_churn), float(s_tmin), float(s_noise)
        self.s_tmax = None if s_tmax is None else float(s_tmax)
        self.num_steps = _check_steps(num_steps)
        self.set_timesteps(num_steps)

    @property
    def config(self) -> dict[str, Any]:
        """Everything needed to rebuild this scheduler (``make_scheduler(**config)``)."""
        return {"name": self.name, "sigma_min": self.sigma_min, "sigma_max": self.sigma_max,
                "sigma_data": self.sigma_data, "rho": self.rho, "p_mean": self.p_mean, "p_std": self.p_std,
                "solver": self.solver, "num_steps": self.num_steps, "s_churn": self.s_churn, "s_tmin": self.s_tmin,
                "s_tmax": self.s_tmax, "s_noise": self.s_noise}

    # ------------------------------------------------------------------ schedule
    def sigma_schedule(self, num_steps: int) -> torch.Tensor:
        """(N + 1,) float64: σ_i = (σ_max^{1/ρ} + i/(N−1)·(σ_min^{1/ρ} − σ_max^{1/ρ}))^ρ, σ_N = 0 (eq. (5))."""
        n = _check_steps(num_steps)
        ramp = torch.linspace(0, 1, n, dtype=torch.float64) if n > 1 else torch.zeros(1, dtype=torch.float64)
        lo, hi = self.sigma_min ** (1 / self.rho), self.sigma_max ** (1 / self.rho)
        sigmas = (hi + ramp * (lo - hi)) ** self.rho
        return torch.cat([sigmas, torch.zeros(1, dtype=torch.float64)])

    @property
    def stochastic(self) -> bool:
        """True when the sampler adds fresh noise (``s_churn`` > 0 at some step): results depend on the generator."""
        return bool((self.sigmas_hat[:-1] > self.sigmas[:-1]).any())

    def churn_gammas(self, num_steps: int) -> torch.Tensor:
        """(N,) float64 γ_i = min(S_churn/N, √2 − 1) where S_tmin ≤ σ_i ≤ S_tmax, else 0 (Alg. 2, line 4)."""
        sig = self.sigma_schedule(num_steps)[:-1]
        inside = sig >= self.s_tmin
        if self.s_tmax is not None:
            inside &= sig <= self.s_tmax
        return torch.where(inside, min(self.s_churn / num_steps, math.sqrt(2) - 1), 0.0).to(torch.float64)

    def set_timesteps(self, num_steps: int) -> None:
        """Set ``sigmas`` (N + 1, ending at 0), ``sigmas_hat`` (σ̂_i = (1 + γ_i)·σ_i, where each step starts;
        equal to ``sigmas`` without churn) and ``timesteps`` (the σ of every network call)."""
        self.sigmas = self.sigma_schedule(num_steps)
        self.sigmas_hat = torch.cat([self.sigmas[:-1] * (1 + self.churn_gammas(num_steps)), self.sigmas[-1:]])
        self.num_inference_steps = num_steps
        stages: list[tuple[str, int]] = []
        for i in range(num_steps):
            stages.append(("first", i))
            if self.solver == "heun" and self.sigmas[i + 1] > 0:
                stages.append(("correct", i))
        self._stages = stages
        self.timesteps = torch.tensor([float(self.sigmas[i + 1] if s == "correct" else self.sigmas_hat[i])
                                       for s, i in stages], dtype=torch.float64)
        self._step_index = 0
        self._pending: tuple[torch.Tensor, torch.Tensor] | None = None

    def start_at(self, sigma: float) -> int:
        """Skip the steps above ``sigma``: the index into ``timesteps`` of the first step that starts at σ̂ ≤ ``sigma``,
        with the step counter set there (call after :meth:`set_timesteps`). The sampler then resumes from a clean
        sample noised to ``timesteps[index]`` (SDEdit, Meng et al. 2022: the steps above are not run)."""
        if not (isinstance(sigma, (int, float)) and sigma > 0 and math.isfinite(sigma)):
            raise SkellabError(f"start σ must be a positive number, got {sigma!r}")
        for index, (stage, i) in enumerate(self._stages):
            if stage == "first" and float(self.sigmas_hat[i]) <= sigma:
                self._step_index, self._pending = index, None
                return index
        raise SkellabError(f"no sampling step starts at or below σ = {sigma:g} (smallest: "
                           f"{float(self.sigmas_hat[self.num_inference_steps - 1]):g})")

    def start_from(self, sample: torch.Tensor, sigma: float, generator: torch.Generator | None = None
                   ) -> tuple[torch.Tensor, int]:
        """SDEdit's start: (clean ``sample`` + σ̂·ε, index into ``timesteps`` to resume from), where σ̂ is where the first
        step at or below ``sigma`` starts (:meth:`start_at`, which also sets the step counter there)."""
        index = self.start_at(sigma)
        noise = _randn(tuple(sample.shape), generator, device=sample.device, dtype=sample.dtype)
        return sample + float(self.timesteps[index]) * noise, index

    # ------------------------------------------------------------------ preconditioning
    def precondition(self, sigma: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(c_skip, c_out, c_in, c_noise) at σ (any shape), Table 1 of Karras et al. 2022:
        c_skip = σ_d²/(σ² + σ_d²), c_out = σ·σ_d/√(σ² + σ_d²), c_in = 1/√(σ² + σ_d²), c_noise = ¼ ln σ."""
        sigma = torch.as_tensor(sigma, dtype=torch.float64)
        sd2 = self.sigma_data**2
        c_skip = sd2 / (sigma**2 + sd2)
        c_out = sigma * self.sigma_data / torch.sqrt(sigma**2 + sd2)
        c_in = 1 / torch.sqrt(sigma**2 + sd2)
        c_noise = torch.log(sigma.clamp_min(1e-20)) / 4
        return c_skip, c_out, c_in, c_noise

    def loss_weight(self, sigma: torch.Tensor) -> torch.Tensor:
        """λ(σ) = (σ² + σ_d²)/(σ·σ_d)² (Table 1), the weight of ‖D(x; σ) − x₀‖²."""
        sigma = torch.as_tensor(sigma, dtype=torch.float64)
        return (sigma**2 + self.sigma_data**2) / (sigma * self.sigma_data) ** 2

    def scale_model_input(self, sample: torch.Tensor, t: Any) -> tuple[torch.Tensor, torch.Tensor]:
        """(c_in(σ)·x, c_noise(σ)) — the network's input and its (B,) noise condition."""
        sigma = _as_batch(t, sample.shape[0], sample.device)
        _, _, c_in, c_noise = self.precondition(sigma)
        return sample * _per_sample(c_in, sample), c_noise.to(sample.dtype)

    def predict_original(self, model_output: torch.Tensor, t: Any, sample: torch.Tensor) -> torch.Tensor:
        """D(x; σ) = c_skip·x + c_out·F (eq. (7)): the denoised estimate x̂₀."""
        sigma = _as_batch(t, sample.shape[0], sample.device)
        c_skip, c_out, _, _ = self.precondition(sigma)
        return _per_sample(c_skip, sample) * sample + _per_sample(c_out, sample) * model_output

    # ------------------------------------------------------------------ training
    def sample_sigmas_for_training(self, n: int, generator: torch.Generator | None = None,
                                   device: torch.device | str | None = None) -> torch.Tensor:
        """(n,) σ with ln σ ~ N(P_mean, P_std²) (Table 1, "Training")."""
        z = _randn((n,), generator, device=device, dtype=torch.float64)
        return torch.exp(self.p_mean + self.p_std * z)

    sample_training_timesteps = sample_sigmas_for_training

    def add_noise(self, original_samples: torch.Tensor, noise: torch.Tensor, t: Any) -> torch.Tensor:
        """x_σ = x₀ + σ·ε (s(t) = 1, σ(t) = t; the VE process of eq. (1) used by EDM)."""
        sigma = _as_batch(t, original_samples.shape[0], original_samples.device)
        return original_samples + _per_sample(sigma, original_samples) * noise

    def training_target(self, original_samples: torch.Tensor, noise: torch.Tensor, t: Any) -> torch.Tensor:
        """Target of the raw network output F: (x₀ − c_skip·x_σ)/c_out (eq. (8) rearranged)."""
        x = self.add_noise(original_samples, noise, t)
        sigma = _as_batch(t, x.shape[0], x.device)
        c_skip, c_out, _, _ = self.precondition(sigma)
        return (original_samples - _per_sample(c_skip, x) * x) / _per_sample(c_out, x)

    def training_weight(self, t: Any) -> torch.Tensor:
        """Weight of ‖F − target‖²: λ(σ)·c_out(σ)² — identically 1, which is EDM's point (§5)."""
        sigma = torch.as_tensor(t, dtype=torch.float64)
        return self.loss_weight(sigma) * self.precondition(sigma)[1] ** 2

    # ------------------------------------------------------------------ sampling
    def init_noise(self, shape: tuple[int, ...], generator: torch.Generator | None = None, *,
                   device: torch.device | str | None = None, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """x₀ ~ N(0, σ̂_0² I): Alg. 2, line 1 (t₀ = σ_max), with step 0's churn folded in (σ̂_0 = σ_max
        without churn). Also resets the step counter."""
        self._step_index, self._pending = 0, None
        return _randn(shape, generator, device=device, dtype=dtype) * float(self.sigmas_hat[0])

    def step(self, model_output: torch.Tensor, t: Any, sample: torch.Tensor, *,
             generator: torch.Generator | None = None) -> SchedulerOutput:
        """One network evaluation's worth of Alg. 2. Deterministic without churn (``generator`` unused);
        with churn, a finished step's sample is raised to the next step's σ̂ with noise from ``generator``."""
        if self._step_index >= len(self._stages):
            raise SkellabError("EDM step called more times than there are timesteps: call set_timesteps again")
        stage, i = self._stages[self._step_index]
        sigma_i, sigma_next = float(self.sigmas_hat[i]), float(self.sigmas[i + 1])
        sigma_now = sigma_i if stage == "first" else sigma_next
        if abs(float(torch.as_tensor(t, dtype=torch.float64).reshape(-1)[0]) - sigma_now) > 1e-6 * sigma_now:
            raise SkellabError(f"EDM step got t={t!r} but expected σ={sigma_now:g}: pass the entries of "
                               "scheduler.timesteps in order")
        self._step_index += 1
        denoised = self.predict_original(model_output, sigma_now, sample)
        if stage == "first":
            # Alg. 2 lines 7–8: d_i = (x̂_i − D(x̂_i; t̂_i))/t̂_i, Euler step x_{i+1} = x̂_i + (t_{i+1} − t̂_i)·d_i.
            d = (sample - denoised) / sigma_i
            x_next = sample + (sigma_next - sigma_i) * d
            if self.solver == "heun" and sigma_next > 0:
                self._pending = (sample, d)  # finished by the "correct" stage (lines 9–11)
                return SchedulerOutput(x_next, denoised)
            return SchedulerOutput(self._churn(x_next, i + 1, generator), denoised)
        # Alg. 2 lines 9–11: d'_i = (x_{i+1} − D(x_{i+1}; t_{i+1}))/t_{i+1};
        # x_{i+1} = x̂_i + (t_{i+1} − t̂_i)·(½ d_i + ½ d'_i).
        assert self._pending is not None
        x_i, d = self._pending
        self._pending = None
        d_prime = (sample - denoised) / sigma_next
        x_next = x_i + (sigma_next - sigma_i) * 0.5 * (d + d_prime)
        return SchedulerOutput(self._churn(x_next, i + 1, generator), denoised)

    def _churn(self, x: torch.Tensor, i: int, generator: torch.Generator | None) -> torch.Tensor:
        """Alg. 2 lines 5–6 for step i: x̂_i = x_i + √(σ̂_i² − σ_i²)·S_noise·ε (x unchanged where γ_i = 0)."""
        if i >= len(self.sigmas) - 1:
            return x
        lo, hi = float(self.sigmas[i]), float(self.sigmas_hat[i])
        if hi <= lo:
            return x
        eps = _randn(tuple(x.shape), generator, device=x.device, dtype=x.dtype)
        return x + math.sqrt(hi * hi - lo * lo) * self.s_noise * eps


# ============================================================================ DDPM
def _betas(schedule: str, num_train_timesteps: int, beta_start: float, beta_end: float) -> torch.Tensor:
    if schedule == "linear":  # Ho et al. 2020, §4: β linear from 1e-4 to 0.02 over T = 1000
        return torch.linspace(beta_start, beta_end, num_train_timesteps, dtype=torch.float64)
    # cosine (Nichol & Dhariwal 2021, eq. (17)): ᾱ(t) = f(t)/f(0), f(t) = cos²((t/T + s)/(1 + s)·π/2), β ≤ 0.999
    s, steps = 0.008, torch.arange(num_train_timesteps + 1, dtype=torch.float64)
    f = torch.cos((steps / num_train_timesteps + s) / (1 + s) * math.pi / 2) ** 2
    alphas_bar = f / f[0]
    return (1 - alphas_bar[1:] / alphas_bar[:-1]).clamp(max=0.999)


class DDPMScheduler:
    """Ho et al. 2020: ancestral sampling of the discrete-time variance-preserving chain.

    ``prediction_type``: what the network predicts — ``"epsilon"`` (the noise ε, as Ho
    et al.), ``"v_prediction"`` (v = √ᾱ_t·ε − √(1−ᾱ_t)·x₀, Salimans & Ho 2022) or
    ``"sample"`` (x₀ itself). ``clip_sample``: clamp x̂₀ to [−c, c] before the update
    (None: off; standardised latents are not bounded, so it is off by default).

    ``set_timesteps(N)`` picks N timesteps evenly spaced from T − 1 down to 0; with
    N < T the step from t to the next listed t' uses the chain's composite transition
    (α = ᾱ_t/ᾱ_t', β = 1 − α), which is exact marginalisation of the skipped steps.
    """

    name = "ddpm"

    def __init__(self, *, num_train_timesteps: int = 1000, beta_schedule: str = "linear", beta_start: float = 1e-4,
                 beta_end: float = 0.02, prediction_type: str = "epsilon", clip_sample: float | None = None,
                 num_steps: int | None = None):
        if beta_schedule not in BETA_SCHEDULES:
            raise SkellabError(f"unknown beta_schedule {beta_schedule!r}: use {' or '.join(BETA_SCHEDULES)}")
        if prediction_type not in PREDICTION_TYPES:
            raise SkellabError(f"unknown prediction_type {prediction_type!r}: use {', '.join(PREDICTION_TYPES)}")
        _check_steps(num_train_timesteps)
        if not 0 < beta_start < beta_end < 1:
            raise SkellabError(f"need 0 < beta_start < beta_end < 1, got {beta_start}, {beta_end}")
        if clip_sample is not None and not clip_sample > 0:
            raise SkellabError(f"clip_sample must be > 0 or None, got {clip_sample}")
        self.num_train_timesteps, self.beta_schedule = int(num_train_timesteps), beta_schedule
        self.beta_start, self.beta_end = float(beta_start), float(beta_end)
        self.prediction_type, self.clip_sample = prediction_type, clip_sample
        self.betas = _betas(beta_schedule, self.num_train_timesteps, self.beta_start, self.beta_end)  # (T,)
        self.alphas = 1 - self.betas
        self.alphas_cumprod = torch.cumprod(self.alphas, 0)  # ᾱ_t, (T,) float64
        self.num_steps = _check_steps(num_steps if num_steps is not None else self._default_steps())
        self.set_timesteps(self.num_steps)

    def _default_steps(self) -> int:
        return self.num_train_timesteps

    @property
    def config(self) -> dict[str, Any]:
        """Everything needed to rebuild this scheduler (``make_scheduler(**config)``)."""
        return {"name": self.name, "num_train_timesteps": self.num_train_timesteps,
                "beta_schedule": self.beta_schedule, "beta_start": self.beta_start, "beta_end": self.beta_end,
                "prediction_type": self.prediction_type, "clip_sample": self.clip_sample, "num_steps": self.num_steps}

    # ------------------------------------------------------------------ schedule
    def set_timesteps(self, num_steps: int) -> None:
        """``timesteps``: N integers from T − 1 down to 0, evenly spaced (the full chain when N = T)."""
        n = _check_steps(num_steps)
        if n > self.num_train_timesteps:
            raise SkellabError(f"num_steps={n} exceeds num_train_timesteps={self.num_train_timesteps}")
        ts = torch.linspace(self.num_train_timesteps - 1, 0, n, dtype=torch.float64).round().long() if n > 1 \
            else torch.tensor([self.num_train_timesteps - 1])
        self.timesteps = ts
        self.num_inference_steps = n
        self._prev = {int(a): int(b) for a, b in zip(ts.tolist(), ts.tolist()[1:] + [-1])}

    def _alpha_bar(self, t: int) -> float:
        return 1.0 if t < 0 else float(self.alphas_cumprod[t])

    def _alpha_bar_batch(self, t: Any, like: torch.Tensor) -> torch.Tensor:
        t = _as_batch(t, like.shape[0], torch.device("cpu"), torch.long)
        if (t < 0).any() or (t >= self.num_train_timesteps).any():
            raise SkellabError(f"timesteps must lie in [0, {self.num_train_timesteps - 1}]")
        return _per_sample(self.alphas_cumprod[t], like)

    def scale_model_input(self, sample: torch.Tensor, t: Any) -> tuple[torch.Tensor, torch.Tensor]:
        """(x_t, t): the DDPM network sees x_t unscaled and the integer timestep as its condition."""
        return sample, _as_batch(t, sample.shape[0], sample.device, sample.dtype)

    # ------------------------------------------------------------------ training
    def sample_training_timesteps(self, n: int, generator: torch.Generator | None = None,
                                  device: torch.device | str | None = None) -> torch.Tensor:
        """(n,) int64 t ~ Uniform{0, …, T − 1} (Alg. 1, line 3)."""
        gdev = generator.device if generator is not None else (device or "cpu")
        t = torch.randint(0, self.num_train_timesteps, (n,), generator=generator, device=gdev)
        return t.to(device) if device is not None else t

    def add_noise(self, original_samples: torch.Tensor, noise: torch.Tensor, t: Any) -> torch.Tensor:
        """x_t = √ᾱ_t·x₀ + √(1 − ᾱ_t)·ε, eq. (4) of Ho et al. 2020 (q(x_t | x₀) in closed form)."""
        ab = self._alpha_bar_batch(t, original_samples)
        return ab.sqrt() * original_samples + (1 - ab).sqrt() * noise

    def training_target(self, original_samples: torch.Tensor, noise: torch.Tensor, t: Any) -> torch.Tensor:
        """ε (eq. (14)), v = √ᾱ·ε − √(1−ᾱ)·x₀, or x₀, by ``prediction_type``."""
        if self.prediction_type == "epsilon":
            return noise
        if self.prediction_type == "sample":
            return original_samples
        ab = self._alpha_bar_batch(t, original_samples)
        return ab.sqrt() * noise - (1 - ab).sqrt() * original_samples

    def training_weight(self, t: Any) -> torch.Tensor:
        """1 for every t: the "simple" objective L_simple of eq. (14)."""
        return torch.ones_like(torch.as_tensor(t, dtype=torch.float64))

    # ------------------------------------------------------------------ sampling
    def init_noise(self, shape: tuple[int, ...], generator: torch.Generator | None = None, *,
                   device: torch.device | str | None = None, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """x_T ~ N(0, I) (Alg. 2, line 1)."""
        return _randn(shape, generator, device=device, dtype=dtype)

    def predict_original(self, model_output: torch.Tensor, t: Any, sample: torch.Tensor) -> torch.Tensor:
        """x̂₀ from the network output: eq. (15) for ε, x₀ = √ᾱ·x_t − √(1−ᾱ)·v for v; clipped if asked."""
        ab = self._alpha_bar_batch(t, sample)
        if self.prediction_type == "epsilon":
            x0 = (sample - (1 - ab).sqrt() * model_output) / ab.sqrt()
        elif self.prediction_type == "v_prediction":
            x0 = ab.sqrt() * sample - (1 - ab).sqrt() * model_output
        else:
            x0 = model_output
        return x0.clamp(-self.clip_sample, self.clip_sample) if self.clip_sample is not None else x0

    def _check_t(self, t: Any) -> int:
        ti = int(torch.as_tensor(t).reshape(-1)[0])
        if ti not in self._prev:
            raise SkellabError(f"timestep {ti} is not in this scheduler's timesteps: call set_timesteps and "
                               "pass the entries of scheduler.timesteps")
        return ti

    def step(self, model_output: torch.Tensor, t: Any, sample: torch.Tensor, *,
             generator: torch.Generator | None = None) -> SchedulerOutput:
        """x_{t'} ~ q(x_{t'} | x_t, x̂₀): the posterior of eqs. (6)–(7), t' the next listed timestep.

        μ̃ = √ᾱ_{t'}·β/(1 − ᾱ_t)·x̂₀ + √α·(1 − ᾱ_{t'})/(1 − ᾱ_t)·x_t  (eq. (7); with x̂₀ from ε this is eq. (11)),
        β̃ = (1 − ᾱ_{t'})/(1 − ᾱ_t)·β  (eq. (7)), α = ᾱ_t/ᾱ_{t'}, β = 1 − α; no noise is added at the last step.
        """
        ti = self._check_t(t)
        tp = self._prev[ti]
        ab_t, ab_p = self._alpha_bar(ti), self._alpha_bar(tp)
        alpha, beta = ab_t / ab_p, 1 - ab_t / ab_p
        x0 = self.predict_original(model_output, ti, sample)
        mean = (math.sqrt(ab_p) * beta / (1 - ab_t)) * x0 + (math.sqrt(alpha) * (1 - ab_p) / (1 - ab_t)) * sample
        var = (1 - ab_p) / (1 - ab_t) * beta
        if tp >= 0 and var > 0:
            mean = mean + math.sqrt(var) * _randn(sample.shape, generator, device=sample.device, dtype=sample.dtype)
        return SchedulerOutput(mean, x0)

    def posterior_mean_variance(self, x0: torch.Tensor, sample: torch.Tensor, t: int) -> tuple[torch.Tensor, float]:
        """(μ̃_t(x_t, x₀), β̃_t) of eq. (7) for the full chain (t' = t − 1); used by tests and notebooks."""
        ab_t, ab_p, beta = self._alpha_bar(t), self._alpha_bar(t - 1), float(self.betas[t])
        mean = (math.sqrt(ab_p) * beta / (1 - ab_t)) * x0 + (math.sqrt(1 - beta) * (1 - ab_p) / (1 - ab_t)) * sample
        return mean, (1 - ab_p) / (1 - ab_t) * beta


# ============================================================================ DDIM
class DDIMScheduler(DDPMScheduler):
    """Song et al. 2021: the non-Markovian sampler of eq. (12) on the DDPM chain's ᾱ_t.

    ``eta`` (η ≥ 0) scales the per-step noise σ_t(η) of eq. (16): η = 0 is the deterministic
    DDIM, η = 1 recovers DDPM's posterior variance. Same ᾱ_t and prediction types as
    :class:`DDPMScheduler`, so a DDPM-trained network can be sampled here in few steps.
    """

    name = "ddim"

    def __init__(self, *, eta: float = 0.0, **kwargs: Any):
        if not eta >= 0:
            raise SkellabError(f"DDIM eta must be >= 0, got {eta}")
        self.eta = float(eta)
        super().__init__(**kwargs)

    def _default_steps(self) -> int:
        return 50

    @classmethod
    def from_ddpm(cls, ddpm: DDPMScheduler, *, eta: float = 0.0, num_steps: int = 50) -> "DDIMScheduler":
        """A DDIM sampler on a DDPM scheduler's chain (same ᾱ_t, prediction type and clipping)."""
        keep = {k: v for k, v in ddpm.config.items() if k not in ("name", "num_steps", "eta")}
        return cls(eta=eta, num_steps=num_steps, **keep)

    @property
    def config(self) -> dict[str, Any]:
        return {**super().config, "eta": self.eta}

    def step(self, model_output: torch.Tensor, t: Any, sample: torch.Tensor, *,
             generator: torch.Generator | None = None) -> SchedulerOutput:
        """Eq. (12): x_{t'} = √ᾱ_{t'}·x̂₀ + √(1 − ᾱ_{t'} − σ_t²)·ε̂ + σ_t·z,
        σ_t = η·√((1 − ᾱ_{t'})/(1 − ᾱ_t))·√(1 − ᾱ_t/ᾱ_{t'}) (eq. (16))."""
        ti = self._check_t(t)
        tp = self._prev[ti]
        ab_t, ab_p = self._alpha_bar(ti), self._alpha_bar(tp)
        x0 = self.predict_original(model_output, ti, sample)
        # ε̂ consistent with the (possibly clipped) x̂₀: ε̂ = (x_t − √ᾱ_t·x̂₀)/√(1 − ᾱ_t)  (inverse of eq. (4))
        eps = (sample - math.sqrt(ab_t) * x0) / math.sqrt(1 - ab_t)
        sigma = self.eta * math.sqrt((1 - ab_p) / (1 - ab_t)) * math.sqrt(max(1 - ab_t / ab_p, 0.0))
        prev = math.sqrt(ab_p) * x0 + math.sqrt(max(1 - ab_p - sigma**2, 0.0)) * eps
        if sigma > 0:
            prev = prev + sigma * _randn(sample.shape, generator, device=sample.device, dtype=sample.dtype)
        return SchedulerOutput(prev, x0)


SCHEDULERS = {"edm": EDMScheduler, "ddpm": DDPMScheduler, "ddim": DDIMScheduler}


def make_scheduler(name: str = "edm", **kwargs: Any) -> EDMScheduler | DDPMScheduler | DDIMScheduler:
    """A scheduler by name (``"edm"``, ``"ddpm"``, ``"ddim"``); ``make_scheduler(**s.config)`` rebuilds ``s``."""
    if name not in SCHEDULERS:
        raise SkellabError(f"unknown scheduler {name!r}: use {', '.join(SCHEDULERS)}")
    try:
        return SCHEDULERS[name](**kwargs)
    except TypeError as exc:
        raise SkellabError(f"bad options for the {name} scheduler: {exc}") from exc
