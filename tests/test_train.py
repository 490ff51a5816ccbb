"""The training engine: sampler, LR schedule, exact resume, kill -9 during a checkpoint write,
2-process gloo DDP, run-folder layout, and the ``skellab train`` CLI's bad-input errors."""

from __future__ import annotations

import hashlib
import math
import os
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
from conftest import run_cli

from skellab.errors import SkellabError
from skellab.data.medsdf import MedSDF
from skellab.train import EngineConfig, StepSampler, read_log, stage_config, train_stage

TINY_STEPS = 12


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env() -> dict[str, str]:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    env.pop("WORLD_SIZE", None)
    return env


def _losses(run: Path, stage: str) -> list[float]:
    return [r["loss"] for r in read_log(run / stage / "log.csv")]


def _state(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, map_location="cpu", weights_only=True)["state_dict"]


# ---------------------------------------------------------------------- pure parts
def test_step_sampler_shards_reassemble_the_global_batch():
    single = StepSampler(7, 4, seed=3)
    ranks = [StepSampler(7, 4, seed=3, rank=r, world=2) for r in range(2)]
    for step in range(6):  # batches straddle epochs (7 items, 4 per step)
        items = single.global_batch(step)
        shards = [s.local_batch(step) for s in ranks]
        merged = [None] * 4
        for local, positions in shards:
            assert len(local) == 2
            for item, p in zip(local, positions):
                merged[p] = item
        assert merged == items
    stream = [i for s in range(7) for i, _ in single.global_batch(s)]  # 28 draws = 4 epochs of 7
    assert all(sorted(stream[e * 7:(e + 1) * 7]) == list(range(7)) for e in range(4))
    assert StepSampler(7, 4, seed=3).global_batch(5) == items  # a pure function of (seed, step)
    with pytest.raises(SkellabError, match="divisible"):
        StepSampler(7, 3, seed=0, world=2)


def test_lr_schedules():
    cfg = EngineConfig(steps=110, batch_size=1, lr=1.0, warmup=10, lr_final_fraction=0.1)
    assert cfg.lr_factor(0) == pytest.approx(0.1) and cfg.lr_factor(9) == pytest.approx(1.0)
    assert cfg.lr_factor(10) == pytest.approx(1.0) and cfg.lr_factor(110) == pytest.approx(0.1)
    cos = cfg.replace(schedule="cosine")
    assert cos.lr_factor(60) == pytest.approx(0.55) and cos.lr_factor(110) == pytest.approx(0.1)
    assert cfg.replace(schedule="constant").lr_factor(100) == 1.0
    for bad in ({"schedule": "step"}, {"amp": "fp8"}, {"steps": 0}, {"lr": 0.0}, {"ema_decay": 1.0}):
        with pytest.raises(SkellabError):
            EngineConfig(**{"steps": 1, "batch_size": 1, "lr": 1e-3, **bad})


def test_stage_presets_and_overrides():
    cfg = stage_config("autoencoder", "tiny", batch_size=4, num_queries=256, encoder_width=16)
    assert cfg.engine.batch_size == 4 and cfg.sampling.num_queries == 256 and cfg.model.encoder_width == 16
    cfg = stage_config("skeleton", "default", steps=7)
    assert cfg.model.k == 256 and cfg.engine.steps == 7
    assert not hasattr(cfg.model, "steps")  # one source of truth: optimisation lives in the engine config only
    with pytest.raises(SkellabError, match="unknown preset 'huge'"):
        stage_config("diffusion", "huge")
    with pytest.raises(SkellabError, match="unknown diffusion config field"):
        stage_config("diffusion", "tiny", wdith=3)


# ---------------------------------------------------------------------- runs
@pytest.fixture(scope="module")
def tiny_run(tiny_dataset, tmp_path_factory):
    """An uninterrupted tiny run of the autoencoder and diffusion stages (the reference)."""
    run = tmp_path_factory.mktemp("train") / "ref"
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # small models: much faster single-threaded on a busy 2-core machine
    try:
        for stage in ("autoencoder", "diffusion"):
            train_stage(stage, tiny_dataset, run, device="cpu", max_steps=TINY_STEPS, progress=False,
                        checkpoint_every=4)
    finally:
        torch.set_num_threads(before)
    return run


