"""Token denoiser, guidance, sampling loop, a tiny training run and checkpoints."""

import dataclasses

import pytest
import torch

from skellab.diffusion import (
    DDIMScheduler,
    DenoiserConfig,
    EDMScheduler,
    LatentDiffusion,
    LatentNormalizer,
    TokenDenoiser,
    guided_output,
    inpaint_latents,
    load_diffusion,
    make_synthetic_latents,
    sample_latents,
    save_diffusion,
)
from skellab.errors import SkellabError
from skellab.runtime import make_generator
from skellab.train import train_diffusion


def _random_model(num_classes=3, seed=0):
    torch.manual_seed(seed)
    model = TokenDenoiser(config=DenoiserConfig.tiny(num_classes=num_classes)).eval()
    with torch.no_grad():  # the zero-initialised gates/outputs would make every test trivial
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return model


def test_presets_and_shapes():
    tiny, default, paper = DenoiserConfig.tiny(), DenoiserConfig.default(), DenoiserConfig.paper()
    assert (tiny.width, tiny.depth) == (64, 2) and (default.width, default.depth, default.heads) == (256, 6, 8)
    assert paper.width == 512 and paper.time_embed_dim == 128 and paper.class_dropout == 0.2
    model = _random_model()
    out = model(torch.randn(2, 10, 16), torch.tensor([0.3, -1.0]), torch.tensor([0, 2]))
    assert out.shape == (2, 10, 16)
    assert DenoiserConfig.from_dict(tiny.to_dict()) == tiny
    with pytest.raises(SkellabError):
        DenoiserConfig(width=30, heads=4)
    with pytest.raises(SkellabError):
        model(torch.randn(2, 10, 15), torch.zeros(2), None)
    with pytest.raises(SkellabError):
        model(torch.randn(2, 10, 16), torch.zeros(2), torch.tensor([0, 3]))  # 3 = null, not a class


def test_untrained_denoiser_outputs_zero():
    model = TokenDenoiser(config=DenoiserConfig.tiny(num_classes=2))
    assert model(torch.randn(2, 5, 16), torch.zeros(2), torch.tensor([0, 1])).abs().max() == 0


def test_permutation_equivariance():
    model = _random_model()
    x = torch.randn(3, 17, 16)
    t, c = torch.tensor([5.0, 100.0, 700.0]), torch.tensor([0, 1, 2])
    perm = torch.randperm(17)
    with torch.no_grad():
        out, out_perm = model(x, t, c), model(x[:, perm], t, c)
    assert torch.allclose(out[:, perm], out_perm, atol=1e-5)
    assert not torch.allclose(out[:, perm], out, atol=1e-3)  # it really depends on the tokens


def test_class_and_time_conditioning_change_the_output():
    model = _random_model()
    x = torch.randn(2, 8, 16)
    with torch.no_grad():
        a = model(x, torch.tensor([1.0, 1.0]), torch.tensor([0, 0]))
        b = model(x, torch.tensor([1.0, 1.0]), torch.tensor([1, 1]))
        c = model(x, torch.tensor([2.0, 2.0]), torch.tensor([0, 0]))
        null = model(x, torch.tensor([1.0, 1.0]), None)
        neg = model(x, torch.tensor([1.0, 1.0]), torch.tensor([-1, -1]))
    assert not torch.allclose(a, b) and not torch.allclose(a, c)
    assert torch.allclose(null, neg)


def test_cfg_weights():
    model = _random_model()
    x, t, c = torch.randn(4, 6, 16), torch.full((4,), 0.2), torch.tensor([0, 1, 2, 0])
    with torch.no_grad():
        cond, uncond = model(x, t, c), model(x, t, None)
        assert torch.allclose(guided_output(model, x, t, c, 0.0), uncond, atol=1e-6)
        assert torch.allclose(guided_output(model, x, t, c, 1.0), cond, atol=1e-6)
        assert torch.allclose(guided_output(model, x, t, c, 2.5), uncond + 2.5 * (cond - uncond), atol=1e-5)


def test_sampling_w0_equals_unconditional_and_is_deterministic():
    model, sched = _random_model(), EDMScheduler(num_steps=4)
    kw = dict(num=3, num_tokens=6, steps=4)
    a = sample_latents(model, sched, class_index=1, guidance=0.0, generator=make_generator(0), **kw)
    b = sample_latents(model, sched, class_index=None, generator=make_generator(0), **kw)
    c, traj = sample_latents(model, sched, class_index=1, guidance=0.0, generator=make_generator(0),
                             return_trajectory=True, **kw)
    assert a.shape == (3, 6, 16) and torch.allclose(a, b) and torch.equal(a, c)
    assert len(traj) == len(sched.timesteps) == 7 and traj[-1].shape == (3, 6, 16)
    d = sample_latents(model, sched, class_index=1, guidance=2.0, generator=make_generator(0), **kw)
    assert not torch.allclose(a, d)


def test_every_sampler_entry_point_defaults_to_one_guidance_weight():
    """One constant decides the default w everywhere: library functions, the baseline and both CLI commands."""
    import inspect

    from skellab.baselines.point_diffusion import sample_point_clouds
    from skellab.cli.main import build_parser
    from skellab.diffusion import DEFAULT_GUIDANCE, LatentDiffusion, inpaint_latents
    from skellab.evaluation.fresh import evaluate_fresh
    from skellab.evaluation.generation import evaluate_generation
    from skellab.generation import generate_from_models, generate_organs, iter_generated

    for fn in (sample_latents, inpaint_latents, LatentDiffusion.sample, LatentDiffusion.complete, sample_point_clouds,
               generate_from_models, generate_organs, iter_generated, evaluate_fresh, evaluate_generation):
        assert inspect.signature(fn).parameters["guidance"].default == DEFAULT_GUIDANCE, fn.__qualname__
    # autoguidance: off in the low-level loops, "the checkpoint's own weight" (None) everywhere a model is at hand
    for fn in (sample_latents, inpaint_latents):
        assert inspect.signature(fn).parameters["autoguidance"].default == 1.0, fn.__qualname__
    for fn in (LatentDiffusion.sample, LatentDiffusion.complete, generate_from_models, generate_organs, iter_generated,
               evaluate_fresh, evaluate_generation):
        assert inspect.signature(fn).parameters["autoguidance"].default is None, fn.__qualname__
    # precision: "auto" (bf16 only where the device multiplies it natively) in every sampler and both commands
    for fn in (sample_latents, inpaint_latents, LatentDiffusion.sample, LatentDiffusion.complete, sample_point_clouds,
               generate_from_models, generate_organs, iter_generated, evaluate_fresh, evaluate_generation):
        assert inspect.signature(fn).parameters["precision"].default == "auto", fn.__qualname__
    parser = build_parser()
    for argv in (["generate", "--organ", "kidney", "--out", "x"], ["evaluate", "--out", "x.json"]):
        args = parser.parse_args(argv)
        assert args.guidance == DEFAULT_GUIDANCE and args.autoguidance is None and args.precision == "auto"


