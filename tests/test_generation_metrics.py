"""Generation metrics: hand-computed cases, brute-force references, Betti numbers of known surfaces."""

import itertools

import numpy as np
import pytest
import trimesh

from skellab.errors import SkellabError
from skellab.metrics.generation import (
    betti_error,
    betti_numbers,
    coverage,
    generation_metrics,
    mmd,
    one_nna,
    pairwise_distances,
)
from skellab.metrics.reconstruction import chamfer_distance, emd


# ---------------------------------------------------------------------- hand-computed
D_GR = np.array([[1.0, 4.0],   # gen 0: nearest ref 0
                 [2.0, 3.0]])  # gen 1: nearest ref 0


def test_mmd_and_coverage_by_hand():
    assert mmd(D_GR) == pytest.approx((1.0 + 3.0) / 2)  # per ref: min over gen = 1 (ref 0), 3 (ref 1)
    assert coverage(D_GR) == pytest.approx(0.5)  # only ref 0 is anyone's nearest
    assert coverage(np.array([[1.0, 4.0], [3.0, 2.0]])) == 1.0


def test_one_nna_by_hand():
    d_gg = np.array([[0.0, 5.0], [5.0, 0.0]])
    d_rr = np.array([[0.0, 0.5], [0.5, 0.0]])
    # gen0 → ref0 (1) wrong; gen1 → ref0 (2) wrong; ref0 → ref1 (0.5) right; ref1 → ref0 right: 2/4
    assert one_nna(d_gg, d_rr, D_GR) == pytest.approx(0.5)
    d_gg2 = np.array([[0.0, 0.1], [0.1, 0.0]])
    # now both gens find each other: all four right
    assert one_nna(d_gg2, d_rr, D_GR) == pytest.approx(1.0)
    # memorisation: each gen sits on a ref, refs far apart, gens far apart → every shape picks the other set
    d_gr = np.array([[0.0, 9.0], [9.0, 0.0]])
    far = np.array([[0.0, 9.0], [9.0, 0.0]])
    assert one_nna(far, far, d_gr) == pytest.approx(0.0)
    assert one_nna(far, far, d_gr, folded=True) == pytest.approx(1.0)
    with pytest.raises(SkellabError):
        one_nna(d_gg, d_rr, np.zeros((3, 2)))


def test_single_point_clouds_by_hand():
    """N = 1: CD_pointflow = 2‖x − y‖², CD_paper = ‖x − y‖, EMD = ‖x − y‖."""
    gen = np.array([[[0.0, 0.0, 0.0]], [[3.0, 0.0, 0.0]]])
    ref = np.array([[[0.0, 1.0, 0.0]], [[3.0, 0.0, 2.0]]])
    d = pairwise_distances(gen, ref, "cd")
    assert np.allclose(d, [[2 * 1, 2 * 13], [2 * 10, 2 * 4]])
    assert np.allclose(pairwise_distances(gen, ref, "cd", convention="paper"), np.sqrt([[1, 13], [10, 4]]))
    assert np.allclose(pairwise_distances(gen, ref, "emd"), np.sqrt([[1, 13], [10, 4]]))
    m = generation_metrics(gen, ref)
    assert m["mmd_cd"] == pytest.approx((2 + 8) / 2) and m["mmd_cd_x1e3"] == pytest.approx(5000)
    assert m["mmd_emd"] == pytest.approx((1 + 2) / 2) and m["mmd_emd_x1e2"] == pytest.approx(150)
    assert m["cov_cd"] == 1.0 and m["num_generated"] == 2 and m["num_points"] == 1
    # gen0 ↔ ref0 and gen1 ↔ ref1 are each other's nearest: every shape's 1-NN is in the other set
    assert m["1nna_cd"] == 0.0 and m["1nna_cd_folded"] == 1.0


# ---------------------------------------------------------------------- brute-force references
def _brute(gen, ref, fn):
    return np.array([[fn(g, r) for r in ref] for g in gen])


def _brute_mmd_cov_nna(d_gg, d_rr, d_gr):
    G, R = d_gr.shape
    mmd_ = sum(min(d_gr[i][j] for i in range(G)) for j in range(R)) / R
    covered = {min(range(R), key=lambda j: d_gr[i][j]) for i in range(G)}
    labels = [1] * G + [0] * R
    def dist(a, b):
        if a < G and b < G:
            return d_gg[a][b]
        if a >= G and b >= G:
            return d_rr[a - G][b - G]
        return d_gr[a][b - G] if a < G else d_gr[b][a - G]
    right = 0
    for a in range(G + R):
        nn = min((b for b in range(G + R) if b != a), key=lambda b: dist(a, b))
        right += labels[nn] == labels[a]
    return mmd_, len(covered) / R, right / (G + R)


@pytest.mark.parametrize("convention", ["pointflow", "paper"])
def test_batched_chamfer_matches_loops(convention):
    rng = np.random.default_rng(0)
    gen, ref = rng.normal(size=(5, 64, 3)), rng.normal(size=(4, 64, 3))
    fast = pairwise_distances(gen, ref, "cd", convention=convention)
    slow = _brute(gen, ref, lambda a, b: chamfer_distance(a, b, convention=convention))
    assert np.allclose(fast, slow, rtol=1e-9, atol=1e-12)
    # lists of clouds work too
    assert np.allclose(pairwise_distances(list(gen), list(ref), "cd", convention=convention), slow)


