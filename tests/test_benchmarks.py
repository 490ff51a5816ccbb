"""benchmarks/run_all.py: one JSON with every figure beside its same-run baseline, clean errors.

The real run is ``--quick`` without ``--dataset`` (the decoding latent is then encoded from a
procedural shape, so no MedSDF is built): about 15 s on 2 CPU cores. The error and
training-contract tests call the module in-process with fake sections: milliseconds.
"""

from __future__ import annotations

import importlib.util
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "run_all.py"
CHEAP = ("skeletonization", "sdf", "decoding", "generation")  # training has its own test (needs a dataset)
TOP_LEVEL = ("date", "git_commit", "platform", "torch", "torch_threads", "cpu_count", "device", "quick",
             "total_seconds", "sections", "results")


def _run(*args: object) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *map(str, args)], cwd=ROOT, capture_output=True, text=True,
                          timeout=300, check=False)


@pytest.fixture
def run_all(monkeypatch):
    """benchmarks/run_all.py imported from its path (a fresh module each test)."""
    spec = importlib.util.spec_from_file_location("run_all_under_test", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, module)  # its dataclasses look the module up there
    spec.loader.exec_module(module)
    return module


def _check_figure(row: dict) -> None:
    assert "error" not in row and "skipped" not in row, row
    assert row["baseline"] and row["candidate"] and row["baseline"] != row["candidate"], row
    assert row["baseline_seconds"] > 0 and row["candidate_seconds"] > 0, row
    assert math.isfinite(row["ratio"]) and row["ratio"] > 0, row
    assert row["ratio_meaning"], row


def test_quick_run_reports_every_figure_with_its_baseline(tmp_path):
    out = tmp_path / "bench.json"
    p = _run("--quick", "--threads", "1", "--out", out, "--only", *CHEAP)
    assert p.returncode == 0, p.stderr
    assert sorted(x.name for x in tmp_path.iterdir()) == ["bench.json"]  # atomic write: no temp file left
    report = json.loads(out.read_text())
    assert all(key in report for key in TOP_LEVEL), sorted(report)
    assert report["quick"] is True and report["torch_threads"] == 1 and report["device"] == "cpu"
    assert report["cpu_count"] >= 1 and report["total_seconds"] > 0
    assert report["git_commit"] is None or len(report["git_commit"]) == 40
    assert list(report["sections"]) == list(CHEAP)
    assert all(s["status"] == "ok" for s in report["sections"].values()), report["sections"]

    rows = {r["name"]: r for r in report["results"]}
    assert set(rows) == {"skeletonization", "skeletonization_batched", "sdf_backend", "decoding", "generation"}
    for row in rows.values():
        _check_figure(row)
        assert row["section"] in CHEAP
    assert rows["skeletonization"]["baseline"].startswith("voxel thinning")
    assert rows["skeletonization_batched"]["batch"] == 16
    sdf = rows["sdf_backend"]
    assert sdf["baseline_queries"] < sdf["candidate_queries"]
    assert sdf["ratio"] == pytest.approx(sdf["candidate_queries_per_second"] / sdf["baseline_queries_per_second"])
    assert sdf["sign_agreement"] > 0.99
    dec = rows["decoding"]
    assert 0 < dec["guided_queries"] < dec["dense_queries"] and 0 < dec["query_ratio"] < 1
    assert dec["chamfer_pointflow"] < 1e-3
    gen = rows["generation"]
    assert gen["organs"] >= 1 and gen["point_diffusion"]["seconds_per_cloud"] > 0
    assert set(gen["stages_per_organ"]) >= {"sample", "decode_dense", "decode_guided"}
    assert "ratio" in p.stdout and "decoding" in p.stdout  # the human-readable table


def test_unknown_section_is_a_one_line_error(tmp_path):
    out = tmp_path / "bench.json"
    p = _run("--quick", "--only", "nosuchsection", "--out", out)
    assert p.returncode == 2, (p.stdout, p.stderr)
    assert "Traceback" not in p.stderr and p.stderr.count("\n") == 1, p.stderr
    assert "error:" in p.stderr and "nosuchsection" in p.stderr
    assert not out.exists()


def test_failing_section_is_recorded_and_the_others_run(run_all, monkeypatch, tmp_path, capsys, one_thread):
    def broken(ctx):
        raise RuntimeError("something\nwent wrong")

    def fine(ctx):
        return [run_all.figure("fake", "fine", "slow way", "fast way", 2.0, 0.5)]

    monkeypatch.setattr(run_all, "SECTIONS", {"broken": broken, "fine": fine})
    out = tmp_path / "bench.json"
    assert run_all.main(["--quick", "--out", str(out)]) == 1
    report = json.loads(out.read_text())
    assert report["sections"]["broken"]["status"] == "error" and report["sections"]["fine"]["status"] == "ok"
    err, ok = report["results"]
    assert err["name"] == "broken" and err["error"] == "RuntimeError: something went wrong"
    assert ok["ratio"] == 4.0
    assert "ERROR RuntimeError" in capsys.readouterr().out


def test_training_section_measures_engine_overhead_per_stage(run_all, tiny_dataset, one_thread):
    ctx = run_all.Context(quick=True, threads=1, dataset=str(tiny_dataset))
    rows = run_all.bench_training(ctx)
    assert [r["stage"] for r in rows] == ["autoencoder", "diffusion"]
    for row in rows:
        _check_figure(row)
        assert row["section"] == "training" and row["steps_timed"] > 0
        assert row["overhead"] == pytest.approx(row["candidate_seconds"] / row["baseline_seconds"] - 1)
        assert row["bare_fwd_bwd_seconds_per_step"] > 0


