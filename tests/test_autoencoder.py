"""Skeletal latent autoencoder: shapes, errors, the sphere prior, overfitting, checkpoints, training."""

import hashlib
import math

import pytest
import torch

from skellab.autoencoder import (
    AutoencoderConfig,
    Latent,
    SkeletalAutoencoder,
    load_autoencoder,
    save_autoencoder,
    sphere_union_sdf,
)
from skellab.errors import SkellabError
from skellab.train import stage_config, train_autoencoder
from skellab.weights import weights_path

DEFAULT_WEIGHTS = weights_path("autoencoder")

TINY = AutoencoderConfig(num_tokens=16, num_surface=128, encoder_width=32, encoder_blocks=1, group_k=8,
                         num_frequencies=3, decoder_width=32, decoder_heads=2, decoder_blocks=1)


def sphere_cloud(n: int, radius: float = 0.5, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(1, n, 3, generator=g)
    nrm = x / x.norm(dim=-1, keepdim=True)
    return radius * nrm, nrm


def chain(k: int = 16):
    t = torch.linspace(-0.5, 0.5, k)
    centers = torch.stack([t, 0.1 * torch.sin(4 * t), torch.zeros(k)], -1)[None]
    radii = (0.2 + 0.05 * torch.cos(5 * t))[None]
    return centers, radii


def test_shapes_and_prior():
    torch.manual_seed(0)
    model = SkeletalAutoencoder(config=TINY).eval()
    pts, nrm = sphere_cloud(TINY.num_surface)
    c, r = chain(TINY.num_tokens)
    lat = model.encode(pts, nrm, c, r)
    assert lat.tokens.shape == (1, 16, 16) and lat.features.shape == (1, 16, 12)
    assert torch.equal(lat.centers, c) and torch.equal(lat.radii, r)
    # standardised features: zero mean, unit variance per token
    assert lat.features.mean(-1).abs().max() < 1e-5
    q = torch.rand(1, 300, 3) * 2 - 1
    sdf = model.decode(lat, q)
    assert sdf.shape == (1, 300) and sdf.abs().max() <= TINY.truncation + 1e-6
    # the output head starts at zero: an untrained model decodes the union of skeletal spheres
    prior = sphere_union_sdf(q, c, r).clamp(-TINY.truncation, TINY.truncation)
    assert torch.allclose(sdf, prior, atol=1e-6)
    assert torch.allclose(model.decode(lat, q, chunk=64), sdf, atol=1e-6)


def test_surface_tokens_and_class_conditioning():
    cfg = TINY.replace(token_source="surface", sphere_prior=False, num_classes=3, class_conditioning=True)
    model = SkeletalAutoencoder(config=cfg)
    pts, nrm = sphere_cloud(cfg.num_surface)
    lat = model.encode(pts, nrm, class_index=torch.tensor([2]))
    assert lat.radii.abs().max() == 0 and lat.class_index.tolist() == [2]
    assert (lat.centers.norm(dim=-1) - 0.5).abs().max() < 1e-5  # FPS picks surface points
    with pytest.raises(SkellabError, match="class_index"):
        model.encode(pts, nrm)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(token_source="surface"), "sphere_prior"),
        (dict(token_source="medial"), "token_source"),
        (dict(decoder_width=30, decoder_heads=4), "divisible"),
        (dict(truncation=0.0), "truncation"),
        (dict(class_conditioning=True), "num_classes"),
    ],
)
def test_config_errors(kwargs, match):
    with pytest.raises(SkellabError, match=match):
        TINY.replace(**kwargs)


def test_input_errors():
    model = SkeletalAutoencoder(config=TINY)
    pts, nrm = sphere_cloud(TINY.num_surface)
    c, r = chain(TINY.num_tokens)
    with pytest.raises(SkellabError, match="points"):
        model.encode(pts[0], nrm[0], c, r)
    with pytest.raises(SkellabError, match="normals"):
        model.encode(pts, None, c, r)
    with pytest.raises(SkellabError, match="radii"):
        model.encode(pts, nrm, c, r[:, :5])
    with pytest.raises(SkellabError, match="batch"):
        model.encode(pts, nrm, c.expand(2, -1, -1), r.expand(2, -1))
    with pytest.raises(SkellabError, match="centers"):
        model.encode(pts, nrm, None, None)
    lat = model.encode(pts, nrm, c, r)
    with pytest.raises(SkellabError, match="queries"):
        model.decode(lat, torch.zeros(1, 10, 2))
    with pytest.raises(SkellabError, match="channels"):
        model.decode(Latent(torch.zeros(1, 16, 10)), torch.zeros(1, 10, 3))
    with pytest.raises(SkellabError, match="Latent"):
        model.decode(lat.tokens, torch.zeros(1, 10, 3))
    with pytest.raises(SkellabError, match="tokens"):
        Latent(torch.zeros(16, 16))


