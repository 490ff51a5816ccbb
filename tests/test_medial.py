"""Shrinking-ball medial skeletons on analytic shapes with known medial axes."""

import numpy as np
import pytest
import torch
import trimesh
from scipy.spatial import cKDTree
from skimage.measure import marching_cubes

from skellab.errors import SkellabError
from skellab.skeleton import skeletonize
from skellab.skeleton.medial import MedialConfig, medial_spheres, shrinking_balls

N_POINTS, K = 2560, 256


def _segment_distance(x, a, b):
    ab = b - a
    t = np.clip(((x - a) @ ab) / (ab @ ab), 0, 1)
    return np.linalg.norm(x - (a + t[:, None] * ab), axis=1)


def _mesh_from_sdf(sdf, res=96, lim=1.05):
    g = np.linspace(-lim, lim, res)
    grid = np.stack(np.meshgrid(g, g, g, indexing="ij"), -1).reshape(-1, 3)
    verts, faces, _, _ = marching_cubes(sdf(grid).reshape(res, res, res), 0.0, spacing=(g[1] - g[0],) * 3)
    mesh = trimesh.Trimesh(verts - lim, faces)
    if mesh.volume < 0:
        mesh.invert()
    return mesh


def _tube_case(segments, radius):
    """(mesh, sdf, dense axis samples, radius) for a union of round-capped segments."""
    segs = [(np.array(a, float), np.array(b, float)) for a, b in segments]

    def sdf(x):
        return np.min([_segment_distance(x, a, b) for a, b in segs], axis=0) - radius

    axis = np.concatenate([a + np.linspace(0, 1, 200)[:, None] * (b - a) for a, b in segs])
    return _mesh_from_sdf(sdf), sdf, axis, radius


def _torus_case(major=0.7, minor=0.2):
    mesh = trimesh.creation.torus(major_radius=major, minor_radius=minor, major_sections=96, minor_sections=48)

    def sdf(x):
        return np.hypot(np.hypot(x[:, 0], x[:, 1]) - major, x[:, 2]) - minor

    t = np.linspace(0, 2 * np.pi, 600, endpoint=False)
    axis = np.stack([major * np.cos(t), major * np.sin(t), 0 * t], 1)
    return mesh, sdf, axis, minor


CASES = {
    "capsule": lambda: _tube_case([((0, 0, -0.8), (0, 0, 0.8))], 0.15),
    "thin_capsule": lambda: _tube_case([((-0.9, 0, 0), (0.9, 0, 0))], 0.06),
    "y_tube": lambda: _tube_case([((0, 0, 0), (0, -0.8, 0)), ((0, 0, 0), (0.6, 0.5, 0)), ((0, 0, 0), (-0.6, 0.5, 0.2))], 0.1),
    "torus": _torus_case,
}


@pytest.fixture(scope="module", params=list(CASES))
def case(request):
    mesh, sdf, axis, radius = CASES[request.param]()
    pts, face = trimesh.sample.sample_surface(mesh, N_POINTS, seed=0)
    points = torch.tensor(pts, dtype=torch.float32)
    normals = torch.tensor(mesh.face_normals[face], dtype=torch.float32)
    return request.param, mesh, sdf, axis, radius, points, normals


def test_medial_recovers_axis_radius_and_is_inside(case):
    name, mesh, sdf, axis, radius, points, normals = case
    sk = skeletonize(points, normals, method="medial", k=K)
    c, r = sk.centers.detach().double().numpy(), sk.radii.detach().double().numpy()
    assert c.shape == (K, 3) and r.shape == (K,)
    to_axis = cKDTree(axis).query(c)[0].mean()
    from_axis = cKDTree(c).query(axis)[0].mean()
    assert to_axis <= 0.02 and from_axis <= 0.02, (name, to_axis, from_axis)
    assert (sdf(c) < 0).mean() >= 0.99
    medial_error = np.abs(np.abs(sdf(c)) - r) / r  # |d(c, surface) − r| / r
    assert np.median(medial_error) <= 0.25
    assert abs(np.median(r) - radius) / radius < 0.1  # the tube's radius


def test_medial_with_estimated_normals(case):
    name, mesh, sdf, axis, radius, points, _ = case
    sk = skeletonize(points, None, method="medial", k=K)
    c = sk.centers.detach().double().numpy()
    assert cKDTree(axis).query(c)[0].mean() <= 0.03, name
    assert (sdf(c) < 0).mean() >= 0.98


def test_sphere_balls_are_the_sphere():
    # Every inscribed ball of a sphere is the sphere itself: centre 0, radius R.
    d = torch.randn(1, 800, 3, generator=torch.Generator().manual_seed(0))
    n = d / d.norm(dim=-1, keepdim=True)
    balls = shrinking_balls(0.7 * n, n, config=MedialConfig(min_object_deg=0))
    assert bool(balls.converged.all())
    assert torch.allclose(balls.radii, torch.full_like(balls.radii, 0.7), atol=2e-3)
    assert float(balls.centers.norm(dim=-1).max()) < 2e-3


