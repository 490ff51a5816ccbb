"""Schedulers: schedules, add_noise/step round trips, and samplers driven by oracle denoisers."""

import math

import pytest
import torch

from skellab.diffusion import DDIMScheduler, DDPMScheduler, EDMScheduler, make_scheduler
from skellab.errors import SkellabError
from skellab.runtime import make_generator


# ---------------------------------------------------------------------- schedules
def test_edm_sigma_schedule_monotone_with_endpoints():
    s = EDMScheduler()
    assert s.num_steps == 20
    sig = s.sigma_schedule(20)
    assert sig.shape == (21,)
    assert sig[0].item() == pytest.approx(80.0) and sig[19].item() == pytest.approx(0.002) and sig[20] == 0
    assert (sig[1:] < sig[:-1]).all()
    # eq. (5): σ_i^{1/ρ} is linear in i
    r = sig[:20] ** (1 / 7)
    assert torch.allclose(r[1:] - r[:-1], (r[1] - r[0]).expand(19), atol=1e-9)


def test_edm_heun_timesteps_are_2n_minus_1_evaluations():
    heun, euler = EDMScheduler(num_steps=5), EDMScheduler(solver="euler", num_steps=5)
    assert len(heun.timesteps) == 9 and len(euler.timesteps) == 5
    assert torch.equal(euler.timesteps, heun.sigmas[:5])
    assert (heun.timesteps[1:] <= heun.timesteps[:-1]).all()


@pytest.mark.parametrize("schedule", ["linear", "cosine"])
def test_ddpm_timesteps_and_alphas(schedule):
    s = DDPMScheduler(beta_schedule=schedule)
    ab = s.alphas_cumprod
    assert (ab[1:] < ab[:-1]).all() and 0 < ab[-1] < 1e-2 and ab[0] > 0.99
    s.set_timesteps(10)
    assert s.timesteps[0] == 999 and s.timesteps[-1] == 0 and (s.timesteps[1:] < s.timesteps[:-1]).all()
    s.set_timesteps(1000)
    assert torch.equal(s.timesteps, torch.arange(999, -1, -1))


def test_edm_preconditioning_table1():
    s = EDMScheduler()
    sigma = torch.tensor([0.01, 0.5, 10.0], dtype=torch.float64)
    c_skip, c_out, c_in, c_noise = s.precondition(sigma)
    sd = 0.5
    assert torch.allclose(c_skip, sd**2 / (sigma**2 + sd**2))
    assert torch.allclose(c_out, sigma * sd / (sigma**2 + sd**2).sqrt())
    assert torch.allclose(c_in, 1 / (sigma**2 + sd**2).sqrt())
    assert torch.allclose(c_noise, sigma.log() / 4)
    # λ(σ)·c_out² = 1: the effective weight of the F-space loss (EDM §5)
    assert torch.allclose(s.training_weight(sigma), torch.ones(3, dtype=torch.float64))


def test_edm_training_sigmas_lognormal():
    s = EDMScheduler()
    ln = s.sample_sigmas_for_training(20000, make_generator(0)).log()
    assert ln.mean().item() == pytest.approx(-1.2, abs=0.05) and ln.std().item() == pytest.approx(1.2, abs=0.05)


# ---------------------------------------------------------------------- round trips
@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction", "sample"])
def test_ddim_eta0_recovers_x0_with_true_noise(prediction_type):
    """With the true noise as model output, deterministic DDIM lands exactly on x0 (for any step count)."""
    gen = make_generator(0)
    x0 = torch.randn(3, 7, 16, generator=gen, dtype=torch.float64)
    noise = torch.randn(3, 7, 16, generator=gen, dtype=torch.float64)
    s = DDIMScheduler(prediction_type=prediction_type, eta=0.0)
    s.set_timesteps(10)
    x = s.add_noise(x0, noise, s.timesteps[0])
    for t in s.timesteps:
        out = s.training_target(x0, noise, t)  # the oracle output for this x0 and noise
        step = s.step(out, t, x)
        assert torch.allclose(step.pred_original_sample, x0, atol=1e-9)
        x = step.prev_sample
        # deterministic DDIM keeps x on the same noise path: x_{t'} = √ᾱ_{t'} x0 + √(1 − ᾱ_{t'}) ε
    assert torch.allclose(x, x0, atol=1e-9)