def test_overfits_a_sphere(one_thread):
    """A wrong skeleton (radii 0.15 instead of the sphere's 0.5) must be corrected by the residual."""
    torch.manual_seed(0)
    cfg = TINY.replace(skeleton_weight=0.0, truncation=0.5)
    model = SkeletalAutoencoder(config=cfg)
    pts, nrm = sphere_cloud(cfg.num_surface)
    c = 0.2 * torch.randn(1, cfg.num_tokens, 3, generator=torch.Generator().manual_seed(1))
    r = torch.full((1, cfg.num_tokens), 0.15)
    g = torch.Generator().manual_seed(2)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for step in range(250):
        q = torch.rand(1, 512, 3, generator=g) * 2 - 1
        sdf = q.norm(dim=-1) - 0.5
        loss = model.loss(model.encode(pts, nrm, c, r), q, sdf)["total"]
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    first, last = sum(losses[:10]) / 10, sum(losses[-10:]) / 10
    assert last < first / 10, (first, last)
    with torch.no_grad():
        q = torch.tensor([[[0.0, 0.0, 0.0], [0.9, 0.0, 0.0]]])
        out = model.decode(model.encode(pts, nrm, c, r), q)[0]
    assert out[0] < -0.3 and out[1] > 0.3


def test_skeleton_constraint_term():
    model = SkeletalAutoencoder(config=TINY.replace(skeleton_weight=1.0))
    pts, nrm = sphere_cloud(TINY.num_surface)
    c, r = chain(TINY.num_tokens)
    lat = model.encode(pts, nrm, c, r)
    q = torch.rand(1, 64, 3)
    losses = model.loss(lat, q, q.norm(dim=-1) - 0.5)
    assert losses["skeleton"] > 0 and math.isclose(float(losses["total"].detach()), float(losses["sdf"] + losses["skeleton"]), rel_tol=1e-5)


def test_checkpoint_round_trip_and_errors(tmp_path):
    torch.manual_seed(0)
    model = SkeletalAutoencoder(config=TINY.replace(num_classes=2), classes=["a", "b"]).eval()
    with torch.no_grad():
        model.out[1].weight.normal_()  # make the decoder output differ from the prior
    path = save_autoencoder(tmp_path / "ae.pt", model, step=7, metrics={"val": 0.1})
    raw = torch.load(path, weights_only=True)
    assert raw["format"] == "skellab.autoencoder/1" and raw["config"]["num_tokens"] == 16
    back = load_autoencoder(path)
    assert back.classes == ["a", "b"] and back.info["step"] == 7
    pts, nrm = sphere_cloud(TINY.num_surface)
    c, r = chain(TINY.num_tokens)
    q = torch.rand(1, 50, 3)
    with torch.no_grad():
        assert torch.allclose(model(pts, nrm, c, r, q), back(pts, nrm, c, r, q))

    with pytest.raises(SkellabError, match="not found"):
        load_autoencoder(tmp_path / "missing.pt")
    (tmp_path / "corrupt.pt").write_bytes(path.read_bytes()[:200])
    with pytest.raises(SkellabError, match="corrupt"):
        load_autoencoder(tmp_path / "corrupt.pt")
    torch.save({"format": "skellab.diffusion/1"}, tmp_path / "other.pt")
    with pytest.raises(SkellabError, match="not a skellab.autoencoder/1"):
        load_autoencoder(tmp_path / "other.pt")
    raw["config"]["decoder_width"] = 64  # weights no longer fit the config
    torch.save(raw, tmp_path / "mismatch.pt")
    with pytest.raises(SkellabError, match="do not fit"):
        load_autoencoder(tmp_path / "mismatch.pt")
    with pytest.raises(SkellabError, match="differs"):
        load_autoencoder(path, expect=TINY)