def test_sampling_precision_bf16_is_close_to_fp32_and_auto_follows_the_cpu(monkeypatch):
    """The network passes run in bf16 autocast when asked (or on "auto" with native bf16); the sampler's own steps
    stay fp32, so the tokens come back fp32, close to the exact loop's; kept tokens of an inpainting stay exact."""
    from skellab import runtime

    model = _random_model()
    kw = dict(num=2, num_tokens=6, steps=4, class_index=1, guidance=2.0)
    exact = sample_latents(model, EDMScheduler(num_steps=4), generator=make_generator(0), precision="fp32", **kw)
    half = sample_latents(model, EDMScheduler(num_steps=4), generator=make_generator(0), precision="bf16", **kw)
    assert half.dtype == exact.dtype == torch.float32
    assert not torch.equal(half, exact) and float((half - exact).abs().max()) < 0.1 * float(exact.abs().max())
    monkeypatch.setattr(runtime, "cpu_has_fast_bf16", lambda: False)
    assert torch.equal(sample_latents(model, EDMScheduler(num_steps=4), generator=make_generator(0), **kw), exact)
    monkeypatch.setattr(runtime, "cpu_has_fast_bf16", lambda: True)
    assert torch.equal(sample_latents(model, EDMScheduler(num_steps=4), generator=make_generator(0), **kw), half)
    known, mask = torch.randn(6, 16), torch.tensor([True, True, False, False, False, True])
    done = inpaint_latents(model, EDMScheduler(num_steps=3), known, mask, num=2, class_index=1, resample=2,
                           generator=make_generator(0), precision="bf16")
    assert torch.equal(done[:, mask], known[mask].expand(2, -1, -1))
    for fn in (lambda: sample_latents(model, EDMScheduler(num_steps=4), precision="fp16", **kw),
               lambda: inpaint_latents(model, EDMScheduler(num_steps=3), known, mask, num=1, precision="half")):
        with pytest.raises(SkellabError, match="unknown precision"):
            fn()


def test_sampling_with_churn_is_reproducible_and_differs_from_the_ode():
    """A stochastic (S_churn > 0) EDM sampler: the same generator seed gives the same tokens, and they are not
    the deterministic sampler's."""
    model = _random_model()
    kw = dict(num=3, num_tokens=6, steps=4, class_index=1)
    ode = sample_latents(model, EDMScheduler(num_steps=4), generator=make_generator(0), **kw)
    sde = [sample_latents(model, EDMScheduler(num_steps=4, s_churn=2.0), generator=make_generator(0), **kw)
           for _ in range(2)]
    assert torch.equal(sde[0], sde[1]) and not torch.allclose(ode, sde[0])


def test_autoguidance_mixes_the_main_and_the_guide_network():
    """With ``guide`` and weight a, the output is guide + a·(main − guide), both conditioned on the class
    (added to classifier-free guidance when w ≠ 1); a = 1 is the main network alone; a guide of other tokens
    or classes is refused."""
    main, weak = _random_model(seed=0), _random_model(seed=1)
    x, t, c = torch.randn(4, 6, 16), torch.full((4,), 0.2), torch.tensor([0, 1, 2, 0])
    with torch.no_grad():
        m, u, g = main(x, t, c), main(x, t, None), weak(x, t, c)
        assert torch.allclose(guided_output(main, x, t, c, 1.0, weak, 2.5), g + 2.5 * (m - g), atol=1e-5)
        assert torch.equal(guided_output(main, x, t, c, 1.0, weak, 1.0), m)
        both = guided_output(main, x, t, c, 2.0, weak, 1.5)
        assert torch.allclose(both, u + 2.0 * (m - u) + 0.5 * (m - g), atol=1e-5)
    kw = dict(num=2, num_tokens=6, steps=3, class_index=1)
    run = lambda **k: sample_latents(main, EDMScheduler(num_steps=3), generator=make_generator(0), **kw, **k)  # noqa: E731
    ag, cfg, off = run(guide=weak, autoguidance=2.0), run(guidance=2.0), run(guide=weak, autoguidance=1.0)
    assert not torch.allclose(ag, cfg) and not torch.allclose(ag, off) and torch.equal(off, run())
    other = TokenDenoiser(config=DenoiserConfig.tiny(num_classes=5)).eval()
    with pytest.raises(SkellabError, match="num_classes"):
        run(guide=other, autoguidance=2.0)
    with pytest.raises(SkellabError, match="autoguidance"):
        run(guide=weak, autoguidance=-1.0)


def test_normalizer_round_trip():
    x = torch.randn(10, 7, 16) * torch.linspace(0.1, 3, 16) + torch.arange(16.0)
    n = LatentNormalizer.fit(x)
    z = n.normalize(x)
    assert torch.allclose(z.reshape(-1, 16).mean(0), torch.zeros(16), atol=1e-4)
    assert torch.allclose(z.reshape(-1, 16).std(0, unbiased=False), torch.ones(16), atol=1e-4)
    assert torch.allclose(n.denormalize(z), x, atol=1e-4)
    m = LatentNormalizer.from_dict(n.to_dict())
    assert torch.equal(m.mean, n.mean) and torch.equal(m.std, n.std)
    with pytest.raises(SkellabError):
        n.normalize(torch.zeros(2, 3, 5))


@pytest.fixture(scope="module")
def trained():
    """A tiny EDM model on two well-separated synthetic classes (~5 s on 2 cores)."""
    lat, cls, protos = make_synthetic_latents(32, num_classes=2, num_tokens=16, generator=make_generator(0))
    diffusion, history = train_diffusion(lat, cls, scheduler="edm", steps=300, batch_size=32, lr=2e-3, warmup=20, schedule="constant",
                                         ema_decay=None, classes=["liver", "spleen"], generator=make_generator(1),
                                         device="cpu", progress=False)
    return diffusion, history, protos


def test_training_lowers_the_loss_and_separates_classes(trained):
    diffusion, history, protos = trained
    loss = history["loss"]
    assert len(loss) == 300 and sum(loss[-50:]) / 50 < 0.6 * sum(loss[:20]) / 20
    means = protos.mean(1)  # (2, D) class means of the data
    for c in (0, 1):
        s = diffusion.sample(8, class_index=c, steps=10, generator=make_generator(2))
        assert s.shape == (8, 16, 16)
        dist = (s.mean(dim=(0, 1)) - means).norm(dim=-1)
        assert dist[c] < 0.5 * dist[1 - c], (c, dist)
    named = diffusion.sample(2, class_index="spleen", steps=3, generator=make_generator(3))
    assert named.shape == (2, 16, 16)
    with pytest.raises(SkellabError):
        diffusion.sample(2, class_index="brain")


