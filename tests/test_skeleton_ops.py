"""Point-cloud primitives: FPS, kNN, gather, normal estimation."""

import numpy as np
import pytest
import torch
import trimesh

from skellab.errors import SkellabError
from skellab.skeleton.ops import NeighborIndex, estimate_normals, farthest_point_sampling, gather, knn


def _reference_fps(x: np.ndarray, k: int, start: int) -> np.ndarray:
    """Plain O(k·N) FPS, the obvious way."""
    chosen = [start]
    d = np.linalg.norm(x - x[start], axis=1)
    for _ in range(k - 1):
        nxt = int(np.argmax(d))
        chosen.append(nxt)
        d = np.minimum(d, np.linalg.norm(x - x[nxt], axis=1))
    return np.array(chosen)


def test_fps_matches_reference_and_is_distinct():
    x = torch.rand(3, 400, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    idx = farthest_point_sampling(x, 50, start=7)
    assert idx.shape == (3, 50) and idx.dtype == torch.long
    for b in range(3):
        assert np.array_equal(idx[b].numpy(), _reference_fps(x[b].numpy(), 50, 7))
        assert len(set(idx[b].tolist())) == 50


def test_fps_deterministic_given_generator_and_respects_mask():
    x = torch.rand(2, 300, 3, generator=torch.Generator().manual_seed(1))
    a = farthest_point_sampling(x, 20, generator=torch.Generator().manual_seed(5))
    b = farthest_point_sampling(x, 20, generator=torch.Generator().manual_seed(5))
    assert torch.equal(a, b)
    mask = torch.rand(2, 300, generator=torch.Generator().manual_seed(2)) > 0.5
    idx = farthest_point_sampling(x, 40, mask=mask)
    assert bool(mask.gather(1, idx).all())
    with pytest.raises(SkellabError):
        farthest_point_sampling(x, 301)
    with pytest.raises(SkellabError):
        farthest_point_sampling(x, 200, mask=mask & (torch.rand(2, 300) > 2))


def test_fps_picks_isolated_points_first():
    cluster = 0.05 * torch.rand(200, 3, generator=torch.Generator().manual_seed(0))
    far = torch.tensor([[1.0, 0, 0], [0, 1, 0], [0, 0, 1], [-1, 0, 0], [0, -1, 0]])
    x = torch.cat([cluster, far])[None]
    idx = farthest_point_sampling(x, 6, start=0)
    assert set(idx[0, 1:].tolist()) == set(range(200, 205))


@pytest.mark.parametrize("backend", ["kdtree", "dense"])
def test_knn_matches_brute_force(backend):
    gen = torch.Generator().manual_seed(0)
    q, r = torch.rand(2, 70, 3, generator=gen), torch.rand(2, 120, 3, generator=gen)
    dist, idx = knn(q, r, 5, backend=backend, chunk=16)
    full = torch.cdist(q, r)
    ref_d, ref_i = full.topk(5, dim=-1, largest=False)
    assert torch.allclose(dist, ref_d, atol=1e-5)
    assert torch.equal(idx, ref_i)
    d_self, i_self = knn(r, r, 3, exclude_self=True, backend=backend)
    assert not bool((i_self == torch.arange(120)[None, :, None]).any())


def test_knn_distances_are_differentiable():
    q = torch.rand(1, 10, 3, requires_grad=True)
    r = torch.rand(1, 30, 3, requires_grad=True)
    dist, _ = knn(q, r, 4)
    dist.sum().backward()
    assert q.grad is not None and r.grad is not None and torch.isfinite(q.grad).all()


def test_neighbor_index_flat_queries_match_batched():
    gen = torch.Generator().manual_seed(3)
    ref = torch.rand(3, 100, 3, generator=gen)
    q = torch.rand(3, 20, 3, generator=gen)
    for backend in ("kdtree", "dense"):
        index = NeighborIndex(ref, backend=backend)
        full = index.query_index(q, 4)
        batch = torch.arange(3).repeat_interleave(20)
        flat = index.query_index_flat(q.reshape(-1, 3), batch, 4)
        assert torch.equal(flat.view(3, 20, 4), full)


def test_gather_shapes():
    x = torch.arange(24.0).view(2, 4, 3)
    idx = torch.tensor([[0, 3], [1, 1]])
    assert torch.equal(gather(x, idx)[1, 0], x[1, 1])
    assert gather(x, idx.unsqueeze(-1).expand(2, 2, 5)).shape == (2, 2, 5, 3)


@pytest.mark.parametrize("shape", ["sphere", "torus"])
def test_estimate_normals_are_outward(shape):
    mesh = trimesh.creation.icosphere(4, radius=0.8) if shape == "sphere" else trimesh.creation.torus(0.6, 0.25)
    pts, face = trimesh.sample.sample_surface(mesh, 2000, seed=0)
    est = estimate_normals(torch.tensor(pts, dtype=torch.float32)).numpy()
    assert np.allclose(np.linalg.norm(est, axis=1), 1, atol=1e-4)
    agree = (est * mesh.face_normals[face]).sum(1)
    assert (agree > 0).mean() > 0.99  # consistently outward, not merely unoriented
    assert np.median(agree) > 0.98


def test_torch_fps_path_matches_numpy_path():
    # The batched torch FPS (used on GPUs) and the numpy one (CPU) agree, mask included.
    from skellab.skeleton.ops import _fps_torch

    x = torch.rand(2, 500, 3, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    mask = torch.rand(2, 500, generator=torch.Generator().manual_seed(5)) > 0.3
    first = mask.to(torch.int8).argmax(1)
    assert torch.equal(_fps_torch(x, 60, first, mask), farthest_point_sampling(x, 60, mask=mask))


def test_medial_dense_backend_matches_kdtree():
    from skellab.skeleton.medial import MedialConfig, shrinking_balls

    d = torch.randn(1, 600, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    n = d / d.norm(dim=-1, keepdim=True)
    p = n * torch.tensor([0.9, 0.5, 0.3], dtype=torch.float64)  # ellipsoid-ish cloud, radial normals
    a = shrinking_balls(p, n, config=MedialConfig(knn_backend="kdtree"))
    b = shrinking_balls(p, n, config=MedialConfig(knn_backend="dense"))
    assert torch.equal(a.touch, b.touch) and torch.allclose(a.radii, b.radii)