def test_train_tiny(tiny_dataset, tmp_path):
    model, hist = train_autoencoder(tiny_dataset, preset="tiny", steps=4, val_every=2, num_queries=128, device="cpu",
                                    out=tmp_path / "run", progress=False)
    assert hist["step"] == [1, 2, 3, 4] and len(hist["val_sdf"]) == 2
    assert all(math.isfinite(x) for x in hist["loss"])
    assert (tmp_path / "run" / "skeletons.npz").is_file() and (tmp_path / "run" / "log.csv").is_file()
    back = load_autoencoder(tmp_path / "run" / "model.pt", expect=model.config)
    assert back.classes == model.classes and model.config.num_classes == len(model.classes)


@pytest.mark.skipif(not DEFAULT_WEIGHTS.is_file(), reason="shipped weights not present")
def test_shipped_weights_load():
    import json

    model = load_autoencoder()
    assert model.config.num_tokens == 256 and model.config.token_dim == 16
    index = json.loads(DEFAULT_WEIGHTS.with_suffix(".json").read_text())
    assert index["sha256"] == hashlib.sha256(DEFAULT_WEIGHTS.read_bytes()).hexdigest()
    config = model.config.to_dict()  # fields added after the release take their defaults
    assert {k: config[k] for k in index["config"]} == index["config"] and DEFAULT_WEIGHTS.stat().st_size < 8_000_000
    assert model.config.skeleton_method == "medial"  # recorded in the config: tokens sit on medial spheres


def test_encode_points_skeletonizes():
    from skellab.autoencoder import encode_points

    model = SkeletalAutoencoder(config=TINY).eval()
    g = torch.Generator().manual_seed(0)
    x = torch.randn(400, 3, generator=g)
    nrm = x / x.norm(dim=-1, keepdim=True)
    pts = nrm * torch.tensor([0.9, 0.4, 0.3])  # an ellipsoid: medial axis inside, radii < 0.4
    nrm = pts / torch.tensor([0.9, 0.4, 0.3]) ** 2
    nrm = nrm / nrm.norm(dim=-1, keepdim=True)
    lat = encode_points(model, pts, nrm)
    assert lat.tokens.shape == (1, 16, 16)
    assert (lat.radii > 0).all() and (lat.radii < 0.45).all()
    with pytest.raises(SkellabError, match="at least"):
        encode_points(model, pts[:50], nrm[:50])


def test_a_freshly_trained_model_encodes_with_the_skeleton_it_was_trained_on(tiny_dataset, tmp_path):
    """The skeleton method lives in the model's config, not on an attribute the checkpoint loader sets.

    Before, ``encode_points`` read the method from ``model.checkpoint_info``, which only
    ``load_autoencoder`` attached: a model straight out of training encoded with *medial*
    skeletons although it was trained on learned ones (this test failed on that code).
    """
    from skellab.autoencoder import encode_points
    from skellab.data.medsdf import MedSDF
    from skellab.skeleton import skeletonize
    from skellab.skeleton.learned import (
        LearnedSkeletonConfig,
        PointSkeletonNet,
        save_checkpoint,
    )

    torch.manual_seed(0)
    net = PointSkeletonNet(config=LearnedSkeletonConfig(k=16, num_points=128, width=8, knn=6))
    ckpt = tmp_path / "skeleton.pt"
    save_checkpoint(net, ckpt)
    cfg = stage_config("autoencoder", "tiny").model.replace(num_tokens=16, skeleton_method="learned",
                                                               skeleton_checkpoint=str(ckpt))
    model, _ = train_autoencoder(tiny_dataset, config=cfg, steps=2, device="cpu", progress=False)
    assert not model.info  # nothing was loaded from a file
    store = MedSDF.open(tiny_dataset)
    s = store.samples(store.ids()[0])
    pts = torch.from_numpy(s["surface_points"][:512])
    nrm = torch.from_numpy(s["surface_normals"][:512])
    lat = encode_points(model, pts, nrm)
    learned = skeletonize(pts, nrm, method="learned", k=16, config=str(ckpt), edges=False)
    medial = skeletonize(pts, nrm, method="medial", k=16, edges=False)
    assert torch.allclose(lat.centers[0], learned.centers)
    assert not torch.allclose(lat.centers[0], medial.centers)