def test_checkpoint_round_trip_and_errors(trained, tmp_path):
    diffusion = trained[0]
    path = save_diffusion(tmp_path / "diff.pt", diffusion)
    raw = torch.load(path, weights_only=True)
    assert raw["format"] == "skellab.diffusion/1" and raw["classes"] == ["liver", "spleen"]
    back = load_diffusion(path)
    assert back.denoiser.config == diffusion.denoiser.config and back.scheduler.config == diffusion.scheduler.config
    assert back.num_tokens == 16 and back.classes == ["liver", "spleen"]
    a = diffusion.sample(2, class_index=0, steps=3, generator=make_generator(5))
    b = back.sample(2, class_index=0, steps=3, generator=make_generator(5))
    assert torch.allclose(a, b, atol=1e-6)

    with pytest.raises(SkellabError, match="not found"):
        load_diffusion(tmp_path / "missing.pt")
    bad = tmp_path / "corrupt.pt"
    bad.write_bytes(path.read_bytes()[:200])
    with pytest.raises(SkellabError, match="corrupt"):
        load_diffusion(bad)
    other = tmp_path / "other.pt"
    torch.save({"format": "skellab.autoencoder/1"}, other)
    with pytest.raises(SkellabError, match="not a skellab.diffusion/1"):
        load_diffusion(other)
    raw["config"]["width"] = 32
    torch.save(raw, other)
    with pytest.raises(SkellabError, match="do not fit"):
        load_diffusion(other)


def test_sphere_weight_weights_the_sphere_channels_of_the_training_loss():
    """DenoiserConfig.sphere_weight: per-channel weights of mean 1, spheres (xyz, r) × w relative to features; the
    training loss is the EDM-weighted MSE with those weights; 1 (the default) leaves the loss as it was."""
    from skellab.train.tasks import DenoisingTask

    cfg = DenoiserConfig.tiny(num_classes=2, sphere_weight=4.0)
    cw = cfg.channel_weights()
    assert cw.shape == (16,) and torch.isclose(cw.mean(), torch.tensor(1.0)) and torch.isclose(cw[0] / cw[4], torch.tensor(4.0))
    assert DenoiserConfig.tiny().channel_weights() is None
    with pytest.raises(SkellabError, match="sphere_weight"):
        DenoiserConfig.tiny(sphere_weight=0.0)
    g = make_generator(0)
    sched = EDMScheduler()
    batch = {"x0": torch.randn(4, 8, 16, generator=g), "noise": torch.randn(4, 8, 16, generator=g),
             "t": torch.rand(4, generator=g) + 0.1, "class_index": None}
    task = DenoisingTask(torch.zeros(1, 8, 16), None, sched, lambda: None)
    losses = {}
    for w in (1.0, 4.0):
        torch.manual_seed(0)
        model = TokenDenoiser(config=DenoiserConfig.tiny(num_classes=2, sphere_weight=w))
        with torch.no_grad():
            for p in model.parameters():
                p.add_(0.1 * torch.randn_like(p))
        losses[w] = float(task.compute_loss(model, batch)["total"])
        x_in, cond = sched.scale_model_input(sched.add_noise(batch["x0"], batch["noise"], batch["t"]), batch["t"])
        err = (model(x_in, cond, None) - sched.training_target(batch["x0"], batch["noise"], batch["t"])) ** 2
        weights = model.config.channel_weights()
        err = err if weights is None else err * weights
        manual = (sched.training_weight(batch["t"]).reshape(-1, 1, 1) * err).mean()
        assert losses[w] == pytest.approx(float(manual), rel=1e-5)
    assert losses[1.0] != pytest.approx(losses[4.0], rel=1e-3)


def test_a_class_without_training_latents_is_refused_and_the_record_travels(trained, tmp_path):
    """A diffusion model trained on latents of some of its autoencoder's classes records them: the others have an
    untrained class embedding, so naming one is a one-line error; the record survives save/load and a record naming a
    class the checkpoint lacks is refused on load."""
    diffusion = dataclasses.replace(trained[0], trained_classes=["liver"])
    assert diffusion.organs == ["liver"] and trained[0].organs == ["liver", "spleen"]
    with pytest.raises(SkellabError, match="'spleen' had no training shapes"):
        diffusion.sample(1, class_index="spleen", steps=2)
    path = save_diffusion(tmp_path / "d.pt", diffusion)
    back = load_diffusion(path)
    assert back.trained_classes == ["liver"] and back.organs == ["liver"]
    assert torch.equal(back.sample(1, class_index="liver", steps=2, generator=make_generator(0)),
                       trained[0].sample(1, class_index="liver", steps=2, generator=make_generator(0)))
    raw = torch.load(path, weights_only=True)
    raw["trained_classes"] = ["liver", "brain"]
    torch.save(raw, tmp_path / "bad.pt")
    with pytest.raises(SkellabError, match="trained_classes"):
        load_diffusion(tmp_path / "bad.pt")


def test_a_guidance_interval_runs_the_guide_only_at_the_noise_levels_it_names(trained, tmp_path):
    """``guide_interval`` (lo, hi): autoguidance only at the calls whose σ lies in lo < σ ≤ hi, the plain model
    elsewhere, and the guide is not even run there; it travels in the checkpoint and a call may override it."""
    from skellab.diffusion import attach_guide, call_sigma

    main, weak = _random_model(seed=0), _random_model(seed=1)
    seen = []
    weak.register_forward_hook(lambda mod, inp, out: seen.append(float(inp[1][0])))  # c_noise = ¼ ln σ
    kw = dict(num=2, num_tokens=6, steps=6, class_index=1, guide=weak, autoguidance=2.0)
    run = lambda **k: sample_latents(main, EDMScheduler(), generator=make_generator(0), **{**kw, **k})  # noqa: E731
    full, plain = run(), run(autoguidance=1.0)
    assert torch.equal(run(guide_interval=(0.0, float("inf"))), full)  # every σ > 0: the guide everywhere
    seen.clear()
    assert torch.equal(run(guide_interval=(1e3, 2e3)), plain) and not seen  # no call in it: the plain model, no guide
    sched = EDMScheduler()
    sched.set_timesteps(6)
    inside = [call_sigma(sched, t) for t in sched.timesteps if 0.3 < call_sigma(sched, t) <= 3.0]
    middle = run(guide_interval=(0.3, 3.0))
    assert 0 < len(inside) < len(sched.timesteps) and len(seen) == len(inside)
    assert torch.allclose(torch.tensor(seen), 0.25 * torch.tensor(inside).log(), atol=1e-5)
    assert not torch.allclose(middle, full) and not torch.allclose(middle, plain)
    for bad in ((2.0, 1.0), (-1.0, 2.0), (float("nan"), 1.0), "ab", (1.0,)):
        with pytest.raises(SkellabError, match="guide_interval"):
            run(guide_interval=bad)
    # in a model: stored, used by default, overridden per call
    diffusion, _, _ = trained
    weak_model = LatentDiffusion(TokenDenoiser(config=dataclasses.replace(diffusion.denoiser.config, width=16)).eval(),
                                 diffusion.scheduler, diffusion.normalizer, list(diffusion.classes), diffusion.num_tokens)
    with torch.no_grad():
        for p in weak_model.denoiser.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=make_generator(3)))
    everywhere = attach_guide(diffusion, weak_model, 2.0)
    limited = attach_guide(diffusion, weak_model, 2.0, interval=(0.3, 3.0))
    back = load_diffusion(save_diffusion(tmp_path / "iv.pt", limited))
    assert back.guide_interval == (0.3, 3.0) and everywhere.guide_interval is None
    s = dict(class_index="liver", steps=6)
    a = back.sample(2, generator=make_generator(0), **s)
    assert torch.equal(a, limited.sample(2, generator=make_generator(0), **s))
    assert not torch.allclose(a, everywhere.sample(2, generator=make_generator(0), **s))
    assert torch.equal(back.sample(2, generator=make_generator(0), guide_interval=None, **s),
                       everywhere.sample(2, generator=make_generator(0), **s))
    keep = torch.arange(diffusion.num_tokens) < 4
    done = back.complete(a[0], keep, 2, class_index="liver", steps=3, resample=1, generator=make_generator(1))
    assert torch.equal(done[:, keep], a[0][keep].expand(2, -1, -1))
    ckpt = torch.load(tmp_path / "iv.pt", weights_only=True)
    ckpt["guide"]["interval"] = [3.0, 0.3]
    torch.save(ckpt, tmp_path / "bad.pt")
    with pytest.raises(SkellabError, match="guide_interval"):
        load_diffusion(tmp_path / "bad.pt")
    with pytest.raises(SkellabError, match="guide_interval"):
        attach_guide(diffusion, weak_model, 2.0, interval=(1.0, 1.0))


