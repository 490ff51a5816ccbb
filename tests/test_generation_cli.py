"""`skellab generate` / `skellab evaluate` and the library behind them (skellab.generation, skellab.evaluation).

Uses the shipped weights (skellab/weights/diffusion.pt + autoencoder.pt) at tiny sizes:
a 24³–32³ grid and a few sampler steps, so every test takes seconds on CPU.
"""

import json
from pathlib import Path

import numpy as np
import pytest
import trimesh
from conftest import run_cli

from skellab.errors import SkellabError
from skellab.generation import generate_organs, list_organs, load_generation_models, sampling_scheduler
from skellab.skeleton.types import Skeleton

FAST = ("--resolution", "32", "--steps", "3")


def _one_line_error(code: int, out: str, err: str) -> None:
    assert code == 2, (code, out, err)
    assert err.startswith("skellab") and "error:" in err, err
    assert err.count("\n") == 1 and "Traceback" not in err, err


def test_list_organs_prints_one_name_per_line():
    code, out, err = run_cli("generate", "--list-organs")
    assert code == 0, err
    names = out.split()
    assert names == list_organs() and len(names) >= 4
    assert {"colon", "kidney", "liver", "vessel_tree"} <= set(names)


def test_generate_writes_watertight_meshes_and_skeletons(tmp_path):
    out = tmp_path / "gen"
    code, stdout, err = run_cli("generate", "--organ", "kidney", "--n", "2", "--out", out, "--seed", "1", *FAST)
    assert code == 0, err
    plys, npzs = sorted(out.glob("organ_*.ply")), sorted(out.glob("organ_*_skeleton.npz"))
    assert [p.name for p in plys] == ["organ_00.ply", "organ_01.ply"]
    assert [p.name for p in npzs] == ["organ_00_skeleton.npz", "organ_01_skeleton.npz"]
    assert not list(out.glob(".*"))  # no temporary files left behind
    for ply, npz in zip(plys, npzs):
        mesh = trimesh.load(ply, process=False)
        assert len(mesh.faces) > 0 and mesh.is_watertight
        assert np.abs(mesh.vertices).max() <= 1.1 + 1e-6  # normalised frame, inside the decoding box
        skel = Skeleton.load(npz)
        assert skel.centers.shape[1] == 3 and skel.num_spheres > 0 and (skel.radii >= 0).all()
        assert len(skel.edges) >= skel.num_spheres // 2  # a connected-ish stick figure, not isolated points
    assert "watertight" in stdout


def test_generation_is_deterministic_and_ddim_runs():
    a = generate_organs("liver", 1, steps=3, resolution=24, seed=3)[0]
    b = generate_organs("liver", 1, steps=3, resolution=24, seed=3)[0]
    assert np.array_equal(a.latent.tokens, b.latent.tokens) and np.array_equal(a.faces, b.faces)
    c = generate_organs("liver", 1, steps=3, resolution=24, seed=3, scheduler="ddim")[0]
    assert c.watertight and not np.array_equal(a.latent.tokens, c.latent.tokens)
    assert set(a.seconds) == {"sample", "decode", "mesh", "skeleton"}


def test_sampler_choice_follows_the_training_scheduler():
    diff, _ = load_generation_models()
    assert diff.scheduler.config["name"] == "edm"
    euler = sampling_scheduler(diff, "ddim")
    euler.set_timesteps(5)
    assert euler.config["solver"] == "euler" and len(euler.timesteps) == 5  # one network call per step
    with pytest.raises(SkellabError, match="trained with EDM"):
        sampling_scheduler(diff, "ddpm")


@pytest.mark.parametrize("args, message", [
    (("--organ", "spleenx"), "unknown organ 'spleenx'; known: accumbens"),
    (("--organ", "kidney", "--n", "0"), "n must be >= 1"),
    (("--organ", "kidney", "--n", "-2"), "n must be >= 1"),
    (("--organ", "kidney", "--steps", "0"), "steps must be >= 1"),
    (("--organ", "kidney", "--guidance", "-0.5"), "guidance must be a number >= 0"),
    (("--organ", "kidney", "--autoguidance", "-1"), "autoguidance must be a number >= 0"),
    (("--organ", "kidney", "--autoguidance", "nan"), "autoguidance must be a number >= 0"),
    (("--organ", "kidney", "--scheduler", "euler"), "unknown scheduler 'euler'"),
    (("--organ", "kidney", "--scheduler", "ddpm"), "trained with EDM"),
    (("--organ", "kidney", "--checkpoint", "/nonexistent/diffusion.pt"), "diffusion checkpoint not found"),
    (("--organ", "kidney", "--n", "two"), "invalid int value"),
    (("--organ", "kidney", "--connect", "1.5"), "the margin must be in [0, 1)"),
    (("--organ", "kidney", "--connect", "yes"), "expected a margin in [0, 1) or 'off'"),
])
def test_bad_generate_input_is_one_line_exit_2(tmp_path, args, message):
    out = tmp_path / "gen"
    code, stdout, err = run_cli("generate", "--out", out, *FAST, *args)
    _one_line_error(code, stdout, err)
    assert message in err
    assert not out.exists() or not any(out.iterdir())


