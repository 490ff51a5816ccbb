"""Test-time refinement of a latent's token features (skellab.autoencoder.refine_features / refine_on_shape)."""

import numpy as np
import pytest
import torch

from skellab.autoencoder import AutoencoderConfig, Latent, SkeletalAutoencoder, refine_features
from skellab.errors import SkellabError


def _model_and_target():
    torch.manual_seed(0)
    model = SkeletalAutoencoder(config=AutoencoderConfig(num_tokens=16, num_surface=64, encoder_width=16,
                                                         encoder_blocks=1, group_k=8, decoder_width=32,
                                                         decoder_heads=2, decoder_blocks=1)).eval()
    with torch.no_grad():
        model.out[1].weight.normal_(0, 0.3)  # a residual that reads the features
    g = torch.Generator().manual_seed(1)
    lat = Latent.from_parts(torch.rand(1, 16, 3, generator=g) * 0.8 - 0.4, torch.full((1, 16), 0.15),
                            torch.randn(1, 16, 12, generator=g))
    rng = np.random.default_rng(0)
    q = rng.uniform(-0.8, 0.8, (3000, 3)).astype(np.float32)
    sdf = (np.linalg.norm(q, axis=1) - 0.5).astype(np.float32)  # a ball of radius 0.5
    return model, lat, q, sdf


def _loss(model, lat, q, sdf):
    tau = model.config.truncation
    with torch.no_grad():
        out = model.decode_raw(lat, torch.from_numpy(q)[None])[0]
    return float(((out - torch.from_numpy(sdf / tau).clamp(-1, 1)) ** 2).mean())


def test_refinement_lowers_the_sdf_loss_moves_only_features_and_leaves_the_network_alone():
    model, lat, q, sdf = _model_and_target()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    refined, info = refine_features(model, lat, q, sdf, steps=60, lr=0.05, batch=512, seed=0)
    assert _loss(model, refined, q, sdf) < 0.8 * _loss(model, lat, q, sdf)
    assert info["steps"] == 60 and info["loss_last"] < info["loss_first"]
    assert torch.equal(refined.tokens[..., :4], lat.tokens[..., :4])  # spheres fixed
    assert not torch.equal(refined.tokens[..., 4:], lat.tokens[..., 4:]) and not refined.tokens.requires_grad
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert all(p.grad is None for p in model.parameters()) and not model.training
    again, _ = refine_features(model, lat, q, sdf, steps=60, lr=0.05, batch=512, seed=0)
    assert torch.equal(again.tokens, refined.tokens)  # deterministic in the seed
    same, info0 = refine_features(model, lat, q, sdf, steps=0)
    assert torch.equal(same.tokens, lat.tokens) and np.isnan(info0["loss_first"])


@pytest.mark.parametrize("kwargs,needle", [
    (dict(steps=-1), "steps"), (dict(steps=1.5), "steps"), (dict(lr=0.0), "lr"), (dict(lr=float("nan")), "lr"),
    (dict(batch=0), "batch"), (dict(schedule="linear"), "schedule"), (dict(sphere_lr=-0.1), "sphere_lr"), (dict(queries=np.zeros((0, 3))), "queries"),
    (dict(queries=np.zeros((5, 2))), "queries"),
    (dict(sdf=np.zeros(7)), "sdf"), (dict(sdf=np.full(3000, np.nan)), "nan"), (dict(latent="x"), "latent"),
])
def test_refinement_bad_input(kwargs, needle):
    model, lat, q, sdf = _model_and_target()
    args = {"latent": lat, "queries": q, "sdf": sdf, **kwargs}
    latent, queries, values = args.pop("latent"), args.pop("queries"), args.pop("sdf")
    with pytest.raises(SkellabError, match=f"(?i){needle}"):
        refine_features(model, latent, queries, values, **args)
    two = Latent(torch.cat([lat.tokens, lat.tokens]))
    with pytest.raises(SkellabError, match="one shape at a time"):
        refine_features(model, two, q, sdf)


def test_refinement_from_an_oriented_point_cloud_fits_the_surface_it_samples():
    import trimesh

    from skellab.autoencoder import REFINE_SAMPLES, refine_on_points
    from skellab.data.sampling import point_cloud_queries, point_cloud_sdf

    model, lat, q, sdf = _model_and_target()
    ball = trimesh.creation.icosphere(subdivisions=4, radius=0.5)
    points, faces = trimesh.sample.sample_surface(ball, 4000, seed=0)
    normals = ball.face_normals[faces]
    refined, info = refine_on_points(model, lat, points, normals, steps=60, lr=0.05, seed=0)
    # judged on the exact SDF of the ball at points the refinement never saw
    assert _loss(model, refined, q, sdf) < 0.8 * _loss(model, lat, q, sdf)
    assert torch.equal(refined.tokens[..., :4], lat.tokens[..., :4]) and info["loss_last"] < info["loss_first"]
    # the same as fitting refine_features to the cloud's SDF at the cloud's queries
    queries = point_cloud_queries(points, seed=0, config=REFINE_SAMPLES)
    same, _ = refine_features(model, lat, queries, point_cloud_sdf(points, normals, queries), steps=60, lr=0.05, seed=0)
    assert torch.equal(same.tokens, refined.tokens)
    with pytest.raises(SkellabError, match="normals must have"):
        refine_on_points(model, lat, points, normals[:10])
    with pytest.raises(SkellabError, match="NaN"):
        refine_on_points(model, lat, np.full_like(points, np.nan), normals)
    with pytest.raises(SkellabError, match="steps"):
        refine_on_points(model, lat, points, normals, steps=-2)


def test_refinement_can_fit_the_spheres_too():
    """sphere_lr > 0: centres and radii move (radii stay positive) and the fit gets closer than with the spheres fixed;
    sphere_lr = 0 keeps them bit for bit."""
    model, lat, q, sdf = _model_and_target()
    fixed, _ = refine_features(model, lat, q, sdf, steps=60, lr=0.05, batch=512, seed=0)
    moved, info = refine_features(model, lat, q, sdf, steps=60, lr=0.05, sphere_lr=0.05, batch=512, seed=0)
    assert info["sphere_lr"] == 0.05 and not torch.equal(moved.tokens[..., :4], lat.tokens[..., :4])
    assert (moved.radii > 0).all() and not moved.tokens.requires_grad
    assert _loss(model, moved, q, sdf) < _loss(model, fixed, q, sdf)
    assert torch.equal(fixed.tokens[..., :4], lat.tokens[..., :4])