def test_similarity_equivariance_and_gradients():
    mesh, _, _, _ = CASES["capsule"]()
    pts, face = trimesh.sample.sample_surface(mesh, 1500, seed=1)
    p = torch.tensor(pts, dtype=torch.float64)[None]
    n = torch.tensor(mesh.face_normals[face], dtype=torch.float64)[None]
    c1, r1, _ = medial_spheres(p, n, k=64)
    shift = torch.tensor([0.1, -0.2, 0.05], dtype=torch.float64)
    c2, r2, _ = medial_spheres(0.5 * p + shift, n, k=64)
    assert torch.allclose(c2, 0.5 * c1 + shift, atol=1e-6) and torch.allclose(r2, 0.5 * r1, atol=1e-6)
    p.requires_grad_(True)
    n.requires_grad_(True)
    c, r, _ = medial_spheres(p, n, k=64)
    (c.sum() + r.sum()).backward()
    assert torch.isfinite(p.grad).all() and float(p.grad.abs().sum()) > 0
    assert torch.isfinite(n.grad).all() and float(n.grad.abs().sum()) > 0


def test_random_subset_is_deterministic_given_generator():
    mesh, _, _, _ = CASES["torus"]()
    pts, face = trimesh.sample.sample_surface(mesh, 1200, seed=2)
    p = torch.tensor(pts, dtype=torch.float32)[None]
    n = torch.tensor(mesh.face_normals[face], dtype=torch.float32)[None]
    cfg = MedialConfig(num_balls=600)
    a = medial_spheres(p, n, k=64, config=cfg, generator=torch.Generator().manual_seed(3))[0]
    b = medial_spheres(p, n, k=64, config=cfg, generator=torch.Generator().manual_seed(3))[0]
    assert torch.equal(a, b)


def test_config_and_normal_errors():
    with pytest.raises(SkellabError):
        MedialConfig(max_radius=0)
    with pytest.raises(SkellabError):
        MedialConfig(separation_deg=200)
    d = torch.randn(500, 3, generator=torch.Generator().manual_seed(0))
    n = d / d.norm(dim=-1, keepdim=True)
    with pytest.raises(SkellabError, match="outward"):
        skeletonize(0.5 * n, -n, k=32)  # inward normals: no ball ever closes
    with pytest.raises(SkellabError, match="normals"):
        skeletonize(0.5 * n, n[:10], k=32)


def test_dispatcher_validation_errors():
    good = torch.randn(300, 3, generator=torch.Generator().manual_seed(0))
    with pytest.raises(SkellabError, match="fewer"):
        skeletonize(good[:100], k=128)
    with pytest.raises(SkellabError, match="positive"):
        skeletonize(good, k=0)
    bad = good.clone()
    bad[5, 1] = float("nan")
    with pytest.raises(SkellabError, match="NaN"):
        skeletonize(bad, k=32)
    flat = good.clone()
    flat[:, 2] = 0.0
    with pytest.raises(SkellabError, match="flat"):
        skeletonize(flat, k=32)
    with pytest.raises(SkellabError, match="unknown"):
        skeletonize(good, k=32, method="magic")
    with pytest.raises(SkellabError, match="shape"):
        skeletonize(torch.rand(10, 2), k=3)


def test_dispatcher_batches_and_numpy_input():
    mesh = CASES["capsule"]()[0]
    pts, face = trimesh.sample.sample_surface(mesh, 1000, seed=4)
    points = torch.tensor(pts, dtype=torch.float32)
    normals = torch.tensor(mesh.face_normals[face], dtype=torch.float32)
    out = skeletonize(torch.stack([points, points]), torch.stack([normals, normals]), k=64)
    assert isinstance(out, list) and len(out) == 2
    assert torch.allclose(out[0].centers, out[1].centers) and out[0].method == "medial"
    single = skeletonize(points.numpy(), normals.numpy(), k=64)
    assert torch.allclose(single.centers, out[0].centers, atol=1e-6)
    assert single.edges.shape[1] == 2 and single.meta["kept"] > 0


def test_radius_bound_matches_reference_rho():
    # The coordinate-major bound is the same test as _rho over the FPS samples.
    import math

    from skellab.skeleton.medial import _radius_bound, _rho
    from skellab.skeleton.ops import farthest_point_sampling, gather

    mesh = CASES["torus"]()[0]
    pts, face = trimesh.sample.sample_surface(mesh, 900, seed=5)
    x = torch.tensor(pts, dtype=torch.float32)[None].repeat(2, 1, 1)
    n = torch.tensor(mesh.face_normals[face], dtype=torch.float32)[None].repeat(2, 1, 1)
    sin_half = math.sin(math.radians(30.0))
    bound, q = _radius_bound(x, n, x, 48, sin_half)
    sel = farthest_point_sampling(x, 48)
    ref_bound, arg = _rho(x, n, gather(x, sel).unsqueeze(1), sin_half).min(-1)
    assert torch.allclose(bound, ref_bound, rtol=1e-5) and bool(torch.isfinite(bound).all())
    assert (q == torch.gather(sel, 1, arg)).float().mean() > 0.99  # ties may break either way


def test_default_ball_subset_still_recovers_torus_axis():
    # Default: 1024 strided balls; all N balls (num_balls=None) must stay as accurate.
    mesh, _, axis, _ = _torus_case()
    pts, face = trimesh.sample.sample_surface(mesh, N_POINTS, seed=0)
    p = torch.tensor(pts, dtype=torch.float32)
    nrm = torch.tensor(mesh.face_normals[face], dtype=torch.float32)
    for cfg in (MedialConfig(), MedialConfig(num_balls=None)):
        sk = skeletonize(p, nrm, method="medial", k=K, config=cfg)
        c = sk.centers.detach().double().numpy()
        assert cKDTree(axis).query(c)[0].mean() <= 0.02 and cKDTree(c).query(axis)[0].mean() <= 0.02