def test_local_decoder_attends_to_the_nearest_spheres():
    """decoder="local": same interface, prior at init, neighbours by sphere distance, gradients, chunking."""
    from skellab.autoencoder.model import _neighbours

    torch.manual_seed(0)
    cfg = TINY.replace(decoder="local", decoder_neighbors=4)
    model = SkeletalAutoencoder(config=cfg).eval()
    pts, nrm = sphere_cloud(cfg.num_surface)
    c, r = chain(cfg.num_tokens)
    lat = model.encode(pts, nrm, c, r)
    q = torch.rand(1, 300, 3) * 2 - 1
    sdf = model.decode(lat, q)
    prior = sphere_union_sdf(q, c, r).clamp(-cfg.truncation, cfg.truncation)
    assert sdf.shape == (1, 300) and torch.allclose(sdf, prior, atol=1e-6)  # zero head: the prior
    assert torch.allclose(model.decode(lat, q, chunk=64), sdf, atol=1e-6)
    idx, rel, union = _neighbours(q, c, r, 4)
    brute = (torch.cdist(q, c) - r[:, None]).sort(dim=-1)
    assert torch.equal(idx, brute.indices[..., :4]) and torch.allclose(union, brute.values[..., 0], atol=1e-5)
    assert rel.shape == (1, 300, 4, 6) and torch.allclose(rel[..., 4], brute.values[..., :4], atol=1e-5)
    # the residual depends on the neighbours' features only: changing a far token leaves a query alone
    with torch.no_grad():
        model.out[1].weight.normal_(0, 0.1)
    one = torch.tensor([[[c[0, 0, 0].item(), 0.0, 0.0]]])
    near = set(_neighbours(one, c, r, 4)[0].flatten().tolist())
    far = next(i for i in range(cfg.num_tokens) if i not in near)
    tok = lat.tokens.clone()
    tok[0, far, 4:] += 5.0
    assert torch.allclose(model.decode(lat, one), model.decode(Latent(tok, lat.class_index), one), atol=1e-6)
    tok = lat.tokens.clone()
    tok[0, sorted(near)[0], 4:] += 5.0
    assert not torch.allclose(model.decode(lat, one), model.decode(Latent(tok, lat.class_index), one), atol=1e-4)
    # trainable end to end
    model.train()
    loss = model.loss(model.encode(pts, nrm, c, r), q, q.norm(dim=-1) - 0.5)["total"]
    loss.backward()
    assert all(p.grad is not None for n, p in model.named_parameters() if n.startswith(("cross", "encoder.head")))
    with pytest.raises(SkellabError, match="decoder_neighbors"):
        TINY.replace(decoder="local", decoder_neighbors=17)
    with pytest.raises(SkellabError, match="decoder must be"):
        TINY.replace(decoder="sparse")