def test_token_noise_reports_an_unchanged_surface_at_its_floor_and_moves_with_the_spheres(tmp_path):
    """benchmarks/token_noise.py on one fresh kidney at 32³ with the shipped pair: the JSON has every entry, zero
    noise would score the floor, and sphere noise of 5 % of their spread moves the surface well above it."""
    out = tmp_path / "noise.json"
    p = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "token_noise.py"), "--pair",
                        "skellab/weights/autoencoder.pt", "skellab/weights/diffusion.pt", "--families", "kidney",
                        "--n", "1", "--feature-sigma", "0", "--sphere-sigma", "0.05", "--resolution", "32",
                        "--out", str(out)], cwd=ROOT, capture_output=True, text=True, timeout=300, check=False)
    assert p.returncode == 0, p.stderr
    pair = next(iter(json.loads(out.read_text())["pairs"].values()))
    kidney = pair["kidney"]
    assert len(pair["latent_std"]) == 16 and kidney["clean_to_shape"] > 0
    assert kidney["features@0.0"]["to_clean"] == pytest.approx(kidney["sampling_floor"])
    assert kidney["spheres@0.05"]["to_clean"] > 1.5 * kidney["sampling_floor"]


def test_sdedit_topology_keeps_an_encoded_tree_at_small_noise_and_moves_it_more_at_large(tmp_path):
    """benchmarks/sdedit_topology.py on two fresh vessel trees with the shipped pair: the reference trees and their
    encodings are loop-free; SDEdit from σ = 0.05 barely moves the spheres, a fresh sample (σ = 80) moves them far."""
    out = tmp_path / "sdedit.json"
    p = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "sdedit_topology.py"), "--diffusion",
                        "skellab/weights/diffusion.pt", "--families", "vessel_tree", "--n", "2", "--sigma", "0.05", "80",
                        "--steps", "6", "--out", str(out)], cwd=ROOT, capture_output=True, text=True, timeout=300,
                       check=False)
    assert p.returncode == 0, p.stderr
    row = json.loads(out.read_text())["families"]["vessel_tree"]
    assert row["references"]["genus0"] == 2 and row["encoded"]["decoded"]["genus0"] == 2
    runs = row["skellab/weights/diffusion.pt"]
    assert runs["0.05"]["decoded"]["n"] == 2 and runs["0.05"]["decoded"]["several_pieces"] == 0
    assert runs["0.05"]["sphere_channels_moved"] < 0.02 < runs["80.0"]["sphere_channels_moved"]


def test_finish_skeleton_keeps_the_given_spheres_and_scores_every_row(tmp_path):
    """benchmarks/finish_skeleton.py on one fresh kidney with the shipped (joint) model: the given spheres do not
    move, every row (floor, encoded, mean features, sphere union, the model's draws) is scored, and the encoded
    reconstruction lies above the sampling floor."""
    out = tmp_path / "finish.json"
    p = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "finish_skeleton.py"), "--diffusion",
                        "skellab/weights/diffusion.pt", "--families", "kidney", "--n", "1", "--draws", "2",
                        "--steps", "3", "--resample", "1", "--points", "1024", "--out", str(out)], cwd=ROOT,
                       capture_output=True, text=True, timeout=300, check=False)
    assert p.returncode == 0, p.stderr
    row = json.loads(out.read_text())["families"]["kidney"]
    assert set(row) == {"floor", "encoded", "mean_features", "sphere_union", "skellab/weights/diffusion.pt"}
    drawn = row["skellab/weights/diffusion.pt"]
    assert drawn["sphere_max_move"] == 0.0 and drawn["no_surface"] == 0 and drawn["diversity"] > 0
    assert 0 < row["floor"]["cd"] < row["encoded"]["cd"] and row["encoded"]["one_piece"] == 1.0


def test_bench_decoder_times_the_shipped_decoders_on_their_own_guided_queries(tiny_dataset, tmp_path):
    """benchmarks/bench_decoder.py --data: the real workload is the queries guided decoding sends (recorded exactly,
    the model left as it was), timed for both shipped decoders beside the synthetic workload."""
    from skellab.autoencoder import encode_shapes, load_autoencoder
    from skellab.data.medsdf import MedSDF
    from skellab.meshing import decode_grid_guided

    spec = importlib.util.spec_from_file_location("bench_decoder_under_test", ROOT / "benchmarks" / "bench_decoder.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    model = load_autoencoder()
    store = MedSDF.open(tiny_dataset)
    lat, _ = encode_shapes(model, store, store.ids(split="test")[:1])
    q = bench.guided_queries(model, lat[0], 24)
    assert "decode" not in vars(model)  # the recorder is gone
    assert q.shape == (decode_grid_guided(model, lat[0], 24).num_queries, 3) and (abs(q) <= 1.1 + 1e-6).all()
    out = tmp_path / "decoder.json"
    p = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_decoder.py"), "--queries", "1024",
                        "--repeats", "1", "--data", str(tiny_dataset), "--shapes", "2", "--resolution", "24",
                        "--out", str(out)], cwd=ROOT, capture_output=True, text=True, timeout=300, check=False)
    assert p.returncode == 0, p.stderr
    real = json.loads(out.read_text())["real_workload"]
    assert len(real["shapes"]) == 2 and all(n > 0 for w in real["queries"].values() for n in w)
    assert set(real["us_per_query"]) == {"global/fp32", "global/bf16", "kernel/fp32", "kernel/bf16"}
    assert all(math.isfinite(v) and v > 0 for v in real["us_per_query"].values())
    assert real["ratio_vs_global_fp32"]["global/fp32"] == 1.0