def test_a_guide_network_travels_in_the_checkpoint(trained, tmp_path):
    """attach_guide + save/load keep the guide and its weight; sampling uses them by default, autoguidance=1
    turns them off; a model without a guide refuses a weight; a corrupt guide entry is a one-line error."""
    from skellab.diffusion import attach_guide

    diffusion, _, _ = trained
    torch.manual_seed(3)
    small = TokenDenoiser(config=dataclasses.replace(diffusion.denoiser.config, width=16, depth=1)).eval()
    with torch.no_grad():  # untrained gates are zero: give the guide an output of its own
        for p in small.parameters():
            p.add_(0.1 * torch.randn_like(p))
    weak = LatentDiffusion(small, diffusion.scheduler, diffusion.normalizer, list(diffusion.classes),
                           diffusion.num_tokens)
    guided = attach_guide(diffusion, weak, 2.0, {"source": "test"})
    path = save_diffusion(tmp_path / "g.pt", guided)
    back = load_diffusion(path)
    assert back.autoguidance == 2.0 and back.guide_info["source"] == "test"
    assert back.guide_info["parameters"] == sum(p.numel() for p in weak.denoiser.parameters())
    kw = dict(class_index="liver", steps=3)
    a = back.sample(2, generator=make_generator(0), **kw)
    assert torch.equal(a, guided.sample(2, generator=make_generator(0), **kw))
    assert torch.equal(back.sample(2, generator=make_generator(0), autoguidance=1.0, **kw),
                       diffusion.sample(2, generator=make_generator(0), **kw))
    assert not torch.allclose(a, diffusion.sample(2, generator=make_generator(0), **kw))
    with pytest.raises(SkellabError, match="no guide network"):
        diffusion.sample(2, autoguidance=2.0, **kw)
    other = LatentDiffusion(weak.denoiser, diffusion.scheduler, diffusion.normalizer, ["liver", "kidney"], 16)
    with pytest.raises(SkellabError, match="other classes"):
        attach_guide(diffusion, other, 2.0)
    ckpt = torch.load(path, weights_only=True)
    ckpt["guide"]["autoguidance"] = float("nan")
    torch.save(ckpt, tmp_path / "bad.pt")
    with pytest.raises(SkellabError, match="autoguidance"):
        load_diffusion(tmp_path / "bad.pt")
    ckpt["guide"]["autoguidance"] = 2.0
    ckpt["guide"]["state_dict"].popitem()
    torch.save(ckpt, tmp_path / "bad2.pt")
    with pytest.raises(SkellabError, match="guide"):
        load_diffusion(tmp_path / "bad2.pt")


def test_classes_can_carry_their_own_autoguidance_weight(trained, tmp_path):
    """with_class_autoguidance: a named class samples with its own guide weight by default (exactly as with that
    weight passed), the others with the model's; an explicit weight wins; the weights travel in the checkpoint and
    through release_class_autoguidance; a batch mixing classes of different weights, unknown classes, bad weights,
    weights without a guide and a corrupt stored entry are one-line errors."""
    from skellab.diffusion import attach_guide, with_class_autoguidance
    from skellab.train.release import release_class_autoguidance

    diffusion, _, _ = trained
    torch.manual_seed(4)
    small = TokenDenoiser(config=dataclasses.replace(diffusion.denoiser.config, width=16, depth=1)).eval()
    with torch.no_grad():
        for p in small.parameters():
            p.add_(0.1 * torch.randn_like(p))
    weak = LatentDiffusion(small, diffusion.scheduler, diffusion.normalizer, list(diffusion.classes),
                           diffusion.num_tokens)
    guided = attach_guide(diffusion, weak, 1.5)
    per_class = with_class_autoguidance(guided, {"liver": 3.0})
    assert per_class.class_autoguidance == {"liver": 3.0} and guided.class_autoguidance == {}
    assert per_class.guide is guided.guide  # shared, not copied
    assert per_class.guiding(None, "liver")[1] == 3.0 and per_class.guiding(None, "spleen")[1] == 1.5
    assert per_class.guiding(2.0, "liver")[1] == 2.0 and per_class.guiding()[1] == 1.5

    def draw(model, organ, **kw):
        return model.sample(2, class_index=organ, steps=3, generator=make_generator(0), **kw)

    assert torch.equal(draw(per_class, "liver"), draw(guided, "liver", autoguidance=3.0))
    assert not torch.allclose(draw(per_class, "liver"), draw(guided, "liver"))
    assert torch.equal(draw(per_class, "spleen"), draw(guided, "spleen"))
    assert torch.equal(draw(per_class, "liver", autoguidance=1.5), draw(guided, "liver"))
    known = draw(per_class, "liver")[0]
    keep = torch.arange(diffusion.num_tokens) < 4
    done = per_class.complete(known, keep, 2, class_index="liver", steps=3, resample=1, generator=make_generator(1))
    assert torch.equal(done, guided.complete(known, keep, 2, class_index="liver", steps=3, resample=1,
                                             generator=make_generator(1), autoguidance=3.0))
    with pytest.raises(SkellabError, match="different autoguidance weights"):
        per_class.sample(2, class_index=torch.tensor([0, 1]), steps=2)
    # a batch of one class, or an explicit weight, is fine
    per_class.sample(2, class_index=torch.tensor([1, 1]), steps=2)
    per_class.sample(2, class_index=torch.tensor([0, 1]), steps=2, autoguidance=2.0)

    back = load_diffusion(save_diffusion(tmp_path / "cw.pt", per_class))
    assert back.class_autoguidance == {"liver": 3.0} and back.autoguidance == 1.5
    assert torch.equal(draw(back, "liver"), draw(per_class, "liver"))
    assert "class_weights" not in torch.load(save_diffusion(tmp_path / "plain.pt", guided),
                                             weights_only=True)["guide"]
    assert attach_guide(per_class, weak, 2.0).class_autoguidance == {}  # a new guide: its weights are measured anew

    for bad, match in (({"kidney": 2.0}, "unknown class 'kidney'"), ({"liver": -1.0}, "liver.*autoguidance"),
                       ({"liver": float("nan")}, "autoguidance"), (["liver"], "map class names")):
        with pytest.raises(SkellabError, match=match):
            with_class_autoguidance(guided, bad)
    with pytest.raises(SkellabError, match="need a guide"):
        with_class_autoguidance(diffusion, {"liver": 2.0})
    assert with_class_autoguidance(diffusion, {"liver": 1.0}).guiding(None, "liver") == (None, 1.0)
    ckpt = torch.load(tmp_path / "cw.pt", weights_only=True)
    ckpt["guide"]["class_weights"] = {"liver": "strong"}
    torch.save(ckpt, tmp_path / "bad.pt")
    with pytest.raises(SkellabError, match="bad.pt.*autoguidance"):
        load_diffusion(tmp_path / "bad.pt")

    # the release helper rewrites a shipped file in place and records the weights in its index
    wdir = tmp_path / "weights"
    wdir.mkdir()
    save_diffusion(wdir / "diffusion.pt", guided)
    (wdir / "diffusion.json").write_text('{"name": "diffusion", "storage": "fp32", "guide": {"autoguidance": 1.5}}')
    index = release_class_autoguidance("diffusion", {"liver": 3.0}, weights_dir=wdir, info={"chosen_by": "test"})
    assert index["guide"] == {"autoguidance": 1.5, "class_weights": {"liver": 3.0},
                              "class_weights_info": {"chosen_by": "test"}}
    assert index["bytes"] == (wdir / "diffusion.pt").stat().st_size
    assert torch.equal(draw(load_diffusion(wdir / "diffusion.pt"), "liver"), draw(per_class, "liver"))