def test_run_folder_layout_and_checkpoints(tiny_run, tiny_dataset):
    from skellab.autoencoder import load_autoencoder
    from skellab.diffusion import load_diffusion

    for stage in ("autoencoder", "diffusion"):
        d = tiny_run / stage
        assert {"checkpoint.pt", "model.pt", "log.csv", "summary.json"} <= {p.name for p in d.iterdir()}
        assert not list(d.glob("*.tmp*")) and not list(d.glob(".*.tmp*"))
        rows = read_log(d / "log.csv")
        assert [r["step"] for r in rows] == list(range(1, TINY_STEPS + 1))
        assert all(math.isfinite(r["loss"]) and r["lr"] > 0 for r in rows)
        assert any(k.startswith("val_") and math.isfinite(v) for k, v in rows[-1].items())
        ckpt = torch.load(d / "checkpoint.pt", map_location="cpu", weights_only=True)  # weights_only-safe
        state = ckpt["train_state"]
        assert state["step"] == TINY_STEPS and {"optimizer", "scheduler", "rng", "engine", "task"} <= set(state)
        assert "train_state" not in torch.load(d / "model.pt", weights_only=True)
    ae = load_autoencoder(tiny_run / "autoencoder" / "model.pt")
    diff = load_diffusion(tiny_run / "diffusion" / "model.pt")
    assert diff.denoiser.config.token_dim == ae.config.token_dim and diff.classes == ae.classes
    store = MedSDF.open(tiny_dataset)
    assert diff.organs == [c for c in ae.classes if c in {store.record(s)["class"] for s in store.ids(split="train")}]
    lat = diff.sample(1, class_index=0, steps=2, generator=torch.Generator().manual_seed(0))
    assert lat.shape == (1, ae.config.num_tokens, ae.config.token_dim) and torch.isfinite(lat).all()
    assert (tiny_run / "diffusion" / "latents.pt").is_file()
    try:
        from torch.utils.tensorboard import SummaryWriter  # noqa: F401  (the optional train extra)
    except ImportError:
        return
    events = list((tiny_run / "autoencoder" / "tensorboard").glob("events.out.tfevents.*"))
    assert events and events[0].stat().st_size > 0


def test_release_records_the_classes_a_diffusion_run_trained_on(tiny_run, tmp_path):
    """release_weights writes trained_classes into the shipped checkpoint and its index, also for a run whose
    model.pt predates the record (recovered from the run's cached training latents)."""
    from skellab.diffusion import load_diffusion
    from skellab.train.release import release_weights

    expected = load_diffusion(tiny_run / "diffusion" / "model.pt").organs
    old = tmp_path / "old"
    shutil.copytree(tiny_run / "diffusion", old / "diffusion")
    payload = torch.load(old / "diffusion" / "model.pt", weights_only=True)
    del payload["trained_classes"]
    torch.save(payload, old / "diffusion" / "model.pt")
    for run, name in ((tiny_run, "new"), (old, "old")):
        index = release_weights(run, "diffusion", name, weights_dir=tmp_path)
        assert index["trained_classes"] == expected
        assert load_diffusion(tmp_path / f"{name}.pt").organs == expected
    index = release_weights(tiny_run, "diffusion", "half", weights_dir=tmp_path, storage="bf16")
    assert index["storage"] == "bf16" and index["bytes"] < 0.6 * (tmp_path / "new.pt").stat().st_size
    half = load_diffusion(tmp_path / "half.pt")
    assert half.organs == expected and next(half.denoiser.parameters()).dtype == torch.float32


class Crash(Exception):
    """Raised by :func:`crash_at`'s callback: a training process killed after a given step."""


