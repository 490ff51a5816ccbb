"""`skellab evaluate --fresh N` and the library behind it (skellab.evaluation.fresh).

Small sizes throughout (a few shapes, 24³–32³ grids, 2–3 sampler steps, a second of baseline
training), so the whole file runs in well under a minute on one thread.
"""

import json

import numpy as np
import pytest
import trimesh
from conftest import run_cli

from skellab.data import build
from skellab.data.procedural import FAMILIES
from skellab.errors import SkellabError
from skellab.evaluation import fresh as fresh_module
from skellab.evaluation import (
    FRESH_SEED0,
    TREE_FAMILIES,
    bootstrap_metrics,
    evaluate_fresh,
    fresh_references,
    fresh_table,
    shape_statistics,
    skeleton_graph_measures,
)
from skellab.metrics import pairwise_distances, sample_points
from skellab.runtime import MAX_SEED


def _one_line_error(code: int, out: str, err: str) -> None:
    assert code == 2, (code, out, err)
    assert err.startswith("skellab") and "error:" in err, err
    assert err.count("\n") == 1 and "Traceback" not in err, err


# ---------------------------------------------------------------------- references
def test_fresh_seeds_are_disjoint_from_every_preset(monkeypatch):
    monkeypatch.setattr(build, "load_packaged_anatomy", list)  # only the procedural specs matter here
    for name in build.PRESET_NAMES:
        seeds = [spec[2] for spec in build._specs(build.preset(name)) if spec[0] == "procedural"]
        assert seeds and max(seeds) < FRESH_SEED0, name


def test_fresh_references_are_new_normalised_shapes():
    shapes = fresh_references("colon", 2)
    assert [s.seed for s in shapes] == [FRESH_SEED0, FRESH_SEED0 + 1]
    for s in shapes:
        v = s.vertices
        assert np.allclose(0.5 * (v.min(0) + v.max(0)), 0, atol=1e-9) and np.isclose(np.abs(v).max(), 1)
    assert not np.allclose(shapes[0].vertices[:10], shapes[1].vertices[:10])
    with pytest.raises(SkellabError, match="'spleen'"):
        fresh_references("spleen", 2)
    with pytest.raises(SkellabError, match="seed0"):
        fresh_references("colon", 2, seed0=3)  # a dataset's seed


# ---------------------------------------------------------------------- one shape
def test_statistics_of_known_meshes():
    torus = shape_statistics(trimesh.creation.torus(major_radius=1.0, minor_radius=0.3), seed=0)
    assert torus["components"] == 1 and torus["watertight"] and torus["genus"] == 1
    assert 0 < torus["solidity"] < 1 and torus["volume"] == pytest.approx(2 * np.pi**2 * 0.3**2, rel=0.05)

    spheres = trimesh.util.concatenate([trimesh.creation.icosphere(3, 0.4).apply_translation([x, 0, 0])
                                        for x in (-1, 1)])
    two = shape_statistics(spheres, seed=0)
    assert two["components"] == 2 and two["genus"] == 0 and two["betti"] == [2, 0, 2]
    assert two["extent"] == pytest.approx([0.8, 0.8, 2.8], abs=0.01)

    opened = trimesh.creation.icosphere(2)
    opened = trimesh.Trimesh(opened.vertices, opened.faces[5:], process=False)
    hole = shape_statistics(opened, seed=0)
    assert not hole["watertight"] and hole["genus"] is None and hole["volume"] is None


def test_skeleton_graph_of_procedural_tubes():
    """A branching vessel has junctions; a colon (one tube) has none; counts follow the analytic skeleton."""
    vessel = fresh_references("vessel_tree", 1)[0]
    stats = shape_statistics(vessel, seed=0)
    truth = skeleton_graph_measures(vessel.skeleton.centers, vessel.skeleton.radii, vessel.skeleton.edges)
    assert stats["junctions"] >= 1 and stats["leaves"] >= 3 and stats["depth"] >= 1
    assert abs(stats["junctions"] - truth["junctions"]) <= 1 and abs(stats["leaves"] - truth["leaves"]) <= 1
    colon = shape_statistics(fresh_references("colon", 1)[0], seed=0)
    assert (colon["junctions"], colon["leaves"], colon["depth"]) == (0, 2, 0)