def test_ddpm_training_and_ddim_sampling_run():
    lat, cls, _ = make_synthetic_latents(4, num_classes=2, num_tokens=8, generator=make_generator(0))
    diffusion, history = train_diffusion(lat, cls, scheduler="ddpm", steps=5, batch_size=4, progress=False,
                                         device="cpu", generator=make_generator(0))
    assert diffusion.scheduler.name == "ddpm" and len(history["loss"]) == 5
    diffusion.scheduler = DDIMScheduler.from_ddpm(diffusion.scheduler, num_steps=5)
    assert diffusion.scheduler.prediction_type == "epsilon" and diffusion.scheduler.num_steps == 5
    assert diffusion.sample(2, class_index=1, steps=5, generator=make_generator(0)).shape == (2, 8, 16)


def test_train_diffusion_rejects_bad_input():
    lat = torch.randn(4, 8, 16)
    with pytest.raises(SkellabError):
        train_diffusion(lat[0], None, steps=1, progress=False)
    with pytest.raises(SkellabError):
        train_diffusion(lat, torch.tensor([0, 1]), steps=1, progress=False)
    with pytest.raises(SkellabError):
        train_diffusion(lat, None, config=DenoiserConfig.tiny(token_dim=12), steps=1, progress=False)
    with pytest.raises(SkellabError):
        train_diffusion(lat, None, scheduler="sde", steps=1, progress=False)


