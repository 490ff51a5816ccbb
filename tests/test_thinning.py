"""Voxel-thinning baseline: a capsule's skeleton is its axis, with its radius."""

import numpy as np
import pytest
import torch
import trimesh
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from skellab.errors import SkellabError
from skellab.skeleton.thinning import ThinningConfig, skeletonize_thinning, voxelize

RADIUS, HALF = 0.3, 0.6  # capsule: axis from z=-0.6 to z=0.6, radius 0.3


@pytest.fixture(scope="module")
def capsule() -> trimesh.Trimesh:
    return trimesh.creation.capsule(height=2 * HALF, radius=RADIUS, count=[32, 32])


@pytest.fixture(scope="module")
def capsule_skeleton(capsule):
    return skeletonize_thinning(capsule, resolution=64, generator=torch.Generator().manual_seed(0))


def _distance_to_axis(points: np.ndarray) -> np.ndarray:
    z = np.clip(points[:, 2], -HALF, HALF)
    return np.linalg.norm(points - np.stack([0 * z, 0 * z, z], axis=1), axis=1)


def test_capsule_axis_recovered(capsule_skeleton):
    c = capsule_skeleton.centers.numpy()
    assert capsule_skeleton.method == "thinning"
    assert capsule_skeleton.num_spheres >= 10
    assert _distance_to_axis(c).mean() < 0.04  # centres on the axis (voxel 0.03)
    axis = np.stack([np.zeros(50), np.zeros(50), np.linspace(-0.5, 0.5, 50)], axis=1)
    back = np.linalg.norm(axis[:, None] - c[None], axis=2).min(axis=1)
    assert back.max() < 0.1  # and spread along it, not collapsed to a point


def test_capsule_radius_recovered(capsule_skeleton):
    r = capsule_skeleton.radii.numpy()
    assert abs(np.median(r) - RADIUS) / RADIUS < 0.15
    assert (r > 0).all()


def test_edges_form_one_connected_graph(capsule_skeleton):
    e = capsule_skeleton.edges.numpy()
    k = capsule_skeleton.num_spheres
    assert len(e) >= k - 1
    g = coo_matrix((np.ones(len(e)), (e[:, 0], e[:, 1])), shape=(k, k))
    assert connected_components(g, directed=False)[0] == 1


def test_fps_subsampling_and_vertices_faces_input(capsule):
    sk = skeletonize_thinning((capsule.vertices, capsule.faces), k=8, resolution=48)
    assert sk.num_spheres == 8 and sk.meta["subsampled"]
    assert sk.meta["skeleton_voxels"] > 8


def test_voxelize_inside_fraction(capsule):
    inside, origin, h = voxelize(capsule.vertices, capsule.faces, resolution=40)
    volume = inside.sum() * h**3
    assert abs(volume - capsule.volume) / capsule.volume < 0.1


def test_point_cloud_is_rejected():
    with pytest.raises(SkellabError, match="needs a watertight mesh"):
        skeletonize_thinning(np.random.default_rng(0).normal(size=(100, 3)))
    with pytest.raises(SkellabError, match="needs a watertight mesh"):
        skeletonize_thinning(torch.zeros(50, 3))


def test_bad_config_is_rejected():
    with pytest.raises(SkellabError):
        ThinningConfig(resolution=2)
