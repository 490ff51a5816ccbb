"""Joining stray islands of sampled spheres onto the organ's main body (skellab.skeleton.connect)."""

import numpy as np
import pytest
import torch

from skellab.errors import SkellabError
from skellab.meshing import count_components, extract_mesh
from skellab.skeleton.connect import connect_spheres, overlap_components


def _chain(start, n, step=0.08, r=0.06):
    c = np.array(start, dtype=np.float64) + np.arange(n)[:, None] * np.array([step, 0.0, 0.0])
    return c, np.full(n, r)


def _body_and_islands():
    """A 20-sphere tube along x, a 3-sphere island beside it and a single sphere far above."""
    body_c, body_r = _chain([-0.8, 0.0, 0.0], 20)
    isl_c, isl_r = _chain([0.0, 0.35, 0.0], 3, step=0.04, r=0.04)
    far_c, far_r = np.array([[0.2, 0.0, 0.7]]), np.array([0.05])
    return np.concatenate([body_c, isl_c, far_c]), np.concatenate([body_r, isl_r, far_r])


def test_islands_join_the_body_rigidly_and_the_body_stays():
    c, r = _body_and_islands()
    assert overlap_components(c, r).max() + 1 == 3
    before = c.copy()
    new, info = connect_spheres(c, r, overlap=0.3)
    np.testing.assert_array_equal(c, before)  # the input is not changed
    new = new.numpy().astype(np.float64)
    assert overlap_components(new, r, overlap=0.3).max() + 1 == 1
    np.testing.assert_array_equal(new[:20], c[:20].astype(np.float32))  # the main body never moves
    shift = new[20:23] - c[20:23]  # the island moved as a whole: its own shape is unchanged
    np.testing.assert_allclose(shift, shift[:1].repeat(3, 0), atol=1e-6)
    assert info["islands"] == 2 and info["spheres_moved"] == 4
    # each island ends exactly at the margin to its nearest body sphere: d = (1 - 0.3)(r_i + r_j)
    d = np.linalg.norm(new[20:, None] - new[None, :20], axis=-1) - 0.7 * (r[20:, None] + r[None, :20])
    assert -2e-5 < d[:3].min() < 0 and -2e-5 < d[3].min() < 0
    assert info["max_shift"] == pytest.approx(np.linalg.norm(new - c, axis=1).max(), abs=1e-6)


def test_a_connected_set_and_empty_spheres_are_left_alone():
    c, r = _chain([-0.5, 0.0, 0.0], 10)
    new, info = connect_spheres(c, r)
    np.testing.assert_array_equal(new.numpy(), c.astype(np.float32))
    assert info == {"islands": 0, "spheres_moved": 0, "max_shift": 0.0, "mean_shift": 0.0}
    c2 = np.concatenate([c, [[0.0, 0.9, 0.0]]])
    r2 = np.concatenate([r, [0.0]])  # radius 0: an empty sphere, not an island
    new, info = connect_spheres(c2, r2)
    assert info["islands"] == 0 and overlap_components(c2, r2)[-1] == -1


def test_anchored_spheres_never_move():
    c, r = _body_and_islands()
    anchored = np.zeros(len(c), dtype=bool)
    anchored[23] = True  # the far sphere is a kept token: it stays; the free island still joins
    new, info = connect_spheres(c, r, anchored=anchored)
    new = new.numpy()
    np.testing.assert_array_equal(new[23], c[23].astype(np.float32))
    np.testing.assert_array_equal(new[:20], c[:20].astype(np.float32))
    assert info["islands"] == 1 and not np.allclose(new[20:23], c[20:23])


@pytest.mark.parametrize("centers, radii, kw, message", [
    (np.zeros((4, 2)), np.ones(4), {}, "centers must be"),
    (np.zeros((4, 3)), np.ones(3), {}, "centers must be"),
    (np.full((4, 3), np.nan), np.ones(4), {}, "finite"),
    (np.zeros((4, 3)), np.ones(4), {"overlap": 1.0}, "overlap must be"),
    (np.zeros((4, 3)), np.ones(4), {"anchored": np.ones(3, bool)}, "anchored must be"),
])
def test_bad_input_is_refused(centers, radii, kw, message):
    with pytest.raises(SkellabError, match=message):
        connect_spheres(centers, radii, **kw)


def test_generated_token_sets_are_one_piece_and_only_positions_change():
    from skellab.generation import generate_from_models, load_generation_models

    diff, ae = load_generation_models()
    raw = generate_from_models(diff, ae, "vessel_tree", 2, steps=4, seed=3, decode=False, connect=None)
    joined = generate_from_models(diff, ae, "vessel_tree", 2, steps=4, seed=3, decode=False, connect=0.3)
    assert torch.equal(raw.tokens[..., 3:], joined.tokens[..., 3:])  # radii and features untouched
    for b in range(2):
        r = joined.radii[b].clamp_min(0)
        assert overlap_components(joined.centers[b], r, overlap=0.3).max() + 1 == 1
    assert sum(overlap_components(raw.centers[b], raw.radii[b].clamp_min(0)).max() + 1 for b in range(2)) > 2
    with pytest.raises(SkellabError, match="connect must be an overlap margin"):
        generate_from_models(diff, ae, "vessel_tree", 1, steps=2, decode=False, connect=1.0)


def test_sub_voxel_specks_are_dropped_from_a_mesh():
    R = 32
    x = np.linspace(-1.1, 1.1, R)
    g = np.stack(np.meshgrid(x, x, x, indexing="ij"), -1)
    sdf = np.linalg.norm(g, axis=-1) - 0.5
    sdf[28, 28, 28] = -0.01  # one isolated grid value inside: a speck smaller than a grid cell
    v, f = extract_mesh(sdf)
    assert count_components(v, f) == 2
    v, f = extract_mesh(sdf, min_piece_cells=1.0)
    assert count_components(v, f) == 1 and abs(len(v) - len(extract_mesh(sdf, largest_component=True)[0])) == 0