def test_kernel_decoder_is_local_translation_equivariant_and_starts_at_the_prior():
    """decoder="kernel": prior at init, only the k nearest spheres matter, shifting shape and queries
    together changes nothing (no absolute position), chunking, gradients, and no attention modules."""
    torch.manual_seed(0)
    cfg = TINY.replace(decoder="kernel", decoder_neighbors=4, kernel_width=16)
    model = SkeletalAutoencoder(config=cfg).eval()
    assert not hasattr(model, "cross") and sum(p.numel() for p in model.kernel.parameters()) > 0
    pts, nrm = sphere_cloud(cfg.num_surface)
    c, r = chain(cfg.num_tokens)
    lat = model.encode(pts, nrm, c, r)
    q = torch.rand(1, 300, 3) * 2 - 1
    prior = sphere_union_sdf(q, c, r).clamp(-cfg.truncation, cfg.truncation)
    assert torch.allclose(model.decode(lat, q), prior, atol=1e-6)  # zero head: the sphere union
    with torch.no_grad():
        model.kernel.head[-1].weight.normal_(0, 0.1)
    sdf = model.decode(lat, q)
    assert not torch.allclose(sdf, prior, atol=1e-3)
    assert torch.allclose(model.decode(lat, q, chunk=64), sdf, atol=1e-6)
    shift = torch.tensor([0.3, -0.2, 0.1])
    moved = Latent(torch.cat([lat.centers + shift, lat.tokens[..., 3:]], dim=-1), lat.class_index)
    assert torch.allclose(model.decode(moved, q + shift), sdf, atol=1e-5)
    # a token outside a query's 4 nearest spheres does not change it; one inside does
    one = torch.tensor([[[c[0, 0, 0].item(), 0.0, 0.0]]])
    near = (torch.cdist(one, c) - r[:, None]).topk(4, largest=False).indices.flatten().tolist()
    far = next(i for i in range(cfg.num_tokens) if i not in near)
    for i, changes in ((far, False), (near[0], True)):
        tok = lat.tokens.clone()
        tok[0, i, 4:] += 5.0
        same = torch.allclose(model.decode(lat, one), model.decode(Latent(tok, lat.class_index), one), atol=1e-6)
        assert same != changes
    model.train()
    loss = model.loss(model.encode(pts, nrm, c, r), q, q.norm(dim=-1) - 0.5)["total"]
    loss.backward()
    assert all(p.grad is not None for n, p in model.named_parameters() if n.startswith(("kernel", "encoder.head")))
    with pytest.raises(SkellabError, match="decoder_neighbors"):
        TINY.replace(decoder="kernel", decoder_neighbors=17)
    with pytest.raises(SkellabError, match="kernel_width"):
        TINY.replace(decoder="kernel", kernel_width=0)


def test_shipped_kernel_autoencoder_adds_to_its_prior_on_a_held_out_thin_shell():
    """weights/autoencoder_kernel.pt: the kernel decoder, its index's sha256, and on a perforated shell (a family
    it never trained on) the network's surface is closer to the truth than the union of its own spheres."""
    from skellab.data.procedural import make_shape
    from skellab.evaluation import fidelity_of_shape
    from skellab.weights import weights_info, weights_path

    info = weights_info("autoencoder_kernel")
    assert info["sha256"] == hashlib.sha256(weights_path("autoencoder_kernel").read_bytes()).hexdigest()
    model = load_autoencoder(weights_path("autoencoder_kernel"))
    assert model.config.decoder == "kernel" and "perforated_shell" not in model.classes
    torch.set_num_threads(1)
    res = fidelity_of_shape(model, make_shape("perforated_shell", 1_000_003), resolution=64, n=4000, seed=0)
    assert res["centres_inside"] >= 0.95
    assert res["network"]["f1@0.05"] > res["prior"]["f1@0.05"]
    assert res["network"]["cd_pointflow"] < res["prior"]["cd_pointflow"]


def test_perturb_spheres_moves_the_spheres_by_scale_times_spread_and_keeps_the_features():
    from skellab.autoencoder import perturb_spheres
    from skellab.autoencoder.model import MIN_PERTURBED_RADIUS

    g = torch.Generator().manual_seed(0)
    lat = Latent.from_parts(torch.rand(2, 16, 3, generator=g), torch.rand(2, 16, generator=g) * 0.05 + 0.01,
                            torch.randn(2, 16, 5, generator=g), torch.tensor([3, 1]))
    noise = torch.randn(2, 16, 4, generator=g)
    spread = torch.tensor([0.3, 0.2, 0.4, 0.1])
    out = perturb_spheres(lat, noise, torch.tensor([0.0, 0.5]), spread)
    assert torch.equal(out.tokens[0], lat.tokens[0]) and torch.equal(out.class_index, lat.class_index)
    assert torch.equal(out.features, lat.features)
    assert torch.allclose(out.centers[1], lat.centers[1] + 0.5 * spread[:3] * noise[1, :, :3])
    want_r = (lat.radii[1] + 0.5 * 0.1 * noise[1, :, 3]).clamp_min(MIN_PERTURBED_RADIUS)
    assert torch.allclose(out.radii[1], want_r) and (out.radii >= MIN_PERTURBED_RADIUS).all()
    big = perturb_spheres(lat, torch.full((2, 16, 4), -10.0), torch.ones(2), spread)
    assert (big.radii == MIN_PERTURBED_RADIUS).all()
    with pytest.raises(SkellabError, match="noise \\(B, K, 4\\)"):
        perturb_spheres(lat, noise[..., :3], torch.ones(2), spread)
