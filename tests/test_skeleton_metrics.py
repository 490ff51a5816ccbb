"""Skeleton metrics on cases whose answers are known in closed form."""

import numpy as np
import pytest
import torch
import trimesh

from skellab.data.shape import GroundTruthSkeleton
from skellab.errors import SkellabError
from skellab.skeleton.metrics import axis_points, chamfer_points, skeleton_metrics, sphere_union_samples
from skellab.skeleton.types import Skeleton


def test_chamfer_points_is_unsquared_and_directional():
    a = np.zeros((1, 3))
    b = np.array([[3.0, 0, 0], [0, 4.0, 0]])
    cd = chamfer_points(a, b)
    assert cd["a_to_b"] == pytest.approx(3.0) and cd["b_to_a"] == pytest.approx(3.5)
    assert cd["mean"] == pytest.approx(3.25)
    assert chamfer_points(b, b)["mean"] == 0.0
    with pytest.raises(SkellabError):
        chamfer_points(np.zeros((0, 3)), b)


def test_sphere_union_samples_lie_on_the_exposed_boundary():
    c = np.array([[0.0, 0, 0], [0.5, 0, 0]])
    r = np.array([0.4, 0.4])
    pts = sphere_union_samples(c, r, num_samples=4000)
    d = np.linalg.norm(pts[:, None] - c[None], axis=2) - r[None]
    assert np.allclose(d.min(1), 0, atol=1e-9)  # on some sphere
    assert (d >= -1e-9).all()  # inside none


def test_exact_sphere_skeleton_of_a_sphere_scores_perfectly():
    mesh = trimesh.creation.icosphere(5, radius=0.8)
    pts, _ = trimesh.sample.sample_surface(mesh, 3000, seed=0)
    sk = Skeleton(torch.zeros(1, 3), torch.tensor([0.8]))
    m = skeleton_metrics(sk, surface_points=pts, mesh=mesh, true_axis=np.zeros((1, 3)))
    assert m["cd_skeleton_to_axis"] == 0 and m["cd_axis_to_skeleton"] == 0
    assert m["inside_fraction"] == 1.0
    assert m["medial_error_median"] < 0.01 and m["coverage"] == 1.0
    assert m["cd_union_mean"] < 0.01


def test_capsule_axis_skeleton_and_a_shrunken_one():
    mesh = trimesh.creation.capsule(height=1.2, radius=0.2, count=[64, 64])
    pts, _ = trimesh.sample.sample_surface(mesh, 3000, seed=0)
    z = np.linspace(-0.6, 0.6, 60)
    axis_sk = GroundTruthSkeleton(np.stack([0 * z, 0 * z, z], 1), np.full(60, 0.2), np.array([[0, 59]]))
    dense = axis_points(axis_sk, step=0.01)
    assert len(dense) > 120 and np.abs(dense[:, :2]).max() == 0
    good = Skeleton(torch.tensor(axis_sk.centers, dtype=torch.float32), torch.full((60,), 0.2))
    m = skeleton_metrics(good, surface_points=pts, mesh=mesh, true_axis=axis_sk)
    assert m["cd_skeleton_to_axis"] < 1e-6 and m["cd_axis_to_skeleton"] < 0.01
    assert m["medial_error_median"] < 0.02 and m["coverage"] > 0.99 and m["cd_union_mean"] < 0.01
    # Half-size spheres: medial error 1 (|0.2 − 0.1| / 0.1), coverage collapses, union CD ≈ 0.1.
    small = Skeleton(good.centers, torch.full((60,), 0.1))
    m2 = skeleton_metrics(small, surface_points=pts, mesh=mesh)
    assert m2["medial_error_median"] == pytest.approx(1.0, abs=0.05)
    assert m2["coverage"] < 0.05 and m2["cd_surface_to_union"] == pytest.approx(0.1, abs=0.01)
    # A centre outside the mesh lowers the inside fraction.
    out = Skeleton(torch.cat([good.centers, torch.tensor([[1.0, 0, 0]])]), torch.cat([good.radii, torch.tensor([0.1])]))
    assert skeleton_metrics(out, surface_points=pts, mesh=mesh)["inside_fraction"] == pytest.approx(60 / 61)


def test_without_mesh_uses_surface_points():
    d = np.random.default_rng(0).normal(size=(2000, 3))
    pts = 0.5 * d / np.linalg.norm(d, axis=1, keepdims=True)
    m = skeleton_metrics(Skeleton(torch.zeros(1, 3), torch.tensor([0.5])), surface_points=pts)
    assert "inside_fraction" not in m and m["medial_error_median"] < 1e-6
