"""Learned (Point2Skeleton-style) skeletonization: invariants, training, checkpoints, shipped weights."""

import json

import igl
import numpy as np
import pytest
import torch
import trimesh

from skellab.errors import SkellabError
from skellab.skeleton.learned import (
    LearnedSkeletonConfig,
    PointSkeletonNet,
    load_checkpoint,
    save_checkpoint,
    skeleton_losses,
    skeletonize_learned,
    sphere_points,
)
from skellab.skeleton.types import Skeleton
from skellab.train import train_learned
from skellab.weights import weights_path

SHIPPED_CHECKPOINT = weights_path("skeleton_learned")
TINY = LearnedSkeletonConfig(k=16, num_points=128, width=8, knn=6)


def _capsule_points(n: int, seed: int, *, radius: float = 0.3, height: float = 1.2) -> np.ndarray:
    mesh = trimesh.creation.capsule(height=height, radius=radius, count=[24, 24])
    mesh.apply_scale(1.0 / np.abs(mesh.vertices).max())  # normalised frame
    pts, _ = trimesh.sample.sample_surface(mesh, n, seed=seed)
    return pts.astype(np.float32), mesh


def _model(config=TINY, seed=0) -> PointSkeletonNet:
    torch.manual_seed(seed)
    return PointSkeletonNet(config=config).eval()


def test_forward_shapes_and_convex_combinations():
    model = _model()
    pts = torch.rand(3, TINY.num_points, 3) * 2 - 1
    centers, radii, w = model(pts)
    assert centers.shape == (3, TINY.k, 3) and radii.shape == (3, TINY.k) and w.shape == (3, TINY.k, TINY.num_points)
    assert (w >= 0).all() and torch.allclose(w.sum(-1), torch.ones(3, TINY.k), atol=1e-5)
    lo, hi = pts.amin(1, keepdim=True), pts.amax(1, keepdim=True)
    assert ((centers >= lo - 1e-5) & (centers <= hi + 1e-5)).all()  # inside the inputs' bbox
    assert (radii >= 0).all()


def test_sphere_points_lie_on_spheres():
    c, r = torch.randn(2, 5, 3), torch.rand(2, 5)
    sp = sphere_points(c, r).reshape(2, 5, 8, 3)
    assert torch.allclose((sp - c.unsqueeze(2)).norm(dim=-1), r.unsqueeze(-1).expand(-1, -1, 8), atol=1e-5)


@pytest.mark.parametrize("mode", ["clearance", "point2skeleton"])
def test_losses_are_finite_and_differentiable(mode):
    cfg = LearnedSkeletonConfig(k=16, num_points=128, width=8, knn=6, radius_mode=mode)
    model = _model(cfg)
    pts = torch.tensor(_capsule_points(128, 0)[0])[None]
    centers, radii, _ = model(pts)
    losses = skeleton_losses(pts, centers, radii, cfg)
    assert set(losses) == {"total", "sample", "p2s", "radius", "inside"}
    assert float(losses["inside"]) == 0.0  # no normals, no inside loss
    assert all(torch.isfinite(v) for v in losses.values())
    losses["total"].backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


def test_inside_loss_penalises_centres_outside():
    # a unit sphere's surface with outward normals: a centre inside costs 0, outside costs its depth
    pts = torch.nn.functional.normalize(torch.randn(1, 500, 3, generator=torch.Generator().manual_seed(0)), dim=-1)
    cfg = LearnedSkeletonConfig(weight_sample=0, weight_p2s=0, weight_radius=0, weight_inside=1)
    radii = torch.full((1, 2), 0.1)
    inside = skeleton_losses(pts, torch.tensor([[[0.0, 0.0, 0.5], [0.2, 0.0, 0.0]]]), radii, cfg, normals=pts)
    outside = skeleton_losses(pts, torch.tensor([[[0.0, 0.0, 1.5], [0.0, 1.4, 0.0]]]), radii, cfg, normals=pts)
    assert float(inside["total"]) == 0.0
    assert float(outside["total"]) == pytest.approx(0.45, abs=0.02)


def test_training_decreases_loss():
    pts, _ = _capsule_points(512, 1)
    cfg = LearnedSkeletonConfig(k=16, num_points=128, width=8, knn=6)
    model, history = train_learned(
        torch.tensor(pts)[None], config=cfg, steps=30, lr=3e-3, generator=torch.Generator().manual_seed(0),
        device="cpu", progress=False
    )
    total = history["total"]
    assert len(total) == 30 and not model.training
    assert np.mean(total[-5:]) < np.mean(total[:5])