def crash_at(last_step: int):
    """An engine callback that raises :class:`Crash` once step ``last_step`` (1-based) is logged."""
    def crash(step, row):
        if step + 1 == last_step:
            raise Crash
    return crash


def test_resume_after_a_crash_replays_the_same_losses(tiny_dataset, tiny_run, tmp_path, one_thread):
    crash = crash_at(7)
    for stage in ("autoencoder", "diffusion"):
        kw = dict(device="cpu", max_steps=TINY_STEPS, progress=False, checkpoint_every=4)
        if stage == "diffusion":
            kw["autoencoder"] = tiny_run / "autoencoder" / "model.pt"
        with pytest.raises(Crash):
            train_stage(stage, tiny_dataset, tmp_path, callback=crash, **kw)
        assert [r["step"] for r in read_log(tmp_path / stage / "log.csv")][-1] == 7
        res = train_stage(stage, tiny_dataset, tmp_path, resume=True, **kw)
        assert res.resumed_from == 4
        assert _losses(tmp_path, stage) == _losses(tiny_run, stage)  # bit-identical on CPU
        a, b = _state(tiny_run / stage / "model.pt"), _state(tmp_path / stage / "model.pt")
        assert all(torch.equal(a[k], b[k]) for k in a)


def test_keep_every_keeps_step_exports_and_may_change_on_resume(tiny_dataset, tiny_run, tmp_path, one_thread):
    from skellab.diffusion import load_diffusion

    kw = dict(device="cpu", max_steps=TINY_STEPS, progress=False, checkpoint_every=4,
              autoencoder=tiny_run / "autoencoder" / "model.pt")
    with pytest.raises(Crash):
        train_stage("diffusion", tiny_dataset, tmp_path, callback=crash_at(8), keep_every=6, **kw)
    assert sorted(p.name for p in (tmp_path / "diffusion").glob("model_step*.pt")) == ["model_step6.pt"]
    res = train_stage("diffusion", tiny_dataset, tmp_path, resume=True, keep_every=5, **kw)  # bookkeeping only
    assert res.resumed_from == 6  # the kept step is also a checkpoint
    run = tmp_path / "diffusion"
    assert sorted(p.name for p in run.glob("model_step*.pt")) == ["model_step10.pt", "model_step6.pt"]
    assert _losses(tmp_path, "diffusion") == _losses(tiny_run, "diffusion")  # keeping changes nothing trained
    kept = torch.load(run / "model_step6.pt", map_location="cpu", weights_only=True)
    assert kept["step"] == 6 and "train_state" not in kept
    assert load_diffusion(run / "model_step10.pt").organs == load_diffusion(run / "model.pt").organs
    with pytest.raises(SkellabError, match="keep_every"):
        EngineConfig(steps=4, batch_size=2, lr=1e-3, keep_every=-1)