def test_corrupt_checkpoint_is_one_line_exit_2(tmp_path):
    bad = tmp_path / "diffusion.pt"
    bad.write_bytes(b"not a checkpoint")
    _one_line_error(*run_cli("generate", "--list-organs", "--checkpoint", bad))
    _one_line_error(*run_cli("generate", "--n", "1"))  # neither --organ/--out nor --list-organs


def test_evaluate_writes_the_table(tiny_dataset, tmp_path):
    out = tmp_path / "results.json"
    code, stdout, err = run_cli("evaluate", "--data", tiny_dataset, "--out", out, "--classes", "kidney", "--n", "1",
                                "--points", "256", "--emd-points", "64", "--resolution", "24", "--steps", "2",
                                "--baseline-seconds", "1", "--quiet")
    assert code == 0, err
    res = json.loads(out.read_text())
    assert res["split"] == "test" and res["classes"] == ["kidney"]
    for name in ("skellab", "point_diffusion"):
        macro = res["methods"][name]["macro"]
        assert 0 <= macro["cov_cd"] <= 1 and 0 <= macro["1nna_cd"] <= 1 and macro["mmd_cd_x1e3"] > 0
        assert macro["mmd_emd_x1e2"] > 0
    assert res["methods"]["skellab"]["macro"]["betti_error"] is not None
    assert res["methods"]["point_diffusion"]["macro"]["betti_error"] is None  # point clouds have no topology
    assert res["methods"]["point_diffusion"]["training"]["cpu_budget_seconds"] == 1
    ablation = res["methods"]["surface_latent_ablation"]  # the shipped SPSDF ablation weights
    assert ablation["available"] is True
    assert 0 <= ablation["macro"]["cov_cd"] <= 1 and 0 <= ablation["macro"]["1nna_cd"] <= 1
    assert "1nna" in res["conventions"] and res["setup"]["emd_points"] == 64
    assert "MMD-CD x1e3" in stdout
    only = tmp_path / "skellab_only.json"  # a new denoiser's row, without training a baseline
    code, stdout, err = run_cli("evaluate", "--data", tiny_dataset, "--out", only, "--classes", "kidney", "--n", "1",
                                "--points", "256", "--emd-points", "64", "--resolution", "24", "--steps", "2",
                                "--methods", "skellab", "--quiet")
    assert code == 0, err
    alone = json.loads(only.read_text())
    assert list(alone["methods"]) == ["skellab"] and "point_diffusion" not in stdout
    assert alone["methods"]["skellab"]["macro"] == res["methods"]["skellab"]["macro"]  # same seeds, same row


def test_evaluate_bad_split_is_one_line_exit_2(tiny_dataset, tmp_path):
    _one_line_error(*run_cli("evaluate", "--data", tiny_dataset, "--out", tmp_path / "r.json", "--split", "nope"))


def test_generate_keep_completes_an_edited_organ(tmp_path):
    """--keep: a generated organ's latent (or its skeleton) is kept; diffusion finishes the rest, differently per draw."""
    first = tmp_path / "first"
    assert run_cli("generate", "--organ", "kidney", "--n", "1", "--out", first, *FAST)[0] == 0
    latent = first / "organ_00_latent.npz"
    tokens = np.load(latent)["tokens"]
    assert tokens.shape == (256, 16)
    out = tmp_path / "completed"
    code, _, err = run_cli("generate", "--organ", "kidney", "--n", "2", "--out", out, "--keep", latent,
                           "--keep-tokens", "0-99", *FAST)
    assert code == 0, err
    done = [np.load(out / f"organ_0{i}_latent.npz")["tokens"] for i in (0, 1)]
    for d in done:
        assert np.abs(d[:100] - tokens[:100]).max() <= 1e-3  # kept tokens stay (exactly, here)
    assert np.abs(done[0][100:] - done[1][100:]).mean() > 1e-3  # two different completions
    assert all(trimesh.load(out / f"organ_0{i}.ply").is_watertight for i in (0, 1))
    # a skeleton keeps only xyz + r: the features are diffusion's
    code, _, err = run_cli("generate", "--organ", "kidney", "--n", "1", "--out", tmp_path / "skel",
                           "--keep", first / "organ_00_skeleton.npz", *FAST)
    assert code == 0, err
    sk = np.load(tmp_path / "skel" / "organ_00_latent.npz")["tokens"]
    assert np.allclose(sk[:, :3], tokens[:, :3], atol=1e-6)
    assert np.allclose(sk[:, 3], np.maximum(tokens[:, 3], 0), atol=1e-6)  # the skeleton file stores radii >= 0
    _one_line_error(*run_cli("generate", "--organ", "kidney", "--out", tmp_path / "x", "--keep", latent,
                             "--keep-tokens", "7-x", *FAST))
    _one_line_error(*run_cli("generate", "--organ", "kidney", "--out", tmp_path / "x", "--keep",
                             tmp_path / "missing.npz", *FAST))