def test_checkpoint_round_trip(tmp_path):
    model = _model()
    path = tmp_path / "m.pt"
    entry = save_checkpoint(model, path, metrics={"x": 1.0})
    loaded = load_checkpoint(path)
    assert loaded.config == model.config
    pts = torch.rand(1, TINY.num_points, 3)
    with torch.no_grad():
        for a, b in zip(model(pts), loaded(pts)):
            assert torch.equal(a, b)
    index = json.loads(path.with_suffix(".json").read_text())
    assert index == entry and index["metrics"] == {"x": 1.0} and len(index["sha256"]) == 64
    raw = torch.load(path, weights_only=True)  # plain tensors and dicts only
    assert raw["format"] == "skellab.learned_skeleton/1" and raw["config"]["k"] == TINY.k


def test_bad_checkpoints_raise(tmp_path):
    with pytest.raises(SkellabError, match="not found"):
        load_checkpoint(tmp_path / "missing.pt")
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(np.random.default_rng(0).bytes(1000))
    with pytest.raises(SkellabError, match="corrupt or unreadable"):
        load_checkpoint(garbage)
    other = tmp_path / "other.pt"
    torch.save({"format": "something/else", "state_dict": {}}, other)
    with pytest.raises(SkellabError, match="format"):
        load_checkpoint(other)
    mismatch = tmp_path / "mismatch.pt"
    payload = torch.load(save_checkpoint(_model(), mismatch) and mismatch, weights_only=True)
    payload["config"]["width"] = 12  # weights no longer fit the config
    torch.save(payload, mismatch)
    with pytest.raises(SkellabError, match="do not (match|fit)"):
        load_checkpoint(mismatch)


def test_skeletonize_learned_single_batch_and_resampling():
    model = _model()
    pts = _capsule_points(300, 2)[0]  # 300 points → FPS down to 128
    sk = skeletonize_learned(pts, checkpoint=model, device="cpu")
    assert isinstance(sk, Skeleton) and sk.centers.shape == (TINY.k, 3) and sk.method == "learned"
    few = torch.tensor(pts[:50])[None].repeat(2, 1, 1)  # 50 points → repeats up to 128
    sks = skeletonize_learned(few, checkpoint=model, device="cpu", generator=torch.Generator().manual_seed(0))
    assert isinstance(sks, list) and len(sks) == 2 and sks[0].meta["input_points"] == 50
    with pytest.raises(SkellabError, match="between 1 and 16"):
        skeletonize_learned(pts, k=17, checkpoint=model)
    with pytest.raises(SkellabError):
        skeletonize_learned(np.zeros((10, 2)), checkpoint=model)


def test_config_validation():
    with pytest.raises(SkellabError):
        LearnedSkeletonConfig(radius_mode="nope")
    with pytest.raises(SkellabError):
        LearnedSkeletonConfig(num_points=8, knn=16)


def test_shipped_checkpoint_skeleton_inside_heldout_capsule():
    assert SHIPPED_CHECKPOINT.is_file()
    model = load_checkpoint()
    pts, mesh = _capsule_points(model.config.num_points, 123, radius=0.22, height=1.0)
    sk = skeletonize_learned(pts, checkpoint=model, device="cpu")
    c = sk.centers.numpy().astype(np.float64)
    inside = igl.fast_winding_number(mesh.vertices, mesh.faces.astype(np.int64), c) > 0.5
    assert inside.mean() > 0.9
    # nearer the medial axis than the input surface is (the surface lies at the radius)
    scale = np.abs(trimesh.creation.capsule(height=1.0, radius=0.22).vertices).max()
    half, radius = 0.5 / scale, 0.22 / scale
    z = np.clip(c[:, 2], -half, half)
    to_axis = np.linalg.norm(c - np.stack([0 * z, 0 * z, z], axis=1), axis=1)
    assert to_axis.mean() < radius


def test_fewer_spheres_than_the_model_predicts_are_an_even_subset():
    """Any K up to the trained one: the K' spheres are farthest-point samples of the predicted K."""
    model = _model()
    pts = _capsule_points(300, 2)[0]
    full = skeletonize_learned(pts, checkpoint=model, device="cpu")
    few = skeletonize_learned(pts, k=7, checkpoint=model, device="cpu")
    assert few.centers.shape == (7, 3) and few.radii.shape == (7,) and few.meta["predicted"] == TINY.k
    d = torch.cdist(few.centers, full.centers)  # every kept sphere is one of the predicted ones, radius and all
    j = d.argmin(dim=1)
    assert torch.allclose(d.min(dim=1).values, torch.zeros(7), atol=1e-6) and len(set(j.tolist())) == 7
    assert torch.allclose(few.radii, full.radii[j])
    again = skeletonize_learned(pts, k=7, checkpoint=model, device="cpu")
    assert torch.equal(again.centers, few.centers)  # deterministic
    # an even spread: the minimum spacing of the subset beats that of its first 7 predicted spheres
    spacing = lambda c: torch.pdist(c).min()  # noqa: E731
    assert spacing(few.centers) >= spacing(full.centers[:7])