def test_spurs_are_pruned_and_close_junctions_merged():
    # a Y: three arms of 10 nodes (0.1 apart) from the origin, and a 0.03-long twig at the origin
    arms = [np.array(d, float) for d in ([1, 0, 0], [-0.5, 0.8, 0], [-0.5, -0.8, 0])]
    centers, edges = [np.zeros(3)], []
    for d in arms:
        start = len(centers)
        centers += [d * 0.1 * (k + 1) for k in range(10)]
        edges += [(0, start)] + [(start + k, start + k + 1) for k in range(9)]
    centers.append(np.array([0, 0, 0.03]))
    edges.append((0, len(centers) - 1))
    y = skeleton_graph_measures(np.array(centers), np.full(len(centers), 0.1), np.array(edges))
    assert y == {"junctions": 1, "leaves": 3, "depth": 1}  # the twig lies inside the junction's sphere
    # a fourth branch (6 nodes) leaves arm 0 at its first node, 0.1 from the first junction
    centers.append(np.array([0.1, 0.05, 0]))
    edges.append((1, len(centers) - 1))
    for _ in range(5):
        centers.append(centers[-1] + np.array([0, 0.1, 0]))
        edges.append((len(centers) - 2, len(centers) - 1))
    c, e = np.array(centers), np.array(edges)
    thin = skeleton_graph_measures(c, np.full(len(c), 0.1), e)  # 0.1 apart > 0.5 x radius 0.1: two junctions
    assert thin == {"junctions": 2, "leaves": 4, "depth": 2}
    thick = skeleton_graph_measures(c, np.full(len(c), 0.3), e)  # 0.1 apart < 0.5 x radius 0.3: one junction
    assert thick == {"junctions": 1, "leaves": 4, "depth": 1}
    with pytest.raises(SkellabError):
        skeleton_graph_measures(c, np.full(3, 0.1), e)


# ---------------------------------------------------------------------- the bootstrap
def _ellipsoid_clouds(rng, count, axes_mean, points=256):
    """Point clouds on ellipsoids whose axes vary around ``axes_mean``: a family of shapes."""
    out = []
    for _ in range(count):
        u = rng.normal(size=(points, 3))
        u /= np.linalg.norm(u, axis=1, keepdims=True)
        out.append(u * (np.asarray(axes_mean) * rng.uniform(0.8, 1.2, size=3)))
    return np.stack(out)


def _matrices(g, r):
    return (pairwise_distances(g, g), pairwise_distances(r, r), pairwise_distances(g, r))


def test_bootstrap_intervals_are_reproducible_and_hold_the_estimate():
    rng = np.random.default_rng(0)
    d = _matrices(_ellipsoid_clouds(rng, 20, (1, 0.6, 0.4)), _ellipsoid_clouds(rng, 20, (1, 0.6, 0.4)))
    a = bootstrap_metrics(*d, reps=100, seed=3)
    assert a == bootstrap_metrics(*d, reps=100, seed=3)
    assert a != bootstrap_metrics(*d, reps=100, seed=4)
    for key in ("cov", "1nna"):
        lo, hi = a[key]["ci"]
        assert lo <= a[key]["value"] <= hi and lo < hi
    # MMD: the resamples hold fewer distinct shapes, so their minima are larger (documented bias)
    assert a["mmd"]["bootstrap_mean"] > a["mmd"]["value"] > 0 and a["mmd"]["ci"][0] < a["mmd"]["ci"][1]
    wider = bootstrap_metrics(*d, reps=100, seed=3, level=0.99)
    assert wider["1nna"]["ci"][0] <= a["1nna"]["ci"][0] and wider["1nna"]["ci"][1] >= a["1nna"]["ci"][1]
    with pytest.raises(SkellabError):
        bootstrap_metrics(d[0], d[1][:5, :5], d[2])


