"""Shape validation/normalisation and SDF supervision (sign convention: negative inside)."""

import numpy as np
import pytest
import trimesh

from skellab import SkellabError
from skellab.data.sampling import (
    SampleConfig, grid_points, point_cloud_sdf, sample_sdf, sample_surface, sign_agreement, signed_distance,
    to_paper_sign,
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


def _cloud(mesh, count, seed=0):
    points, faces = trimesh.sample.sample_surface(mesh, count, seed=seed)
    return points, mesh.face_normals[faces]


def test_point_cloud_sdf_matches_the_exact_sdf_of_a_ball_and_of_a_thin_hollow_shell():
    rng = np.random.default_rng(0)
    ball = trimesh.creation.icosphere(subdivisions=5, radius=0.5)
    p, n = _cloud(ball, 20000)
    q = np.concatenate([rng.normal(size=(2000, 3)) * 0.02 + p[:2000], rng.uniform(-1.1, 1.1, (2000, 3))])
    exact = np.linalg.norm(q, axis=1) - 0.5
    approx = point_cloud_sdf(p, n * 3.0, q)  # normals of any length
    near = np.abs(exact) < 0.05
    assert np.abs(approx - exact)[near].mean() < 0.003 and np.abs(approx - exact).max() < 0.03
    assert np.mean(np.sign(approx) == np.sign(exact)) > 0.995
    # a wall 0.04 thick (outer radius 0.5, inner 0.46, normals of the cavity point into it): the wall is inside,
    # the cavity and the outside are not
    inner = trimesh.creation.icosphere(subdivisions=5, radius=0.46)
    pi, ni = _cloud(inner, 20000, seed=1)
    shell_p, shell_n = np.concatenate([p, pi]), np.concatenate([n, -ni])
    probes = np.array([[0.48, 0, 0], [0, -0.48, 0], [0.2, 0, 0], [0, 0, 0], [0.7, 0, 0], [0, 0.53, 0]])
    sdf = point_cloud_sdf(shell_p, shell_n, probes)
    assert (sdf[:2] < 0).all() and (sdf[2:] > 0).all()
    assert np.allclose(sdf, [-0.02, -0.02, 0.26, 0.46, 0.2, 0.03], atol=0.005)
    with pytest.raises(SkellabError, match="normals point inward"):
        point_cloud_sdf(p, -n, q)  # normals that point into the ball would flip every sign


@pytest.mark.parametrize("points,normals,queries,message", [
    (np.zeros((30, 2)), np.ones((30, 2)), np.zeros((1, 3)), "points must have shape"),
    (np.zeros((30, 3)), np.ones((29, 3)), np.zeros((1, 3)), "normals must have"),
    (np.zeros((10, 3)), np.ones((10, 3)), np.zeros((1, 3)), "more than 16 points"),
    (np.full((30, 3), np.nan), np.ones((30, 3)), np.zeros((1, 3)), "NaN"),
    (np.random.default_rng(0).normal(size=(30, 3)), np.zeros((30, 3)), np.zeros((1, 3)), "zero length"),
    (np.random.default_rng(0).normal(size=(30, 3)), np.ones((30, 3)), np.zeros((4, 2)), "queries must have"),
    (np.random.default_rng(0).normal(size=(30, 3)), np.ones((30, 3)), np.full((1, 3), np.inf), "queries contain"),
])
def test_point_cloud_sdf_bad_input(points, normals, queries, message):
    with pytest.raises(SkellabError, match=message):
        point_cloud_sdf(points, normals, queries)
