"""Token matching and latent / mesh interpolation."""

import torch

from skellab.autoencoder import AutoencoderConfig, Latent, SkeletalAutoencoder
from skellab.interpolation import interpolate_latents, interpolate_meshes, match_tokens


def random_latent(k=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return Latent.from_parts(torch.rand(1, k, 3, generator=g) - 0.5, 0.1 + 0.1 * torch.rand(1, k, generator=g),
                             torch.randn(1, k, 12, generator=g), torch.tensor([1]))


def test_match_recovers_a_permutation():
    a = random_latent()
    shuffle = torch.randperm(32, generator=torch.Generator().manual_seed(3))
    b = Latent(a.tokens[:, shuffle], a.class_index)
    matched, perm = match_tokens(a, b)
    assert torch.equal(matched.tokens, a.tokens)
    assert torch.equal(shuffle[perm], torch.arange(32))


def test_interpolate_latents_endpoints():
    a, b = random_latent(seed=0), random_latent(seed=1)
    b = Latent(b.tokens, torch.tensor([4]))
    lats = interpolate_latents(a, b, 5)
    matched, _ = match_tokens(a, b)
    assert lats.tokens.shape == (5, 32, 16)
    assert torch.allclose(lats.tokens[0], a.tokens[0]) and torch.allclose(lats.tokens[-1], matched.tokens[0])
    assert lats.class_index.tolist() == [1, 1, 4, 4, 4]
    mid = lats.tokens[2]
    assert torch.allclose(mid, 0.5 * (a.tokens[0] + matched.tokens[0]))


def test_interpolate_meshes_topology():
    torch.manual_seed(0)
    cfg = AutoencoderConfig(num_tokens=8, num_surface=32, encoder_width=16, encoder_blocks=1, group_k=8,
                            num_frequencies=2, decoder_width=16, decoder_heads=2, decoder_blocks=1)
    model = SkeletalAutoencoder(config=cfg).eval()
    t = torch.linspace(-0.5, 0.5, 8)
    line = torch.stack([t, 0 * t, 0 * t], -1)[None]
    a = Latent.from_parts(line, torch.full((1, 8), 0.2), torch.zeros(1, 8, 12))
    arc = torch.stack([0.8 * t, 0.4 * (1 - 4 * t**2), 0 * t], -1)[None]
    b = Latent.from_parts(arc.flip(1), torch.full((1, 8), 0.15), torch.zeros(1, 8, 12))
    meshes = interpolate_meshes(model, a, b, steps=4, resolution=40)
    assert [m.t for m in meshes] == [0.0, 1 / 3, 2 / 3, 1.0] or len(meshes) == 4
    assert all(m.watertight and m.single_component for m in meshes)
    assert all(m.num_queries < 40**3 for m in meshes)


def test_interpolated_islands_are_joined_by_default():
    torch.manual_seed(0)
    cfg = AutoencoderConfig(num_tokens=8, num_surface=32, encoder_width=16, encoder_blocks=1, group_k=8,
                            num_frequencies=2, decoder_width=16, decoder_heads=2, decoder_blocks=1)
    model = SkeletalAutoencoder(config=cfg).eval()  # untrained: its output is the sphere-union prior
    t = torch.linspace(-0.5, 0.5, 8)
    line = torch.stack([t, 0 * t, 0 * t], -1)[None]
    a = Latent.from_parts(line, torch.full((1, 8), 0.1), torch.zeros(1, 8, 12))
    apart = line.clone()
    apart[0, 6:, 1] += 0.6  # two spheres lifted off the line: the blends hold an island
    b = Latent.from_parts(apart, torch.full((1, 8), 0.1), torch.zeros(1, 8, 12))
    plain = interpolate_meshes(model, a, b, steps=3, resolution=40, connect=None)
    joined = interpolate_meshes(model, a, b, steps=3, resolution=40)
    assert plain[0].single_component and plain[-1].components == 2
    assert all(m.watertight and m.single_component for m in joined)