def test_one_nna_tells_far_sets_apart_and_not_same_ones():
    rng = np.random.default_rng(1)
    ref = _ellipsoid_clouds(rng, 24, (1, 0.6, 0.4))
    same = bootstrap_metrics(*_matrices(_ellipsoid_clouds(rng, 24, (1, 0.6, 0.4)), ref), reps=50)["1nna"]
    far = bootstrap_metrics(*_matrices(_ellipsoid_clouds(rng, 24, (1, 1, 1)), ref), reps=50)["1nna"]
    assert 0.3 <= same["value"] <= 0.7 and same["ci"][0] <= 0.5 <= same["ci"][1]
    assert far["value"] >= 0.95 and far["ci"][0] > same["ci"][1]


def test_a_duplicate_is_not_its_own_neighbour():
    """Resampling one generated shape twice must not make it its own nearest neighbour in 1-NNA."""
    d_gg, d_rr = np.array([[0.0]]), np.array([[0.0, 1.0], [1.0, 0.0]])
    d_gr = np.array([[0.5, 0.5]])  # the generated shape is nearer each reference than they are to each other
    b = bootstrap_metrics(d_gg, d_rr, d_gr, reps=20, seed=0, samples=True)
    assert b["1nna"]["value"] == 0.0  # leave-one-out: every shape's neighbour is in the other set
    assert max(b["1nna"]["samples"]) == 0.0  # copies masked: never "right" through a twin


# ---------------------------------------------------------------------- end to end
def test_evaluate_fresh_end_to_end(tiny_dataset, one_thread):
    rows = []
    res = evaluate_fresh(3, classes=["vessel_tree", "kidney"], data=tiny_dataset, resolution=32, steps=3, reps=30,
                         num_points=512, emd_points=64, baseline_seconds=1, seed=0, gallery=rows.append,
                         gallery_size=2)
    json.dumps(res)  # JSON-serialisable
    assert res["classes"] == ["vessel_tree", "kidney"]  # procedural only: the tiny dataset has no real class
    assert res["references"]["kidney"] == {"kind": "procedural", "seeds": [FRESH_SEED0, FRESH_SEED0 + 2], "n": 3,
                                           "second_draw": {"seeds": [FRESH_SEED0 + 3, FRESH_SEED0 + 5]}}
    assert set(res["methods"]) == {"skellab", "point_diffusion", "surface_latent_ablation", "reference_draw",
                                   "autoencoder_reconstruction"}
    for name, method in res["methods"].items():
        assert method["available"], name
        for c in res["classes"]:
            row = method["per_class"][c]
            assert row["n_generated"] + row["failed"] == 3
            for key, m in row["metrics"].items():
                lo, hi = m["ci"]
                assert lo <= hi and np.isfinite(m["value"]), (name, c, key)
                if not key.startswith("mmd"):
                    assert 0 <= lo and hi <= 1 and 0 <= m["value"] <= 1
            plaus = row["plausibility"]
            if name == "point_diffusion":
                assert plaus is None and "no meshes" in row["note"]
                continue
            assert plaus["single_component_fraction"]["reference"] == 1.0  # procedural shapes are one piece
            assert sum(plaus["genus"]["histogram"]["reference"].values()) == 3
            assert ("junctions" in plaus) == (c in TREE_FAMILIES)
        summary = method["summary"]["procedural"]
        assert summary["classes"] == ["vessel_tree", "kidney"] and method["summary"]["real"] is None
        values = [method["per_class"][c]["metrics"]["1nna_cd"]["value"] for c in res["classes"]]
        assert summary["1nna_cd"]["value"] == pytest.approx(np.mean(values))
    budget = res["methods"]["point_diffusion"]["training"]
    assert budget["cpu_budget_seconds"] == 1 and budget["steps"] >= 1
    assert res["setup"]["timings"]["references"]["count"] == 6 and res["setup"]["torch_threads"] == 1
    assert "1-NNA-CD" in fresh_table(res)

    # the gallery: per class and mesh method, generated meshes beside their nearest reference by CD
    assert {(r.method, r.organ) for r in rows} == {(m, c) for m in ("skellab", "surface_latent_ablation", "reference_draw",
                                                                     "autoencoder_reconstruction")
                                                   for c in ("vessel_tree", "kidney")}
    row = next(r for r in rows if r.method == "skellab" and r.organ == "kidney")
    refs = [s.to_trimesh() for s in fresh_references("kidney", 3)]
    ref_pts = np.stack([sample_points(m, 512, seed=j) for j, m in enumerate(refs)])
    for mesh, i, j, cd in zip(row.generated, row.indices, row.reference_indices, row.chamfer):
        d = pairwise_distances(sample_points(mesh, 512, seed=i)[None], ref_pts)[0]
        assert int(d.argmin()) == j and d[j] == pytest.approx(cd)