def test_inpainting_keeps_the_given_tokens_and_completes_the_rest_in_class(trained):
    """RePaint-style completion: kept entries exact, the rest differs between draws and follows the class."""
    diffusion, _, protos = trained
    K = protos.shape[1]
    known = protos[1].clone()  # a clean "spleen" token set (class 1)
    keep = torch.zeros(K, dtype=torch.bool)
    keep[: K // 2] = True  # the user keeps half the tokens
    out = diffusion.complete(known, keep, 6, class_index=1, steps=10, resample=3, generator=make_generator(4))
    assert out.shape == (6, K, 16) and not out.requires_grad  # sampled under no_grad: no autograd graph kept
    assert torch.equal(out[:, keep], known[keep].expand(6, -1, -1))  # kept tokens do not move at all
    free = out[:, ~keep]
    assert free.std(dim=0).mean() > 0.02  # completions differ from one another
    means = protos.mean(1)  # the completed tokens belong to the class of the kept ones
    d = (free.mean(dim=(0, 1)) - means).norm(dim=-1)
    assert d[1] < d[0], d
    again = diffusion.complete(known, keep, 6, class_index=1, steps=10, resample=3, generator=make_generator(4))
    assert torch.equal(again, out)  # seeded
    # skeleton-only editing: keep xyz + r of every token, let diffusion choose the features
    ch = torch.zeros(K, 16, dtype=torch.bool)
    ch[:, :4] = True
    feat = diffusion.complete(known, ch, 2, class_index=1, steps=6, resample=1, generator=make_generator(5))
    assert torch.equal(feat[..., :4], known[:, :4].expand(2, -1, -1)) and not torch.equal(feat[0, :, 4:], feat[1, :, 4:])
    with pytest.raises(SkellabError, match="mask"):
        diffusion.complete(known, keep[:3], 1)
    with pytest.raises(SkellabError, match="EDM"):
        from skellab.diffusion import inpaint_latents

        inpaint_latents(diffusion.denoiser, DDIMScheduler(), known, keep, num=1)


def test_morton_token_order_sorts_along_the_curve_and_adds_positions():
    """token_order="morton": tokens sorted by Z-order of their centres, learned positions, still trainable,
    and inpainting returns the kept tokens at the caller's indices."""
    from skellab.diffusion import order_tokens, sort_tokens

    # the 8 corners of a cube: Morton order is x fastest, then y, then z
    corners = torch.tensor([[x, y, z] for z in (-1.0, 1.0) for y in (-1.0, 1.0) for x in (-1.0, 1.0)])
    shuffled = torch.cat([corners[torch.randperm(8, generator=make_generator(0))], torch.zeros(8, 1)], -1)
    assert torch.equal(sort_tokens(shuffled, "morton")[:, :3], corners)
    assert torch.equal(order_tokens(shuffled, "set"), torch.arange(8))
    with pytest.raises(SkellabError, match="token order"):
        order_tokens(shuffled, "hilbert")
    with pytest.raises(SkellabError, match="num_tokens"):
        TokenDenoiser(config=DenoiserConfig.tiny(token_order="morton"))
    model = TokenDenoiser(config=DenoiserConfig.tiny(token_order="morton", num_tokens=8)).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    x, perm = torch.randn(1, 8, 16), torch.randperm(8, generator=make_generator(1))
    t = torch.tensor([0.3])
    assert not torch.allclose(model(x[:, perm], t), model(x, t)[:, perm], atol=1e-4)  # positions matter now
    with pytest.raises(SkellabError, match="orders 8 tokens"):
        model(torch.randn(1, 9, 16), t)
    lat, cls, protos = make_synthetic_latents(16, num_classes=2, num_tokens=8, generator=make_generator(0))
    diffusion, history = train_diffusion(lat, cls, steps=40, batch_size=16, lr=2e-3, warmup=5, schedule="constant",
                                         ema_decay=None, token_order="morton", generator=make_generator(1),
                                         device="cpu", progress=False)
    assert diffusion.denoiser.config.num_tokens == 8 and diffusion.denoiser.position is not None
    assert history["loss"][-1] < history["loss"][0]
    known = protos[0].clone()
    keep = torch.zeros(8, dtype=torch.bool)
    keep[[0, 5]] = True
    out = diffusion.complete(known, keep, 3, class_index=0, steps=4, resample=1, generator=make_generator(2))
    assert torch.equal(out[:, keep], known[keep].expand(3, -1, -1))


def test_pooled_feature_norm_keeps_near_constant_feature_channels_near_constant():
    """DenoiserConfig.feature_norm="pooled": the feature channels share one mean and std (of all their values), so
    a channel that is nearly the same on every token is not blown up to unit variance; spheres stay per channel;
    the in-memory recipe uses it."""
    g = make_generator(0)
    tokens = torch.randn(6, 32, 16, generator=g)
    tokens[..., :3] *= 0.3
    pattern = torch.linspace(-1.5, 1.5, 12)  # every token carries the same 12 features, plus a little noise
    tokens[..., 4:] = pattern + 0.01 * torch.randn(6, 32, 12, generator=g)
    per_channel = LatentNormalizer.fit(tokens)
    pooled = LatentNormalizer.fit(tokens, shared=DenoiserConfig.tiny(feature_norm="pooled").shared_channels())
    assert torch.equal(pooled.mean[:4], per_channel.mean[:4]) and torch.equal(pooled.std[:4], per_channel.std[:4])
    assert per_channel.normalize(tokens)[..., 4:].std(dim=(0, 1)).min() > 0.99  # noise scaled up to unit variance
    z = pooled.normalize(tokens)[..., 4:]
    assert z.std(dim=(0, 1)).max() < 0.02  # ... or kept at its size relative to the pattern
    assert torch.allclose(z.mean(dim=(0, 1)), (pattern - pattern.mean()) / pattern.std(unbiased=False), atol=0.02)
    assert torch.allclose(pooled.denormalize(pooled.normalize(tokens)), tokens, atol=1e-5)
    assert DenoiserConfig.tiny().shared_channels() is None
    with pytest.raises(SkellabError, match="feature_norm"):
        DenoiserConfig.tiny(feature_norm="global")
    with pytest.raises(SkellabError, match="select none"):
        LatentNormalizer.fit(tokens[..., :4], shared=slice(4, None))
    diff, _ = train_diffusion(tokens, preset="tiny", steps=2, feature_norm="pooled", device="cpu", progress=False)
    assert torch.allclose(diff.normalizer.std, pooled.std)


def test_sphere_frequencies_add_sin_cos_of_the_sphere_channels_and_keep_the_set_model(tmp_path):
    """sphere_frequencies=L: sin/cos of xyz and r at L octaves join the input; still a set model, still trainable,
    and a checkpoint restores it exactly."""
    from skellab.diffusion import fourier_inputs

    x = torch.randn(2, 5, 16)
    assert torch.equal(fourier_inputs(x, 0), x)
    f = fourier_inputs(x, 3)
    assert f.shape == (2, 5, 16 + 8 * 3) and torch.equal(f[..., :16], x)
    assert torch.allclose(f[..., 16 + 3 * 1 + 1], torch.sin(2 * torch.pi * x[..., 1]), atol=1e-5)  # y, octave 1
    assert torch.allclose(f[..., 16 + 12], torch.cos(torch.pi * x[..., 0]), atol=1e-5)  # cos of x, octave 0
    with pytest.raises(SkellabError, match="sphere_frequencies"):
        DenoiserConfig.tiny(sphere_frequencies=17)
    model = TokenDenoiser(config=DenoiserConfig.tiny(sphere_frequencies=4)).eval()
    assert model.input.in_features == 16 + 32
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    x, perm, t = torch.randn(1, 8, 16), torch.randperm(8, generator=make_generator(1)), torch.tensor([0.3])
    assert torch.allclose(model(x[:, perm], t), model(x, t)[:, perm], atol=1e-5)  # permutation-equivariant
    lat, cls, _ = make_synthetic_latents(16, num_classes=2, num_tokens=8, generator=make_generator(0))
    diffusion, history = train_diffusion(lat, cls, steps=40, batch_size=16, lr=2e-3, warmup=5, schedule="constant",
                                         ema_decay=None, sphere_frequencies=4, generator=make_generator(1),
                                         device="cpu", progress=False)
    assert diffusion.denoiser.config.sphere_frequencies == 4
    assert history["loss"][-1] < history["loss"][0]
    back = load_diffusion(save_diffusion(tmp_path / "f.pt", diffusion))
    assert back.denoiser.config == diffusion.denoiser.config
    a = diffusion.sample(2, class_index=0, steps=3, generator=make_generator(5))
    assert torch.allclose(a, back.sample(2, class_index=0, steps=3, generator=make_generator(5)), atol=1e-6)


def test_bf16_weight_storage_halves_the_file_and_loads_into_fp32(trained, tmp_path):
    """storage="bf16": weights rounded to bfloat16 on disk (about half the bytes), loaded back as fp32 parameters
    equal to the rounded ones, samples within bf16 rounding of the fp32 model's; an unknown storage is refused."""
    diffusion = trained[0]
    full = save_diffusion(tmp_path / "fp32.pt", diffusion)
    half = save_diffusion(tmp_path / "bf16.pt", diffusion, storage="bf16")
    assert half.stat().st_size < 0.6 * full.stat().st_size
    back = load_diffusion(half)
    for (name, p), q in zip(back.denoiser.named_parameters(), diffusion.denoiser.parameters()):
        assert p.dtype == torch.float32, name
        assert torch.equal(p, q.detach().to(torch.bfloat16).float()), name
    a = diffusion.sample(2, class_index=0, steps=3, generator=make_generator(5), precision="fp32")
    b = back.sample(2, class_index=0, steps=3, generator=make_generator(5), precision="fp32")
    assert not torch.equal(a, b) and torch.allclose(a, b, atol=0.05)
    with pytest.raises(SkellabError, match="weight storage"):
        save_diffusion(tmp_path / "x.pt", diffusion, storage="fp8")
    assert not (tmp_path / "x.pt").exists()


def test_vary_noises_given_organs_to_a_start_sigma_and_denoises_only_from_there(trained):
    """SDEdit (LatentDiffusion.vary / sample_latents(init=…)): at a small σ the tokens barely move, at a larger σ
    more; the same generator gives the same variations; bad inputs are refused with one line."""
    diffusion = trained[0]
    tokens = diffusion.sample(3, class_index=0, steps=6, generator=make_generator(0))
    small = diffusion.vary(tokens, 0.05, class_index=0, steps=6, generator=make_generator(1))
    large = diffusion.vary(tokens, 2.0, class_index=0, steps=6, generator=make_generator(1))
    again = diffusion.vary(tokens, 2.0, class_index=0, steps=6, generator=make_generator(1))
    assert small.shape == tokens.shape and torch.equal(large, again)
    moved_small = (small - tokens).abs().mean() / diffusion.normalizer.std.mean()
    moved_large = (large - tokens).abs().mean() / diffusion.normalizer.std.mean()
    assert moved_small < 0.1 and moved_large > 2 * moved_small
    sched = diffusion.scheduler
    sched.set_timesteps(6)
    first = sched.start_at(2.0)
    starts = [float(s) for s in sched.sigmas_hat[:6]]  # where each of the 6 steps starts
    assert float(sched.timesteps[first]) == max(s for s in starts if s <= 2.0) and max(starts) > 2.0
    with pytest.raises(SkellabError, match="positive"):
        sched.start_at(-1.0)
    with pytest.raises(SkellabError, match="init must be"):
        diffusion.vary(tokens[:, :5, :3], 0.5, class_index=0, steps=6)
    with pytest.raises(SkellabError, match="both or neither"):
        sample_latents(diffusion.denoiser, diffusion.scheduler, num=1, num_tokens=16, init=tokens[:1])
    with pytest.raises(SkellabError, match="EDM"):
        sample_latents(diffusion.denoiser, DDIMScheduler(), num=1, num_tokens=16, init=tokens[:1], start_sigma=0.5)


@pytest.fixture(scope="module")
def two_stage():
    """A tiny two-stage model (spheres, then features given them) on the synthetic classes (~10 s on 2 cores)."""
    from skellab.diffusion import join_stages

    lat, cls, protos = make_synthetic_latents(32, num_classes=2, num_tokens=16, generator=make_generator(0))
    kw = dict(scheduler="edm", steps=300, batch_size=32, lr=2e-3, warmup=20, schedule="constant", ema_decay=None,
              classes=["liver", "spleen"], device="cpu", progress=False)
    spheres = train_diffusion(lat, cls, channels="spheres", generator=make_generator(1), **kw)[0]
    features = train_diffusion(lat, cls, channels="features", generator=make_generator(2), **kw)[0]
    return spheres, features, join_stages(spheres, features), protos


def test_two_stage_model_samples_spheres_then_features_given_them(two_stage, tmp_path):
    from skellab.diffusion import join_stages

    spheres, features, diffusion, protos = two_stage
    assert spheres.denoiser.config.token_dim == 4 and features.denoiser.config.token_dim == 12
    assert diffusion.two_stage and diffusion.token_dim == 16
    means = protos.mean(1)
    for c in (0, 1):  # whole organs of the asked class
        s = diffusion.sample(8, class_index=c, steps=10, generator=make_generator(2))
        assert s.shape == (8, 16, 16)
        dist = (s.mean(dim=(0, 1)) - means).norm(dim=-1)
        assert dist[c] < 0.5 * dist[1 - c], (c, dist)
    # the feature stage reads each token's sphere: given a class's clean skeleton it puts each token's own
    # features back, far closer than the class's mean features (a model blind to the spheres could do no better)
    skeleton = protos[1][:, :4]
    out = diffusion.finish_skeleton(skeleton, 4, class_index="spleen", steps=10, generator=make_generator(3))
    assert torch.equal(out[..., :4], skeleton.expand(4, -1, -1))  # the given spheres exactly
    err = (out[..., 4:] - protos[1][:, 4:]).abs().mean()
    blind = (protos[1][:, 4:].mean(0) - protos[1][:, 4:]).abs().mean()
    assert err < 0.5 * blind, (float(err), float(blind))
    # inpainting: kept tokens exact; the trajectory shows the skeleton forming, then the features
    keep = torch.zeros(16, dtype=torch.bool)
    keep[:8] = True
    done = diffusion.complete(protos[1], keep, 3, class_index=1, steps=6, resample=2, generator=make_generator(4))
    assert torch.equal(done[:, keep], protos[1][keep].expand(3, -1, -1)) and done[:, ~keep].std(0).mean() > 0.02
    tokens, traj = diffusion.sample(2, class_index=0, steps=4, generator=make_generator(5), return_trajectory=True)
    assert len(traj) == 2 * 7 and torch.allclose(traj[-1], tokens, atol=1e-5)
    assert torch.allclose(traj[6][..., 4:], diffusion.normalizer.mean[4:].expand(2, 16, -1))  # features not yet drawn
    varied = diffusion.vary(tokens, 0.2, class_index=0, steps=6, generator=make_generator(6))
    assert varied.shape == tokens.shape and 0 < (varied - tokens).abs().mean() < (tokens - tokens.mean(1, True)).abs().mean()
    # one checkpoint holds both stages (and the same draws come back)
    path = save_diffusion(tmp_path / "two.pt", diffusion)
    back = load_diffusion(path)
    assert back.two_stage and back.features.config == features.denoiser.config
    assert torch.equal(back.sample(2, class_index=1, steps=3, generator=make_generator(7)),
                       diffusion.sample(2, class_index=1, steps=3, generator=make_generator(7)))
    # one stage alone cannot sample an organ, and the stages must be given in order
    with pytest.raises(SkellabError, match="join_stages"):
        spheres.sample(1, class_index=0)
    with pytest.raises(SkellabError, match="sphere stage and a feature stage"):
        join_stages(features, spheres)
    with pytest.raises(SkellabError, match="context"):
        features.denoiser(torch.randn(1, 16, 12), torch.zeros(1), None)
    with pytest.raises(SkellabError, match="spheres must be"):
        diffusion.finish_skeleton(torch.zeros(16, 3), 1)


def test_two_stage_feature_stage_can_take_fewer_steps(two_stage, tmp_path):
    """``feature_steps``: the feature stage's own number of sampler steps (joined in, stored in the checkpoint,
    overridable per call); the spheres do not depend on it (EDM's deterministic sampler)."""
    from skellab.diffusion import join_stages

    spheres, features, diffusion, protos = two_stage
    fast = join_stages(spheres, features, feature_steps=8)
    assert diffusion.feature_steps is None and fast.feature_steps == 8
    a = diffusion.sample(2, class_index=0, steps=12, generator=make_generator(5))
    b, traj = fast.sample(2, class_index=0, steps=12, generator=make_generator(5), return_trajectory=True)
    assert torch.equal(a[..., :4], b[..., :4]) and not torch.equal(a[..., 4:], b[..., 4:])
    assert len(traj) == (2 * 12 - 1) + (2 * 8 - 1)  # the sphere stage's frames, then the feature stage's
    # a call's own feature_steps wins over the model's: the same organs as the plain model's
    assert torch.equal(fast.sample(2, class_index=0, steps=12, generator=make_generator(5), feature_steps=12), a)
    # eight steps still put each token's own features back around a given skeleton (on these synthetic latents
    # the error is 0.17 at 8 steps, 0.15 at 10, 0.26 at 6 and 1.0 at 3 against 0.42 for a sphere-blind guess)
    out = fast.finish_skeleton(protos[1][:, :4], 4, class_index=1, steps=10, generator=make_generator(3))
    err = (out[..., 4:] - protos[1][:, 4:]).abs().mean()
    blind = (protos[1][:, 4:].mean(0) - protos[1][:, 4:]).abs().mean()
    assert err < 0.5 * blind, (float(err), float(blind))
    done = fast.complete(protos[1], torch.arange(16) < 8, 2, class_index=1, steps=4, resample=2,
                         generator=make_generator(4))
    assert torch.equal(done[:, :8], protos[1][:8].expand(2, -1, -1))
    assert fast.vary(a, 0.2, class_index=0, steps=12, generator=make_generator(6)).shape == a.shape
    # the checkpoint keeps it; a bad value, given or stored, is one clear error
    path = save_diffusion(tmp_path / "fast.pt", fast)
    back = load_diffusion(path)
    assert back.feature_steps == 8 and torch.equal(back.sample(2, class_index=0, steps=12, generator=make_generator(5)), b)
    for bad in (0, 2.5, True):
        with pytest.raises(SkellabError, match="feature_steps"):
            join_stages(spheres, features, feature_steps=bad)
        with pytest.raises(SkellabError, match="feature_steps"):
            diffusion.sample(1, class_index=0, steps=2, feature_steps=bad)
    ckpt = torch.load(path, weights_only=True)
    ckpt["features"]["steps"] = -4
    torch.save(ckpt, tmp_path / "bad.pt")
    with pytest.raises(SkellabError, match="feature stage's steps"):
        load_diffusion(tmp_path / "bad.pt")


def test_self_conditioning_reads_the_previous_estimate_in_training_and_sampling(tmp_path):
    """DenoiserConfig.self_condition: the network also reads an x̂₀ estimate (zeros: none). Training feeds its own
    no-grad estimate where the sample's coin says so; the samplers feed each call the estimate of the call before
    (zeros at the first), the guide included; a checkpoint restores it."""
    from skellab.diffusion.sampling import check_guide
    from skellab.train.tasks import DenoisingTask

    with pytest.raises(SkellabError, match="self_condition"):
        DenoiserConfig.tiny(self_condition="yes")
    torch.manual_seed(0)
    model = TokenDenoiser(config=DenoiserConfig.tiny(num_classes=2, self_condition=True)).eval()
    assert model.input.in_features == 2 * 16
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    x, t = torch.randn(2, 8, 16), torch.tensor([0.3, -0.2])
    assert torch.equal(model(x, t), model(x, t, self_cond=torch.zeros_like(x)))  # None means zeros
    assert not torch.allclose(model(x, t), model(x, t, self_cond=torch.randn_like(x)), atol=1e-3)  # and it is read
    with pytest.raises(SkellabError, match="shape"):
        model(x, t, self_cond=torch.zeros(2, 8, 4))
    with pytest.raises(SkellabError, match="self-conditioning"):
        _random_model(num_classes=2)(x, t, self_cond=torch.zeros_like(x))
    with pytest.raises(SkellabError, match="self_condition"):  # a guide must read the same inputs
        check_guide(model, _random_model(num_classes=2))

    # the training loss: coins down = zeros; coins up = the network's own estimate from a first pass
    sched = EDMScheduler()
    g = make_generator(0)
    batch = {"x0": torch.randn(4, 8, 16, generator=g), "noise": torch.randn(4, 8, 16, generator=g),
             "t": torch.rand(4, generator=g) + 0.1, "class_index": torch.tensor([0, 1, -1, 0])}
    task = DenoisingTask(torch.zeros(1, 8, 16), None, sched, lambda: None)
    x_t = sched.add_noise(batch["x0"], batch["noise"], batch["t"])
    x_in, cond = sched.scale_model_input(x_t, batch["t"])
    target = sched.training_target(batch["x0"], batch["noise"], batch["t"])
    w = sched.training_weight(batch["t"]).reshape(-1, 1, 1)
    with torch.no_grad():
        est = sched.predict_original(model(x_in, cond, batch["class_index"]), batch["t"], x_t)
    coins = torch.tensor([True, False, True, False])
    for c in (torch.zeros(4, dtype=torch.bool), coins):
        loss = float(task.compute_loss(model, {**batch, "self_cond": c})["total"].detach())
        sc = torch.where(c.reshape(-1, 1, 1), est, torch.zeros_like(est))
        manual = (w * (model(x_in, cond, batch["class_index"], self_cond=sc) - target) ** 2).mean()
        assert loss == pytest.approx(float(manual), rel=1e-5)

    # a tiny training run; the sampler hands each call the estimate of the call before
    lat, cls, _ = make_synthetic_latents(16, num_classes=2, num_tokens=8, generator=make_generator(0))
    diffusion, history = train_diffusion(lat, cls, steps=40, batch_size=16, lr=2e-3, warmup=5, schedule="constant",
                                         ema_decay=None, self_condition=True, generator=make_generator(1),
                                         device="cpu", progress=False)
    assert diffusion.denoiser.config.self_condition and history["loss"][-1] < history["loss"][0]
    seen = []
    hook = diffusion.denoiser.input.register_forward_hook(lambda m, i, o: seen.append(i[0][..., 16:].clone()))
    _, traj = sample_latents(diffusion.denoiser, diffusion.scheduler, num=2, num_tokens=8, class_index=1, steps=4,
                             generator=make_generator(3), return_trajectory=True, precision="fp32")
    hook.remove()
    assert len(seen) == len(traj) == 7 and torch.equal(seen[0], torch.zeros_like(seen[0]))
    for i in range(1, 7):
        assert torch.allclose(seen[i], traj[i - 1], atol=1e-6)
    back = load_diffusion(save_diffusion(tmp_path / "sc.pt", diffusion))
    assert back.denoiser.config == diffusion.denoiser.config
    a = diffusion.sample(2, class_index=0, steps=3, generator=make_generator(5))
    assert torch.equal(a, diffusion.sample(2, class_index=0, steps=3, generator=make_generator(5)))
    assert torch.allclose(a, back.sample(2, class_index=0, steps=3, generator=make_generator(5)), atol=1e-6)
    # RePaint completion with a self-conditioned model keeps the given tokens exactly
    known, mask = lat[0], torch.arange(8) < 3
    out = diffusion.complete(known, mask, 2, class_index=0, steps=3, resample=2, generator=make_generator(6))
    assert torch.equal(out[:, :3], known[:3].expand(2, 3, 16)) and torch.isfinite(out).all()