def test_ddim_intermediate_samples_stay_on_the_noise_path():
    gen = make_generator(1)
    x0 = torch.randn(2, 5, 3, generator=gen, dtype=torch.float64)
    noise = torch.randn(2, 5, 3, generator=gen, dtype=torch.float64)
    s = DDIMScheduler()
    s.set_timesteps(4)
    ts = s.timesteps.tolist()
    x = s.add_noise(x0, noise, ts[0])
    x = s.step(noise, ts[0], x).prev_sample
    assert torch.allclose(x, s.add_noise(x0, noise, ts[1]), atol=1e-9)


def test_add_noise_eq4_moments():
    s = DDPMScheduler()
    x0 = torch.full((20000, 1, 1), 2.0, dtype=torch.float64)
    t = torch.full((20000,), 500)
    xt = s.add_noise(x0, torch.randn(x0.shape, generator=make_generator(0), dtype=torch.float64), t)
    ab = s.alphas_cumprod[500].item()
    assert xt.mean().item() == pytest.approx(2 * math.sqrt(ab), abs=0.02)
    assert xt.var().item() == pytest.approx(1 - ab, rel=0.03)


def test_ddpm_posterior_matches_eq7():
    """step() with the x0-oracle gives mean μ̃_t (eq. (7)) and variance β̃_t on the full chain."""
    s = DDPMScheduler(prediction_type="sample")
    s.set_timesteps(1000)
    t = 400
    x0 = torch.tensor([[[0.7, -1.3]]], dtype=torch.float64)
    xt = torch.tensor([[[0.2, 0.5]]], dtype=torch.float64)
    ab_t, ab_p, beta = s.alphas_cumprod[t].item(), s.alphas_cumprod[t - 1].item(), s.betas[t].item()
    mean_eq7 = math.sqrt(ab_p) * beta / (1 - ab_t) * x0 + math.sqrt(1 - beta) * (1 - ab_p) / (1 - ab_t) * xt
    var_eq7 = (1 - ab_p) / (1 - ab_t) * beta
    draws = torch.cat([s.step(x0, t, xt.expand(4000, 1, 2), generator=make_generator(i)).prev_sample
                       for i in range(5)])
    assert torch.allclose(draws.mean(0), mean_eq7[0], atol=3 * math.sqrt(var_eq7 / 20000) + 1e-6)
    assert draws.var(0).mean().item() == pytest.approx(var_eq7, rel=0.05)
    mean, var = s.posterior_mean_variance(x0, xt, t)
    assert torch.allclose(mean, mean_eq7) and var == pytest.approx(var_eq7)
    # eq. (11): with ε̂ = the true ε for (x0, x_t), the same mean in its ε form
    eps = (xt - math.sqrt(ab_t) * x0) / math.sqrt(1 - ab_t)
    mean_eq11 = (xt - beta / math.sqrt(1 - ab_t) * eps) / math.sqrt(1 - beta)
    assert torch.allclose(mean_eq11, mean_eq7, atol=1e-12)


# ---------------------------------------------------------------------- oracle samplers
def _gaussian_x0_oracle(mu, sd):
    """E[x0 | x_t] for data ~ N(mu, sd²) under the VP chain at ᾱ."""
    def x0_hat(xt, ab):
        return mu + sd**2 * math.sqrt(ab) / (ab * sd**2 + 1 - ab) * (xt - math.sqrt(ab) * mu)
    return x0_hat


@pytest.mark.parametrize("name,steps", [("ddpm", 1000), ("ddim", 200)])
def test_ddpm_ddim_sample_a_gaussian_with_the_oracle(name, steps):
    """Full-chain ancestral DDPM and 200-step DDIM reproduce N(mu, sd²) given E[x0 | x_t].

    (Ancestral DDPM with *skipped* steps under-disperses even with this oracle: q(x_t' | x_t, E[x0|x_t])
    ignores Var[x0 | x_t]. That is the method, not a bug, so it is not tested here.)"""
    mu, sd = 1.5, 0.3
    s = make_scheduler(name, prediction_type="sample")
    s.set_timesteps(steps)
    oracle = _gaussian_x0_oracle(mu, sd)
    x = s.init_noise((2000, 1, 1), make_generator(0), dtype=torch.float64)
    gen = make_generator(1)
    for t in s.timesteps:
        x = s.step(oracle(x, s.alphas_cumprod[int(t)].item()), t, x, generator=gen).prev_sample
    assert x.mean().item() == pytest.approx(mu, abs=0.03)
    assert x.std().item() == pytest.approx(sd, rel=0.06)