def test_second_draw_rows_are_the_draw_and_its_reconstructions(one_thread):
    """reference_draw scores a second fresh draw as it is; autoencoder_reconstruction scores that same draw
    encoded and decoded: each reconstruction is far nearer its own source than any other shape of the draw."""
    rows = []
    res = evaluate_fresh(4, classes=["vessel_tree"], methods=["reference_draw", "autoencoder_reconstruction"],
                         resolution=32, reps=20, num_points=256, emd_points=64, gallery=rows.append, gallery_size=4)
    assert res["references"]["vessel_tree"]["second_draw"] == {"seeds": [FRESH_SEED0 + 4, FRESH_SEED0 + 7]}
    assert list(res["methods"]) == ["reference_draw", "autoencoder_reconstruction"]
    second = [s.to_trimesh() for s in fresh_references("vessel_tree", 4, seed0=FRESH_SEED0 + 4)]
    src = np.stack([sample_points(m, 512, seed=j) for j, m in enumerate(second)])
    by_method = {r.method: r for r in rows}
    for a, b in zip(by_method["reference_draw"].generated, second):  # the draw itself, in its own frame
        np.testing.assert_allclose(a.vertices, b.vertices, atol=1e-6)
    recon = by_method["autoencoder_reconstruction"]
    assert res["methods"]["autoencoder_reconstruction"]["per_class"]["vessel_tree"]["failed"] == 0
    d = pairwise_distances(np.stack([sample_points(m, 512, seed=j) for j, m in enumerate(recon.generated)]), src)
    assert list(d.argmin(axis=1)) == [0, 1, 2, 3]
    off = d + np.diag(np.full(4, np.inf))
    assert (off.min(axis=1) > 5 * np.diag(d)).all()  # measured: 37x-80x apart at 32^3
    with pytest.raises(SkellabError, match="seeds"):  # the second draw must fit below the largest seed
        evaluate_fresh(4, classes=["kidney"], seed0=MAX_SEED - 5, methods=["reference_draw"])


def test_a_seed_without_a_valid_shape_is_skipped_and_recorded(monkeypatch):
    """A seed whose shape fails to build is skipped and recorded, and the next seed is drawn instead."""
    real = fresh_module.make_shape

    def flawed(family, seed):  # vascular_ring seed 1,000,103 had a hole until near-zero grid values were handled
        if seed == FRESH_SEED0 + 103:
            raise SkellabError(f"{family}_{seed}: mesh is not watertight (it has holes or non-manifold edges)")
        return real(family, seed)

    monkeypatch.setattr(fresh_module, "make_shape", flawed)
    skipped = []
    shapes = fresh_references("vascular_ring", 2, seed0=FRESH_SEED0 + 102, skipped=skipped)
    assert [s.seed for s in shapes] == [FRESH_SEED0 + 102, FRESH_SEED0 + 104]
    assert [f["seed"] for f in skipped] == [FRESH_SEED0 + 103] and "watertight" in skipped[0]["error"]
    assert all(s.to_trimesh().is_watertight for s in shapes)
    with pytest.raises(SkellabError, match="2 of the seeds"):  # more failures than shapes asked for
        monkeypatch.setattr(fresh_module, "make_shape", lambda family, seed: flawed(family, FRESH_SEED0 + 103))
        fresh_references("vascular_ring", 1, seed0=FRESH_SEED0 + 102)


def test_evaluate_fresh_refuses_bad_arguments():
    with pytest.raises(SkellabError, match="'kidneys'"):
        evaluate_fresh(2, classes=["kidneys"])
    with pytest.raises(SkellabError, match="emd_points"):
        evaluate_fresh(2, classes=["kidney"], num_points=64, emd_points=128)
    assert set(TREE_FAMILIES) <= set(FAMILIES)