def test_shipped_weights_fit_the_budget_and_the_diffusion_model_carries_its_guide():
    """Everything in skellab/weights/ stays within 20 MB; diffusion.pt ships its autoguidance guide and weight and
    its feature stage's sampler steps, and its index records them and the file's sha256."""
    import hashlib

    from skellab.weights import WEIGHTS_DIR, weights_path

    total = sum(f.stat().st_size for f in Path(WEIGHTS_DIR).iterdir() if f.is_file())
    assert total <= 20_000_000
    diff, _ = load_generation_models()
    assert diff.guide is not None and diff.autoguidance == 1.5
    index = json.loads(weights_path("diffusion").with_suffix(".json").read_text())
    assert index["sha256"] == hashlib.sha256(weights_path("diffusion").read_bytes()).hexdigest()
    assert index["guide"]["autoguidance"] == 1.5 and index["guide"]["parameters"] == sum(
        p.numel() for p in diff.guide.parameters())
    # a two-stage model: the index records the feature stage and the steps it samples in, as the checkpoint holds them
    assert diff.two_stage and diff.feature_steps == index["features"]["sampler_steps"] == 8
    assert diff.guide_interval is None and index["guide"].get("interval") is None  # the guide runs at every step


def test_max_genus_redraws_organs_with_loops_and_keeps_the_best_when_none_qualifies(monkeypatch, tmp_path):
    """Rejection by topology: an organ above ``max_genus`` is drawn again (from the same generator, so still a
    function of the seed); after ``max_attempts`` draws the one with the fewest handles is kept and flagged."""
    import skellab.generation as generation
    from skellab.generation import generate_from_models, organ_genus

    diff, ae = load_generation_models()
    kw = dict(steps=3, resolution=24, seed=5)
    plain = generate_from_models(diff, ae, "vessel_tree", 2, **kw)
    assert all("genus" not in g.info for g in plain)  # without the constraint: the sampler's own draws, as before
    assert [organ_genus(g) for g in plain] == [g.info["genus"] for g in
                                               generate_from_models(diff, ae, "vessel_tree", 2, max_genus=99, **kw)]

    genera = iter([3, 1, 2, 0, 4, 5])  # draw by draw: organ 0 → 3, organ 1 → 1; redraws 2, 0; then 4, 5
    monkeypatch.setattr(generation, "organ_genus", lambda g: next(genera))
    got = generate_from_models(diff, ae, "vessel_tree", 2, max_genus=0, max_attempts=3, **kw)
    assert [g.info["genus"] for g in got] == [2, 0] and [g.info["genus_met"] for g in got] == [False, True]
    assert got[1].info["attempts"] == 2 and got[1].info["max_genus"] == 0
    assert not np.array_equal(got[1].latent.tokens, plain[1].latent.tokens)  # a redrawn organ is a new sample

    monkeypatch.undo()
    again = generate_from_models(diff, ae, "vessel_tree", 2, max_genus=0, max_attempts=2, **kw)
    twice = generate_from_models(diff, ae, "vessel_tree", 2, max_genus=0, max_attempts=2, **kw)
    assert all(np.array_equal(a.faces, b.faces) for a, b in zip(again, twice))  # deterministic in the seed
    for g in again:
        assert g.info["genus"] == organ_genus(g) and (g.info["genus_met"] == (g.info["genus"] == 0))

    with pytest.raises(SkellabError, match="max_genus must be an integer >= 0"):
        generate_from_models(diff, ae, "vessel_tree", 1, max_genus=-1, **kw)
    with pytest.raises(SkellabError, match="needs decoded organs"):
        generate_from_models(diff, ae, "vessel_tree", 1, max_genus=0, decode=False, **kw)
    out = tmp_path / "gen"
    code, stdout, err = run_cli("generate", "--organ", "vessel_tree", "--n", "1", "--out", out, *FAST,
                                "--max-genus", "0", "--max-attempts", "2")
    assert code == 0 and ", genus " in stdout, err
    _one_line_error(*run_cli("generate", "--organ", "kidney", "--out", tmp_path / "g2", *FAST, "--max-genus", "-1"))