@pytest.mark.parametrize("solver", ["heun", "euler"])
def test_edm_oracle_point_mass_converges(solver):
    """D(x; σ) = μ for a point mass; F is the output that makes the preconditioned D equal μ."""
    s = EDMScheduler(solver=solver)
    mu = torch.tensor([0.3, -0.7, 1.1], dtype=torch.float64)
    x = s.init_noise((8, 5, 3), make_generator(0), dtype=torch.float64)
    assert x.std().item() == pytest.approx(80, rel=0.2)
    for t in s.timesteps:
        x_in, cond = s.scale_model_input(x, t)
        c_skip, c_out, _, _ = s.precondition(torch.as_tensor(t))
        out = (mu - c_skip * x) / c_out
        x = s.step(out, t, x).prev_sample
    assert torch.allclose(x, mu.expand_as(x), atol=1e-6)


def _edm_gaussian_std(solver, steps, mu=-0.4, sd=0.5):
    s = EDMScheduler(num_steps=steps, solver=solver)
    x = s.init_noise((4000, 1, 1), make_generator(0), dtype=torch.float64)
    x = x * (80 / x.std())  # exactly σ_max-wide start, so only the solver's error remains
    for t in s.timesteps:
        sig = float(t)
        d = mu + sd**2 / (sd**2 + sig**2) * (x - mu)  # exact denoiser of N(mu, sd²) at σ
        c_skip, c_out, _, _ = s.precondition(torch.tensor(sig, dtype=torch.float64))
        x = s.step((d - c_skip * x) / c_out, t, x).prev_sample
    assert x.mean().item() == pytest.approx(mu, abs=0.02)
    return x.std().item()


def test_edm_heun_gaussian_oracle_matches_distribution():
    """With the exact denoiser of N(mu, sd²), the ODE samplers reproduce sd; Heun (2nd order) beats Euler."""
    heun50, heun20 = _edm_gaussian_std("heun", 50), _edm_gaussian_std("heun", 20)
    euler20 = _edm_gaussian_std("euler", 20)
    assert heun50 == pytest.approx(0.5, rel=0.015)
    assert heun20 == pytest.approx(0.5, rel=0.06)
    assert abs(heun20 - 0.5) < abs(euler20 - 0.5)


def _edm_churn_sample(s, n=4000, seed=1, mu=-0.4, sd=0.5):
    """Sample N(mu, sd²) with its exact denoiser through the generic loop (scale_model_input, step)."""
    gen = make_generator(seed)
    x = s.init_noise((n, 1, 1), gen, dtype=torch.float64)
    for t in s.timesteps:
        sig = float(t)
        d = mu + sd**2 / (sd**2 + sig**2) * (x - mu)
        c_skip, c_out, _, _ = s.precondition(torch.tensor(sig, dtype=torch.float64))
        x = s.step((d - c_skip * x) / c_out, t, x, generator=gen).prev_sample
    return x


def test_edm_churn_zero_is_the_deterministic_sampler():
    """S_churn = 0 (the default) changes nothing: same σ at every call, generator unused, bit-identical."""
    a, b = EDMScheduler(num_steps=12), EDMScheduler(num_steps=12, s_churn=0.0, s_tmin=0.1, s_tmax=5.0)
    assert torch.equal(a.timesteps, b.timesteps) and torch.equal(a.sigmas_hat, a.sigmas)
    assert not a.stochastic and not b.stochastic
    x0 = a.init_noise((50, 1, 1), make_generator(3), dtype=torch.float64)
    outs = []
    for s, seed in ((a, 5), (b, 6)):  # the step generators differ; without churn they are never drawn from
        x, gen = x0.clone(), make_generator(seed)
        s.set_timesteps(12)
        for t in s.timesteps:
            c_skip, c_out, _, _ = s.precondition(torch.as_tensor(float(t), dtype=torch.float64))
            x = s.step((0.3 - c_skip * x) / c_out, t, x, generator=gen).prev_sample
        outs.append(x)
    assert torch.equal(outs[0], outs[1])