KILLER = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    import skellab.train.engine as engine
    signal_file, target = Path(sys.argv[1]), int(sys.argv[2])
    save, calls = engine.save_bytes, {"n": 0}

    def half_written_save(obj, path):
        save(obj, path)
        if ".checkpoint.pt." in str(path):
            calls["n"] += 1
            if calls["n"] == target:  # the temp file holds half its bytes, the rename has not happened
                data = Path(path).read_bytes()
                Path(path).write_bytes(data[: len(data) // 2])
                signal_file.write_text(str(path))
                time.sleep(600)

    engine.save_bytes = half_written_save
    from skellab.cli.train import main
    sys.exit(main(sys.argv[3:]))
""")


def test_kill_9_during_a_checkpoint_write_then_resume(tiny_dataset, tiny_run, tmp_path):
    run, sig = tmp_path / "killed", tmp_path / "writing"
    args = ["autoencoder", "--data", str(tiny_dataset), "--out", str(run), "--device", "cpu",
            "--max-steps", str(TINY_STEPS), "--set", "checkpoint_every=4", "--quiet"]
    proc = subprocess.Popen([sys.executable, "-c", KILLER, str(sig), "2", *args], env=_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    while not sig.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    assert sig.exists(), proc.communicate()[1].decode()[-2000:]
    os.kill(proc.pid, signal.SIGKILL)  # kill -9 in the middle of the second checkpoint write (step 8)
    proc.wait()
    stage = run / "autoencoder"
    assert list(stage.glob(".checkpoint.pt.*.tmp*")), "the half-written temp file should be left behind"
    ckpt = torch.load(stage / "checkpoint.pt", map_location="cpu", weights_only=True)  # intact: step 4
    assert ckpt["train_state"]["step"] == 4
    done = subprocess.run([sys.executable, "-m", "skellab.train", *args, "--resume"], env=_env(),
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "resumed from 4" in done.stdout
    assert not list(stage.glob(".checkpoint.pt.*.tmp*"))  # stale temp files are cleaned up
    assert _losses(run, "autoencoder") == _losses(tiny_run, "autoencoder")


def test_torchrun_two_gloo_processes_match_one_process(tiny_dataset, tiny_run, tmp_path):
    run = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", str(_free_port()), "-m", "skellab.train", "autoencoder", "--data", str(tiny_dataset),
           "--out", str(run), "--device", "cpu", "--max-steps", str(TINY_STEPS), "--set", "checkpoint_every=4",
           "--quiet"]
    done = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    summary = (run / "autoencoder" / "summary.json").read_text()
    assert '"world_size": 2' in summary
    ref, ddp = _losses(tiny_run, "autoencoder"), _losses(run, "autoencoder")
    assert len(ddp) == len(ref)
    # Same global batches and per-sample randomness; only the order of float reductions differs.
    assert max(abs(a - b) / abs(a) for a, b in zip(ref, ddp)) < 1e-4
    a, b = _state(tiny_run / "autoencoder" / "model.pt"), _state(run / "autoencoder" / "model.pt")
    assert max(float((a[k] - b[k]).abs().max()) for k in a) < 1e-4


def test_a_self_conditioned_diffusion_stage_trains_the_same_under_torchrun(tiny_dataset, tiny_run, tmp_path):
    """The self-conditioning pass (the network's own no-grad estimate) runs inside DDP as in one process: the same
    losses step for step, and the shared latents of the reference run are reused."""
    ref = tmp_path / "one"
    (ref / "diffusion").mkdir(parents=True)
    shutil.copy(tiny_run / "diffusion" / "latents.pt", ref / "diffusion" / "latents.pt")
    ae = tiny_run / "autoencoder" / "model.pt"
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        train_stage("diffusion", tiny_dataset, ref, device="cpu", max_steps=TINY_STEPS, progress=False,
                    autoencoder=ae, self_condition=True)
    finally:
        torch.set_num_threads(before)
    run = tmp_path / "ddp"
    (run / "diffusion").mkdir(parents=True)
    shutil.copy(tiny_run / "diffusion" / "latents.pt", run / "diffusion" / "latents.pt")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", str(_free_port()), "-m", "skellab.train", "diffusion", "--data", str(tiny_dataset),
           "--out", str(run), "--autoencoder", str(ae), "--device", "cpu", "--max-steps", str(TINY_STEPS),
           "--set", "self_condition=True", "--quiet"]
    done = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    a, b = _losses(ref, "diffusion"), _losses(run, "diffusion")
    assert len(a) == len(b) == TINY_STEPS
    assert max(abs(x - y) / abs(x) for x, y in zip(a, b)) < 1e-4
    assert a != _losses(tiny_run, "diffusion")  # self-conditioning changed the training (same seed and batches)


# ---------------------------------------------------------------------- bad input
def test_cli_bad_input(tiny_dataset, tiny_run, tmp_path):
    base = ["train", "autoencoder", "--data", tiny_dataset, "--device", "cpu", "--quiet"]

    code, _, err = run_cli(*base[:3], tmp_path / "nope", "--out", tmp_path / "r0")
    assert code == 2 and "dataset not found" in err and "Traceback" not in err
    code, _, err = run_cli(*base, "--out", tmp_path / "r1", "--preset", "huge")
    assert code == 2 and err.strip() == "skellab: error: unknown preset 'huge': use tiny or default"
    code, _, err = run_cli(*base, "--out", tmp_path / "r1", "--set", "wdith=3")
    assert code == 2 and "unknown autoencoder config field(s): wdith" in err
    code, _, err = run_cli("train", "diffusion", "--data", tiny_dataset, "--out", tmp_path / "r2", "--quiet")
    assert code == 2 and "autoencoder checkpoint not found" in err
    code, _, err = run_cli(*base, "--out", tmp_path / "r1", "--max-steps", "0")
    assert code == 2 and "must be positive" in err

    run = tmp_path / "r3"
    shutil.copytree(tiny_run / "autoencoder", run / "autoencoder")
    code, _, err = run_cli(*base, "--out", run, "--max-steps", TINY_STEPS)
    assert code == 2 and "already holds a checkpoint" in err and "--resume" in err
    code, _, err = run_cli(*base, "--out", run, "--max-steps", 2 * TINY_STEPS, "--resume")
    assert code == 2 and "checkpoint/config mismatch" in err and "engine.steps" in err
    code, _, err = run_cli(*base, "--out", run, "--max-steps", TINY_STEPS, "--resume", "--set", "lr=0.1")
    assert code == 2 and "engine.lr" in err
    ckpt = run / "autoencoder" / "checkpoint.pt"
    good = ckpt.read_bytes()
    ckpt.write_bytes(good[: len(good) // 3])
    code, _, err = run_cli(*base, "--out", run, "--max-steps", TINY_STEPS, "--resume")
    assert code == 2 and "corrupt or unreadable checkpoint" in err and len(err.strip().splitlines()) == 1
    assert ckpt.read_bytes() == good[: len(good) // 3]  # nothing overwritten by the failed attempt
    shutil.copy(run / "autoencoder" / "model.pt", ckpt)  # an exported model is not a run checkpoint
    code, _, err = run_cli(*base, "--out", run, "--max-steps", TINY_STEPS, "--resume")
    assert code == 2 and "no resumable training state" in err
    code, _, err = run_cli("train", "decoder", "--data", tiny_dataset, "--out", run)
    assert code == 2 and "invalid choice" in err


def test_resume_finished_run_just_reexports(tiny_dataset, tiny_run, tmp_path):
    run = tmp_path / "again"
    shutil.copytree(tiny_run / "autoencoder", run / "autoencoder")
    (run / "autoencoder" / "model.pt").unlink()
    code, out, err = run_cli("train", "autoencoder", "--data", tiny_dataset, "--out", run, "--device", "cpu",
                             "--max-steps", TINY_STEPS, "--set", "checkpoint_every=4", "--resume", "--quiet")
    assert code == 0, err
    assert f"{TINY_STEPS} steps (resumed from {TINY_STEPS})" in out
    a, b = _state(tiny_run / "autoencoder" / "model.pt"), _state(run / "autoencoder" / "model.pt")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_bf16_autocast_trains(one_thread):
    """``amp="bf16"`` (what ``"auto"`` picks on CUDA) runs the same loop under bf16 autocast; checked on CPU."""
    from skellab.diffusion.denoiser import DenoiserConfig, TokenDenoiser
    from skellab.diffusion.schedulers import make_scheduler
    from skellab.train import DenoisingTask, fit

    g = torch.Generator().manual_seed(0)
    data, cls = torch.randn(16, 8, 16, generator=g), torch.arange(16) % 2
    cfg = DenoiserConfig.tiny(token_dim=16, num_classes=2)
    task = DenoisingTask(data, cls, make_scheduler("edm"), lambda: TokenDenoiser(config=cfg), class_dropout=0.2)
    res = fit(task, EngineConfig(steps=6, batch_size=4, lr=1e-3, amp="bf16"), device="cpu", progress=False)
    assert len(res.history) == 6 and all(math.isfinite(r["loss"]) for r in res.history)
    assert all(p.dtype == torch.float32 for p in res.model.parameters())  # weights stay fp32



def test_two_stage_diffusion_trains_stage_by_stage_and_joins_on_the_cli(tiny_dataset, tiny_run, tmp_path, one_thread):
    """``--set channels=spheres`` / ``=features`` train the two stages on the same cached latents; ``skellab
    join-stages`` writes one checkpoint that ``skellab generate`` samples (spheres, then features given them)."""
    from skellab.diffusion import load_diffusion
    from skellab.generation import generate_from_models, load_generation_models

    ae = tiny_run / "autoencoder" / "model.pt"
    for channels in ("spheres", "features"):
        shutil.copytree(tiny_run / "diffusion", tmp_path / channels / "diffusion",
                        ignore=shutil.ignore_patterns("*.pt", "*.csv", "*.json", "tensorboard"))
        shutil.copy(tiny_run / "diffusion" / "latents.pt", tmp_path / channels / "diffusion")  # the same latents
        train_stage("diffusion", tiny_dataset, tmp_path / channels, device="cpu", max_steps=TINY_STEPS,
                    progress=False, autoencoder=ae, channels=channels, keep_every=6)
    sph, feat = (tmp_path / c / "diffusion" / "model.pt" for c in ("spheres", "features"))
    whole = load_diffusion(tiny_run / "diffusion" / "model.pt")
    s, f = load_diffusion(sph), load_diffusion(feat)
    assert (s.denoiser.config.token_dim, f.denoiser.config.token_dim) == (4, whole.token_dim - 4)
    assert torch.equal(s.normalizer.mean, whole.normalizer.mean)  # one normaliser of whole tokens for both stages
    out = tmp_path / "two.pt"
    code, text, err = run_cli("join-stages", sph, feat, "--out", out, "--guide",
                              tmp_path / "spheres" / "diffusion" / "model_step6.pt", "--autoguidance", "1.5",
                              "--feature-steps", "3", "--guide-interval", "0.3", "3")
    assert code == 0 and "two-stage" in text and "features in 3 steps" in text and "0.3 < σ ≤ 3" in text, err
    code, _, err = run_cli("join-stages", sph, feat, "--out", tmp_path / "w.pt", "--guide-interval", "3", "0.3",
                           "--guide", sph, "--autoguidance", "2")
    assert code == 2 and "guide_interval" in err and "Traceback" not in err and not (tmp_path / "w.pt").exists()
    code, _, err = run_cli("join-stages", sph, feat, "--out", tmp_path / "z.pt", "--feature-steps", "0")
    assert code == 2 and "--feature-steps" in err and not (tmp_path / "z.pt").exists()
    code, _, err = run_cli("join-stages", feat, sph, "--out", tmp_path / "x.pt")
    assert code == 2 and "a sphere stage and a feature stage" in err and "Traceback" not in err
    assert not (tmp_path / "x.pt").exists()
    code, _, err = run_cli("join-stages", sph, feat, "--out", out)
    assert code == 2 and "--overwrite" in err
    code, _, err = run_cli("join-stages", sph, feat, "--out", tmp_path / "y.pt", "--guide", sph)
    assert code == 2 and "--autoguidance" in err
    organ0 = whole.organs[0]  # a class of its own guide weight (--class-autoguidance)
    code, text, err = run_cli("join-stages", sph, feat, "--out", tmp_path / "cw.pt", "--guide",
                              tmp_path / "spheres" / "diffusion" / "model_step6.pt", "--autoguidance", "1.5",
                              "--class-autoguidance", f"{organ0}=2.5")
    assert code == 0 and f"{organ0} at 2.5" in text, err
    assert load_diffusion(tmp_path / "cw.pt").class_autoguidance == {organ0: 2.5}
    for bad, msg in ((["--guide", sph, "--autoguidance", "2", "--class-autoguidance", "nonsense=2"], "unknown class"),
                     (["--guide", sph, "--autoguidance", "2", "--class-autoguidance", f"{organ0}=-1"], "autoguidance"),
                     (["--class-autoguidance", f"{organ0}2"], "CLASS=WEIGHT"),
                     (["--class-autoguidance", f"{organ0}=2"], "needs --guide")):
        code, _, err = run_cli("join-stages", sph, feat, "--out", tmp_path / "v.pt", *bad)
        assert code == 2 and msg in err and "Traceback" not in err and not (tmp_path / "v.pt").exists(), err
    diff, ae_model = load_generation_models(out, ae)
    assert diff.two_stage and diff.autoguidance == 1.5 and diff.feature_steps == 3 and diff.guide_interval == (0.3, 3.0)
    organ = diff.organs[0]
    a = generate_from_models(diff, ae_model, organ, 2, steps=2, seed=3, decode=False, connect=None)
    b = generate_from_models(diff, ae_model, organ, 2, steps=2, seed=3, decode=False, connect=None)
    assert a.tokens.shape == (2, diff.num_tokens, whole.token_dim) and torch.equal(a.tokens, b.tokens)
    code, _, err = run_cli("generate", "--checkpoint", sph, "--autoencoder", ae, "--organ", organ, "--n", 1,
                           "--out", tmp_path / "gen")
    assert code == 2 and "join_stages" in err and "Traceback" not in err  # one stage alone cannot generate
    # shipping: the sphere run as the weights, then its feature stage and guide joined in (bf16 storage)
    from skellab.train.release import release_feature_stage, release_guide, release_weights

    shipped = tmp_path / "weights"
    shipped.mkdir()
    release_weights(tmp_path / "spheres", "diffusion", "two", weights_dir=shipped, storage="bf16")
    release_feature_stage("two", tmp_path / "features", weights_dir=shipped, storage="bf16", export="model_step6.pt",
                          feature_steps=3)
    index = release_guide("two", tmp_path / "spheres" / "diffusion" / "model_step6.pt", 1.5, weights_dir=shipped,
                          storage="bf16", interval=(0.3, 3.0))
    assert index["features"]["config"]["channels"] == "features" and index["features"]["training"]["validation"]
    assert index["features"]["source"] == "model_step6.pt" and index["features"]["step"] == 6
    back = load_diffusion(shipped / "two.pt")
    assert back.two_stage and back.autoguidance == 1.5 and index["sha256"] and index["storage"] == "bf16"
    assert back.feature_steps == 3 and index["features"]["sampler_steps"] == 3
    assert back.guide_interval == (0.3, 3.0) and index["guide"]["interval"] == [0.3, 3.0]
    six = load_diffusion(tmp_path / "features" / "diffusion" / "model_step6.pt").denoiser
    assert torch.allclose(back.features.input.weight, six.input.weight, rtol=1e-2, atol=1e-3)


def test_finetuning_trains_the_decoder_on_noisy_spheres_and_keeps_every_latent(tiny_dataset, tiny_run, tmp_path,
                                                                                 one_thread):
    """``--finetune`` + ``sphere_noise``: the encoder (so each latent) stays, the decoder learns, resume is exact."""
    from skellab.autoencoder import encode_shapes, load_autoencoder
    from skellab.train.tasks import AutoencoderTask

    src = tiny_run / "autoencoder" / "model.pt"
    kw = dict(device="cpu", max_steps=TINY_STEPS, progress=False, checkpoint_every=4, finetune=src,
              sphere_noise=0.1)
    ref = train_stage("autoencoder", tiny_dataset, tmp_path / "ref", **kw)
    a, b = _state(src), _state(ref.model_path)
    enc = [k for k in a if k.startswith("encoder.")]
    assert enc and all(torch.equal(a[k], b[k]) for k in enc)
    assert any(not torch.equal(a[k], b[k]) for k in a if not k.startswith("encoder."))
    old, new = load_autoencoder(src), load_autoencoder(ref.model_path)
    assert new.config == old.config.replace(sphere_noise=0.1)  # the checkpoint's architecture, not the preset's
    store = MedSDF.open(tiny_dataset)
    with torch.no_grad():
        assert torch.equal(encode_shapes(old, store, split="train", progress=False)[0].tokens,
                           encode_shapes(new, store, split="train", progress=False)[0].tokens)
    spread = torch.tensor(new.info["train"]["sphere_spread"])
    assert spread.shape == (4,) and (spread > 0).all()
    sha = hashlib.sha256(src.read_bytes()).hexdigest()
    assert new.info["train"]["finetuned_from_sha256"] == new.info["train"]["encoder_of_sha256"] == sha
    # a diffusion model of the source's latents pairs with the fine-tuned decoder; with another autoencoder it does not
    from skellab.generation import load_generation_models
    load_generation_models(tiny_run / "diffusion" / "model.pt", ref.model_path)
    again = train_stage("autoencoder", tiny_dataset, tmp_path / "again", **{**kw, "max_steps": 2, "finetune": ref.model_path})
    load_generation_models(tiny_run / "diffusion" / "model.pt", again.model_path)  # a fine-tune of a fine-tune too
    other = train_stage("autoencoder", tiny_dataset, tmp_path / "other", device="cpu", max_steps=2, progress=False)
    with pytest.raises(SkellabError, match="not the autoencoder this diffusion model was trained with"):
        load_generation_models(tiny_run / "diffusion" / "model.pt", other.model_path)

    # the noise is the task's: the same for the same (step, position), fresh for another step; validation is clean
    task = AutoencoderTask(tiny_dataset, new.config, stage_config("autoencoder", "default").sampling, finetune=src)
    task.prepare(None, torch.device("cpu"), None, False)
    b1, b2, b3 = (task.make_batch([(0, 0), (1, 0)], [0, 1], s, "cpu") for s in (3, 3, 4))
    assert torch.equal(b1["sphere_noise"], b2["sphere_noise"]) and torch.equal(b1["sphere_scale"], b2["sphere_scale"])
    assert not torch.equal(b1["sphere_noise"], b3["sphere_noise"])
    assert "sphere_noise" not in task._batch(task.val, [(0, 0)], "cpu")

    # exact resume
    with pytest.raises(Crash):
        train_stage("autoencoder", tiny_dataset, tmp_path / "crash", callback=crash_at(7), **kw)
    res = train_stage("autoencoder", tiny_dataset, tmp_path / "crash", resume=True, **kw)
    assert res.resumed_from == 4 and _losses(tmp_path / "crash", "autoencoder") == _losses(tmp_path / "ref", "autoencoder")

    # what a fine-tune may not change, and a fine-tune source that is not there
    base = ["train", "autoencoder", "--data", tiny_dataset, "--device", "cpu", "--quiet", "--max-steps", 2]
    code, _, err = run_cli(*base, "--out", tmp_path / "r1", "--finetune", src, "--set", "decoder_blocks=3")
    assert code == 2 and "keeps the checkpoint's architecture: decoder_blocks" in err and "Traceback" not in err
    code, _, err = run_cli(*base, "--out", tmp_path / "r2", "--finetune", tmp_path / "none.pt")
    assert code == 2 and "to fine-tune not found" in err
    code, _, err = run_cli("train", "diffusion", "--data", tiny_dataset, "--out", tmp_path / "r3", "--quiet",
                           "--autoencoder", src, "--finetune", src)
    assert code == 2 and "autoencoder stage only" in err
    code, _, err = run_cli("train", "all", "--data", tiny_dataset, "--out", tmp_path / "r5", "--quiet", "--finetune", src)
    assert code == 2 and "autoencoder stage only" in err and not (tmp_path / "r5").exists()
    code, _, err = run_cli(*base, "--out", tmp_path / "r4", "--set", "sphere_noise=2")
    assert code == 2 and "sphere_noise must be in [0, 1]" in err
    assert not (tmp_path / "r1").exists() or not any((tmp_path / "r1").rglob("*.pt"))
