"""Shape validation/normalisation and SDF supervision (sign convention: negative inside)."""

import numpy as np
import pytest
import trimesh

from skellab import SkellabError
from skellab.data.sampling import (
    SampleConfig, grid_points, sample_sdf, sample_surface, sign_agreement, signed_distance, to_paper_sign,
)
from skellab.data.shape import GroundTruthSkeleton, Normalization, Shape, validate_mesh


def _sphere_shape(radius=5.0, center=(10.0, -3.0, 2.0)):
    m = trimesh.creation.icosphere(subdivisions=4, radius=radius)
    return Shape.from_mesh(m.vertices + np.asarray(center), m.faces, shape_id="ball", organ="ball",
                           source="test", license="CC0")


def test_normalisation_maps_to_unit_box_and_inverts():
    s = _sphere_shape()
    assert np.isclose(np.abs(s.vertices).max(), 1.0)
    assert np.allclose(0.5 * (s.vertices.min(0) + s.vertices.max(0)), 0.0, atol=1e-9)
    back = s.normalization.invert(s.vertices)
    assert np.allclose(back.mean(0), [10.0, -3.0, 2.0], atol=1e-2)
    assert np.allclose(s.to_trimesh(original_units=True).vertices, back)
    n = Normalization.from_dict(s.normalization.to_dict())
    assert n == s.normalization
    comp = Normalization((1.0, 2.0, 3.0), 2.0).then(Normalization((0.5, 0.0, 0.0), 3.0))
    x = np.array([[7.0, 1.0, -2.0]])
    assert np.allclose(comp.apply(x), Normalization((0.5, 0, 0), 3.0).apply(Normalization((1, 2, 3), 2.0).apply(x)))


def test_inward_mesh_is_flipped_outward_and_skeleton_normalised():
    m = trimesh.creation.icosphere(subdivisions=2)
    skel = GroundTruthSkeleton(np.array([[4.0, 4.0, 4.0]]), np.array([2.0]), np.zeros((0, 2), np.int64))
    s = Shape.from_mesh(m.vertices * 2 + 4, m.faces[:, ::-1], shape_id="x", organ="x", source="t",
                        license="t", skeleton=skel)
    assert s.to_trimesh().volume > 0
    assert np.allclose(s.skeleton.centers, 0.0, atol=1e-6) and np.isclose(s.skeleton.radii[0], 1.0, atol=1e-2)


@pytest.mark.parametrize(
    "vertices,faces,message",
    [
        (np.zeros((0, 3)), np.zeros((0, 3), int), "empty"),
        (np.full((4, 3), np.nan), np.array([[0, 1, 2], [0, 2, 3]]), "NaN"),
        (np.eye(3), np.array([[0, 1, 5]]), "out of range"),
        (np.eye(4)[:, :2], np.array([[0, 1, 2]]), "shape"),
    ],
)
def test_bad_meshes_raise_one_line_errors(vertices, faces, message):
    with pytest.raises(SkellabError, match=message) as err:
        validate_mesh(vertices, faces)
    assert "\n" not in str(err.value)


def test_mesh_with_hole_is_rejected():
    m = trimesh.creation.icosphere(subdivisions=2)
    with pytest.raises(SkellabError, match="not watertight"):
        validate_mesh(m.vertices, m.faces[:-3])


def test_signed_distance_sphere_exact_and_negative_inside():
    m = trimesh.creation.icosphere(subdivisions=5, radius=1.0)
    q = np.random.default_rng(0).uniform(-1.5, 1.5, (5000, 3))
    sdf = signed_distance(q, m)
    exact = np.linalg.norm(q, axis=1) - 1.0
    assert np.abs(sdf - exact).max() < 2e-3  # icosphere faceting error
    assert signed_distance(np.zeros((1, 3)), m)[0] < 0
    assert np.array_equal(to_paper_sign(sdf), -sdf)
    with pytest.raises(SkellabError, match="NaN"):
        signed_distance(np.array([[np.nan, 0, 0]]), m)


def test_sample_sdf_counts_determinism_and_sign_agreement():
    s = _sphere_shape()
    cfg = SampleConfig(surface_points=2048, near_samples=6000, uniform_samples=4000, grid_resolution=16)
    a = sample_sdf(s, config=cfg, seed=3)
    b = sample_sdf(s, config=cfg, seed=3)
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert a["surface_points"].shape == (2048, 3) and a["sdf_points"].shape == (10000, 3)
    assert a["sdf_grid"].shape == (16, 16, 16)
    assert np.allclose(np.linalg.norm(a["surface_normals"], axis=1), 1.0, atol=1e-5)
    # normals point outward: away from the centre of a sphere
    assert (np.sum(a["surface_normals"] * a["surface_points"], axis=1) > 0).all()
    # near samples concentrate near the surface; uniform fill the box
    assert np.median(np.abs(a["sdf_values"][:6000])) < 0.05
    assert np.abs(a["sdf_points"][6000:]).max() <= 1.1
    assert sign_agreement(s, a["sdf_points"], a["sdf_values"]) >= 0.999
    grid = grid_points(16)
    assert np.allclose(a["sdf_grid"].reshape(-1), signed_distance(grid, s).astype(np.float32))


def test_sample_config_validation():
    with pytest.raises(SkellabError):
        SampleConfig(surface_points=0)
    with pytest.raises(SkellabError):
        SampleConfig(grid_resolution=4)
    with pytest.raises(SkellabError):
        sample_surface(_sphere_shape(), 0, seed=0)