def test_edm_churn_schedule_follows_alg2():
    """γ_i = min(S_churn/N, √2 − 1) inside [S_tmin, S_tmax], 0 outside; each step starts at σ̂_i = (1 + γ_i)σ_i."""
    s = EDMScheduler(num_steps=10, s_churn=2.0, s_tmin=0.05, s_tmax=10.0)
    g = s.churn_gammas(10)
    inside = (s.sigmas[:-1] >= 0.05) & (s.sigmas[:-1] <= 10.0)
    assert inside.any() and (~inside).any()
    assert torch.allclose(g[inside], torch.full_like(g[inside], 0.2)) and (g[~inside] == 0).all()
    assert torch.allclose(s.sigmas_hat[:-1], s.sigmas[:-1] * (1 + g))
    firsts = [s.timesteps[0]] + [s.timesteps[k] for k in range(2, len(s.timesteps), 2)]
    assert torch.allclose(torch.stack(firsts), s.sigmas_hat[:-1])  # Heun: σ̂_i, σ_{i+1}, σ̂_{i+1}, …
    assert s.stochastic
    assert EDMScheduler(num_steps=4, s_churn=100.0).churn_gammas(4).max().item() == pytest.approx(math.sqrt(2) - 1)


def test_edm_churn_samples_the_right_distribution_and_is_reproducible():
    """With the exact denoiser, the stochastic sampler still reproduces N(mu, sd²); the same generator
    seed gives the same samples, another seed other samples."""
    s = EDMScheduler(num_steps=40, s_churn=10.0)
    x = _edm_churn_sample(s)
    assert x.mean().item() == pytest.approx(-0.4, abs=0.03)
    assert x.std().item() == pytest.approx(0.5, rel=0.04)
    assert torch.equal(x, _edm_churn_sample(s))
    assert not torch.equal(x, _edm_churn_sample(s, seed=2))


def test_edm_churn_config_round_trip_and_old_configs_load():
    s = EDMScheduler(num_steps=9, s_churn=4.0, s_tmin=0.01, s_tmax=20.0, s_noise=1.003)
    r = make_scheduler(**s.config)
    assert r.config == s.config and torch.equal(r.timesteps, s.timesteps)
    old = {k: v for k, v in EDMScheduler().config.items() if not k.startswith("s_")}  # a pre-churn checkpoint
    assert make_scheduler(**old).s_churn == 0.0


# ---------------------------------------------------------------------- errors
@pytest.mark.parametrize("make", [
    lambda: EDMScheduler(num_steps=0),
    lambda: EDMScheduler().set_timesteps(-3),
    lambda: EDMScheduler(solver="rk4"),
    lambda: DDPMScheduler(prediction_type="noise"),
    lambda: DDPMScheduler(beta_schedule="quadratic"),
    lambda: DDPMScheduler().set_timesteps(0),
    lambda: DDPMScheduler().set_timesteps(1001),
    lambda: DDIMScheduler(eta=-0.1),
    lambda: make_scheduler("dpm"),
    lambda: make_scheduler("edm", gamma=2),
    lambda: EDMScheduler(s_churn=-1.0),
    lambda: EDMScheduler(s_churn=float("nan")),
    lambda: EDMScheduler(s_noise=0.0),
    lambda: EDMScheduler(s_tmin=1.0, s_tmax=0.5),
])
def test_bad_arguments_raise_skellab_error(make):
    with pytest.raises(SkellabError):
        make()


def test_step_with_a_foreign_timestep_raises():
    s = DDIMScheduler()
    s.set_timesteps(10)
    with pytest.raises(SkellabError, match="not in this scheduler"):
        s.step(torch.zeros(1, 2, 3), 998, torch.zeros(1, 2, 3))
    e = EDMScheduler(num_steps=3)
    with pytest.raises(SkellabError, match="expected"):
        e.step(torch.zeros(1, 2, 3), 1.0, torch.zeros(1, 2, 3))


def test_config_round_trip():
    for s in (EDMScheduler(num_steps=7, solver="euler"), DDPMScheduler(beta_schedule="cosine"),
              DDIMScheduler(eta=0.5, prediction_type="v_prediction", num_steps=25)):
        r = make_scheduler(**s.config)
        assert type(r) is type(s) and r.config == s.config
        assert torch.equal(r.timesteps, s.timesteps)
