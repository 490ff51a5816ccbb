"""Reconstruction metrics against brute force and a hand-computed case."""

import itertools

import numpy as np
import pytest
import trimesh

from skellab.errors import SkellabError
from skellab.metrics import chamfer_distance, emd, f_score, hausdorff, precision_recall, reconstruction_metrics


def brute(a, b):
    d = np.linalg.norm(a[:, None] - b[None], axis=-1)
    return d.min(1), d.min(0)


def test_hand_computed_case():
    a = np.array([[0.0, 0.0, 0.0]])
    b = np.array([[1.0, 0.0, 0.0], [0.0, 2.0, 0.0]])
    # a→b: 1 ; b→a: 1 and 2
    assert chamfer_distance(a, b, "pointflow") == pytest.approx(1.0 + (1.0 + 4.0) / 2)
    assert chamfer_distance(a, b, "paper") == pytest.approx(0.5 * (1.0 + 1.5))
    assert hausdorff(a, b) == pytest.approx(2.0)
    assert precision_recall(a, b, 1.5) == (1.0, 0.5)
    assert f_score(a, b, 1.5) == pytest.approx(2 * 0.5 / 1.5)
    assert emd(np.array([[0.0, 0, 0], [1, 0, 0]]), np.array([[1.0, 0, 1], [0, 0, 1]])) == pytest.approx(1.0)


def test_against_brute_force():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(200, 3)), rng.normal(size=(150, 3)) + 0.1
    d_ab, d_ba = brute(a, b)
    assert chamfer_distance(a, b) == pytest.approx((d_ab**2).mean() + (d_ba**2).mean())
    assert chamfer_distance(a, b, convention="paper") == pytest.approx(0.5 * (d_ab.mean() + d_ba.mean()))
    assert hausdorff(a, b) == pytest.approx(max(d_ab.max(), d_ba.max()))
    p, r = (d_ab <= 0.3).mean(), (d_ba <= 0.3).mean()
    assert f_score(a, b, 0.3) == pytest.approx(2 * p * r / (p + r))
    assert chamfer_distance(a, a) == 0.0 and f_score(a, a, 1e-9) == 1.0


def test_emd_is_the_optimal_matching():
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=(6, 3)), rng.normal(size=(6, 3))
    best = min(np.linalg.norm(a - b[list(p)], axis=1).mean() for p in itertools.permutations(range(6)))
    assert emd(a, b) == pytest.approx(best)
    assert emd(a, a[::-1]) == pytest.approx(0.0)
    with pytest.raises(SkellabError, match="equally many"):
        emd(a, b[:5])


def test_input_errors():
    with pytest.raises(SkellabError, match="convention"):
        chamfer_distance(np.zeros((2, 3)), np.zeros((2, 3)), convention="l2")
    with pytest.raises(SkellabError, match=r"\(N, 3\)"):
        chamfer_distance(np.zeros((2, 2)), np.zeros((2, 3)))
    with pytest.raises(SkellabError, match="NaN"):
        hausdorff(np.full((2, 3), np.nan), np.zeros((2, 3)))
    with pytest.raises(SkellabError, match="tau"):
        f_score(np.zeros((2, 3)), np.zeros((2, 3)), 0.0)


def test_reconstruction_metrics_on_meshes():
    sphere = trimesh.creation.icosphere(subdivisions=3, radius=0.5)
    bigger = trimesh.creation.icosphere(subdivisions=3, radius=0.55)
    same = reconstruction_metrics(sphere, (sphere.vertices, sphere.faces), n=1024, seed=0)
    off = reconstruction_metrics(sphere, bigger, n=1024, seed=0)
    assert set(same) >= {"cd_pointflow", "cd_paper", "emd", "hausdorff", "f1@0.02", "f1@0.06", "n"}
    # two independent 1024-point samples of one surface (spacing ~0.055) are close, not identical
    assert same["f1@0.06"] > 0.95 and same["cd_paper"] < 0.03
    # a sphere 0.05 larger: every point is 0.05 off, on top of the sampling gap
    assert off["f1@0.02"] < 0.5 * same["f1@0.02"] and off["cd_paper"] > same["cd_paper"] + 0.02
    assert off["emd"] > same["emd"] + 0.02
    pts = reconstruction_metrics(sphere.vertices, sphere.vertices, n=100, with_emd=False)
    assert pts["n"] == 100 and pts["cd_pointflow"] < 0.05 and "emd" not in pts