@pytest.mark.parametrize("convention", ["pointflow", "paper"])
def test_matrix_product_chamfer_matches_kdtree(convention):
    """The accelerator path (float32 neighbour search, float64 distances) equals the exact CPU path."""
    import torch

    from skellab.metrics.generation import _chamfer_block

    rng = np.random.default_rng(4)
    gen, ref = rng.normal(size=(3, 200, 3)), rng.normal(size=(3, 150, 3))
    exact = pairwise_distances(gen, ref, "cd", convention=convention)
    a = torch.from_numpy(gen).repeat_interleave(3, 0)
    b = torch.from_numpy(ref).repeat(3, 1, 1)
    assert np.allclose(_chamfer_block(a, b, convention).numpy().reshape(3, 3), exact, rtol=1e-9)


def test_metrics_match_brute_force_on_random_sets():
    rng = np.random.default_rng(1)
    gen, ref = rng.normal(size=(6, 32, 3)), rng.normal(size=(6, 32, 3)) * 1.2
    for metric, fn in (("cd", chamfer_distance), ("emd", emd)):
        d_gr, d_gg, d_rr = (pairwise_distances(a, b, metric) for a, b in ((gen, ref), (gen, gen), (ref, ref)))
        assert np.allclose(d_gr, _brute(gen, ref, fn))
        m_, c_, n_ = _brute_mmd_cov_nna(d_gg, d_rr, d_gr)
        assert mmd(d_gr) == pytest.approx(m_) and coverage(d_gr) == pytest.approx(c_)
        assert one_nna(d_gg, d_rr, d_gr) == pytest.approx(n_)
        out = generation_metrics(gen, ref, metrics=(metric,))
        assert out[f"mmd_{metric}"] == pytest.approx(m_) and out[f"1nna_{metric}"] == pytest.approx(n_)


def test_emd_equals_minimum_over_permutations():
    rng = np.random.default_rng(2)
    a, b = rng.normal(size=(5, 3)), rng.normal(size=(5, 3))
    best = min(np.linalg.norm(a - b[list(p)], axis=1).mean() for p in itertools.permutations(range(5)))
    assert pairwise_distances(a[None], b[None], "emd")[0, 0] == pytest.approx(best)


def test_identical_sets_are_ideal():
    rng = np.random.default_rng(3)
    clouds = rng.normal(size=(4, 16, 3))
    m = generation_metrics(clouds, clouds, metrics=("cd",))
    assert m["mmd_cd"] == pytest.approx(0, abs=1e-12) and m["cov_cd"] == 1.0


def test_bad_input():
    with pytest.raises(SkellabError):
        pairwise_distances(np.zeros((2, 5, 2)), np.zeros((2, 5, 3)))
    with pytest.raises(SkellabError):
        pairwise_distances(np.zeros((2, 5, 3)), np.zeros((2, 6, 3)), "emd")
    with pytest.raises(SkellabError):
        pairwise_distances(np.zeros((2, 5, 3)), np.zeros((2, 5, 3)), "hausdorff")
    with pytest.raises(SkellabError):
        pairwise_distances([np.zeros((5, 3)), np.zeros((4, 3))], np.zeros((2, 5, 3)))


# ---------------------------------------------------------------------- Betti numbers
def test_betti_numbers_of_known_surfaces():
    sphere = trimesh.creation.icosphere(subdivisions=2)
    torus = trimesh.creation.torus(major_radius=1.0, minor_radius=0.3)
    two = trimesh.util.concatenate([sphere, sphere.copy().apply_translation([3, 0, 0])])
    assert betti_numbers(sphere) == (1, 0, 1)
    assert betti_numbers(torus) == (1, 2, 1)
    assert betti_numbers(two) == (2, 0, 2)
    assert betti_numbers((sphere.vertices, sphere.faces[1:])) == (1, 0, 0)  # a punctured sphere is a disk
    # duplicated vertices (unwelded triangle soup) are merged first
    soup = trimesh.Trimesh(sphere.vertices[sphere.faces.reshape(-1)], np.arange(3 * len(sphere.faces)).reshape(-1, 3),
                           process=False)
    assert betti_numbers(soup) == (1, 0, 1)


def test_betti_error():
    sphere = trimesh.creation.icosphere(subdivisions=1)
    torus = trimesh.creation.torus(major_radius=1.0, minor_radius=0.3)
    e = betti_error([sphere, torus], [sphere, sphere], paired=True)
    assert e["b1"] == pytest.approx(1.0) and e["total"] == pytest.approx(1.0) and e["exact"] == 0.5
    u = betti_error([sphere, torus], [sphere, torus])
    assert u["total"] == 0 and u["exact"] == 1.0
    with pytest.raises(SkellabError):
        betti_error([sphere], [sphere, sphere], paired=True)