def test_max_genus_rejection_is_recorded_per_class(one_thread):
    res = evaluate_fresh(2, classes=["vessel_tree"], methods=["skellab"], resolution=24, steps=2, num_points=256,
                         emd_points=64, reps=10, max_genus=0, max_attempts=2)
    rej = res["methods"]["skellab"]["rejection"]["vessel_tree"]
    assert rej["organs"] == 2 and 2 <= rej["draws"] <= 4 and rej["max_attempts"] == 2 and rej["max_genus"] == 0
    assert rej["acceptance"] == pytest.approx(2 / rej["draws"])
    genus = res["methods"]["skellab"]["per_class"]["vessel_tree"]["plausibility"]["genus"]["histogram"]["generated"]
    assert rej["met"] == genus.get("0", 0)  # the constraint is judged on the mesh the metrics see
    assert res["setup"]["max_genus"] == 0 and res["setup"]["max_attempts"] == 2


# ---------------------------------------------------------------------- the command line
@pytest.mark.parametrize("args", [
    ("--fresh", "0"),
    ("--fresh", "two"),
    ("--fresh", "2", "--n", "3"),  # --n is the test-fold count
    ("--gallery", "g"),  # neither --fresh nor --data
    ("--fresh", "2", "--bootstrap", "-5"),
    ("--fresh", "2", "--classes", "no_such_organ"),
    ("--fresh", "2", "--overwrite"),  # nothing to overwrite without --gallery
    ("--fresh", "2", "--methods", "diffusion"),  # not a method
    ("--data", "d", "--methods", "reference_draw"),  # a row of --fresh only
    ("--fresh", "2", "--ref-seed", "5"),  # a dataset preset's seed
    ("--fresh", "2", "--ref-seed", "x"),
    ("--data", "d", "--ref-seed", "3000000"),  # --ref-seed belongs to --fresh
    ("--fresh", "2", "--max-genus", "-1"),
    ("--fresh", "2", "--max-genus", "0", "--max-attempts", "0"),
])
def test_evaluate_fresh_bad_flags_are_one_line_exit_2(tmp_path, args):
    _one_line_error(*run_cli("evaluate", "--out", tmp_path / "r.json", *args))
    assert not (tmp_path / "r.json").exists()


def test_evaluate_fresh_cli_writes_json_table_and_gallery(tmp_path, one_thread):
    foreign = tmp_path / "busy"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    _one_line_error(*run_cli("evaluate", "--fresh", "2", "--out", tmp_path / "r.json", "--gallery", foreign,
                             "--overwrite"))  # refused before any work: a file evaluate does not write
    assert (foreign / "notes.txt").read_text() == "mine"

    out, gallery = tmp_path / "r.json", tmp_path / "gallery"
    code, stdout, err = run_cli("evaluate", "--fresh", "2", "--classes", "kidney", "--out", out, "--gallery", gallery,
                                "--resolution", "24", "--steps", "2", "--points", "256", "--bootstrap", "10", "--quiet")
    assert code == 0, err
    res = json.loads(out.read_text())
    assert res["setup"]["n_per_family"] == 2 and res["setup"]["emd_points"] == 256
    assert res["methods"]["point_diffusion"]["available"] is False  # no --data, no --baseline-checkpoint
    assert "1-NNA-CD" in stdout and "kidney" in stdout and "point_diffusion: not evaluated" in stdout
    assert sorted(p.name for p in gallery.iterdir()) == ["kidney.png"]
    assert (gallery / "kidney.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    only = tmp_path / "only.json"
    code, stdout, err = run_cli("evaluate", "--fresh", "2", "--classes", "kidney", "--out", only, "--methods", "skellab",
                                "--resolution", "24", "--steps", "2", "--points", "256", "--bootstrap", "10", "--quiet",
                                "--ref-seed", "3000000")
    assert code == 0, err
    assert list(json.loads(only.read_text())["methods"]) == ["skellab"]  # neither the baseline nor the ablation
    assert json.loads(only.read_text())["setup"]["reference_seeds"] == [3000000, 3000001]  # a validation range
