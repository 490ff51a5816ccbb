"""Dense vs skeleton-guided decoding, marching cubes, export."""

import numpy as np
import pytest
import torch
import trimesh

from skellab.autoencoder import AutoencoderConfig, Latent, SkeletalAutoencoder
from skellab.data.sampling import grid_points
from skellab.data.shape import Normalization
from skellab.errors import SkellabError
from skellab.meshing import cap_at_box, decode_grid_dense, decode_grid_guided, decode_mesh, export_mesh, extract_mesh

CFG = AutoencoderConfig(num_tokens=12, num_surface=64, encoder_width=16, encoder_blocks=1, group_k=8,
                        num_frequencies=2, decoder_width=16, decoder_heads=2, decoder_blocks=1)


def bent_tube():
    """An untrained model decodes the union of its skeletal spheres exactly (zero-initialised head)."""
    torch.manual_seed(0)
    model = SkeletalAutoencoder(config=CFG).eval()
    t = torch.linspace(-0.6, 0.6, CFG.num_tokens)
    centers = torch.stack([t, 0.25 * torch.sin(3 * t), 0.1 * t], -1)[None]
    radii = (0.18 + 0.06 * torch.cos(4 * t))[None]
    return model, Latent.from_parts(centers, radii, torch.randn(1, CFG.num_tokens, 12))


def test_guided_equals_dense(one_thread):
    model, lat = bent_tube()
    dense = decode_grid_dense(model, lat, 48, chunk=50000)
    guided = decode_grid_guided(model, lat, 48)
    assert dense.num_queries == 48**3 and guided.query_fraction < 0.3
    vd, fd = extract_mesh(dense)
    vg, fg = extract_mesh(guided)
    assert vd.shape == vg.shape and np.array_equal(fd, fg)
    assert np.abs(vd - vg).max() < 1e-6
    # every grid point that a surface cell touches was decoded exactly
    sign_d, sign_g = dense.values < 0, guided.values < 0
    assert np.array_equal(sign_d, sign_g)


def thin_tube_and_speck():
    """A tube of radius ~1.3 grid cells at 64³ and a separate small sphere: thin features the coarse lattice
    cannot see (the untrained model decodes the sphere union, which is 1-Lipschitz)."""
    torch.manual_seed(0)
    cfg = AutoencoderConfig(**{**CFG.__dict__, "num_tokens": 41})
    model = SkeletalAutoencoder(config=cfg).eval()
    t = torch.linspace(-0.7, 0.7, 40)
    centers = torch.cat([torch.stack([t, 0.3 * torch.sin(2 * t), 0.05 + 0 * t], -1), torch.tensor([[0.5, -0.6, 0.4]])])
    radii = torch.cat([torch.full((40,), 0.045), torch.tensor([0.05])])
    return model, Latent.from_parts(centers[None], radii[None], torch.randn(1, 41, 12))


@pytest.mark.parametrize("narrow", [None, 1.0])
@pytest.mark.parametrize("coarse", [16, 32])
def test_guided_equals_dense_on_thin_features(one_thread, narrow, coarse):
    model, lat = thin_tube_and_speck()
    dense = decode_grid_dense(model, lat, 64)
    guided = decode_grid_guided(model, lat, 64, narrow=narrow, coarse=coarse)
    assert np.array_equal(dense.values < 0, guided.values < 0)
    vd, fd = extract_mesh(dense)
    vg, fg = extract_mesh(guided)
    assert np.array_equal(fd, fg) and np.abs(vd - vg).max() < 1e-6
    assert len(trimesh.Trimesh(vg, fg).split(only_watertight=False)) == 2  # the speck is found


def test_narrow_decodes_fewer_points_and_repair_decodes_every_surface_corner(one_thread):
    model, lat = thin_tube_and_speck()
    tau = model.config.truncation
    full = decode_grid_guided(model, lat, 64, narrow=None)
    fewer = decode_grid_guided(model, lat, 64, narrow=1.0)
    assert fewer.num_queries < 0.7 * full.num_queries
    # an aggressive setting skips points on the surface: the repair pass decodes them afterwards
    rough = decode_grid_guided(model, lat, 64, narrow=0.1)
    neg = rough.values < 0
    R = neg.shape[0]
    corners = [neg[i:R - 1 + i, j:R - 1 + j, k:R - 1 + k] for i in (0, 1) for j in (0, 1) for k in (0, 1)]
    crossing = np.logical_or.reduce(corners) & ~np.logical_and.reduce(corners)
    assert crossing.any()
    for i in (0, 1):
        for j in (0, 1):
            for k in (0, 1):  # undecoded points hold exactly ±τ; a corner of a surface cell never does here
                assert (np.abs(rough.values[i:R - 1 + i, j:R - 1 + j, k:R - 1 + k][crossing]) < tau).all()


def test_capped_guided_decoding_equals_capped_dense_decoding(one_thread):
    """A shape through the box: capped inside guided decoding, the cells that close it are decoded, so the mesh
    is the dense grid's capped mesh; capping a finished guided grid leaves their inner corners at ±τ."""
    torch.manual_seed(0)
    model = SkeletalAutoencoder(config=CFG).eval()
    t = torch.linspace(0.0, 1.3, CFG.num_tokens)
    centers = torch.stack([t, 0.1 * torch.sin(3 * t), 0 * t], -1)[None]
    lat = Latent.from_parts(centers, torch.full((1, CFG.num_tokens), 0.3), torch.randn(1, CFG.num_tokens, 12))
    tau = model.config.truncation
    values, clipped = cap_at_box(decode_grid_dense(model, lat, 48), tau)
    guided = decode_grid_guided(model, lat, 48, cap=tau)
    assert clipped and guided.clipped
    assert np.array_equal(values < 0, guided.values < 0)
    vd, fd = extract_mesh(values, 1.1)
    vg, fg = extract_mesh(guided)
    assert np.array_equal(fd, fg) and np.abs(vd - vg).max() < 1e-6
    assert trimesh.Trimesh(vg, fg).is_watertight
    late, _ = cap_at_box(decode_grid_guided(model, lat, 48), tau)  # capped afterwards: the closing cells differ
    vl, fl = extract_mesh(late, 1.1)
    assert np.array_equal(fl, fd) and np.abs(vl - vd).max() > 1e-3  # same triangles, vertices moved at the box
    assert not decode_grid_guided(*bent_tube(), 32, cap=tau).clipped


@pytest.mark.parametrize("kw", [{"narrow": 0}, {"narrow": -1.0}, {"narrow": True}, {"narrow": "1"}, {"coarse": 1},
                                {"coarse": 8.5}, {"safety": 0}, {"cap": 0.0}, {"cap": True}])
def test_guided_bad_settings(kw):
    model, lat = bent_tube()
    with pytest.raises(SkellabError, match=next(iter(kw))):
        decode_grid_guided(model, lat, 32, **kw)


def test_extract_mesh_orientation_and_accuracy():
    r = 33
    pts = grid_points(r, 1.1)
    sdf = (np.linalg.norm(pts, axis=1) - 0.6).reshape(r, r, r)
    v, f = extract_mesh(sdf, box=1.1)
    mesh = trimesh.Trimesh(v, f)
    assert mesh.is_watertight and mesh.volume > 0
    assert np.abs(np.linalg.norm(v, axis=1) - 0.6).max() < 0.01
    assert mesh.volume == pytest.approx(4 / 3 * np.pi * 0.6**3, rel=0.03)
    # two blobs → largest component only
    sdf2 = np.minimum(sdf, (np.linalg.norm(pts - [0.8, 0.8, 0.8], axis=1) - 0.15).reshape(r, r, r))
    v2, f2 = extract_mesh(sdf2, largest_component=True)
    assert len(f2) == len(f)
    with pytest.raises(SkellabError, match="no zero crossing"):
        extract_mesh(np.ones((16, 16, 16)))


@pytest.mark.parametrize("res", [8, 513, 2, 64.5])
def test_resolution_errors(res):
    model, lat = bent_tube()
    with pytest.raises(SkellabError, match="resolution"):
        decode_grid_guided(model, lat, res)
    with pytest.raises(SkellabError, match="resolution"):
        decode_grid_dense(model, lat, res)


def test_batch_errors():
    model, lat = bent_tube()
    with pytest.raises(SkellabError, match="batch size 1"):
        decode_grid_dense(model, Latent.cat([lat, lat]), 16)


@pytest.mark.parametrize("suffix", [".ply", ".stl", ".obj"])
def test_export_round_trip(tmp_path, suffix):
    model, lat = bent_tube()
    v, f = decode_mesh(model, lat, 24)
    norm = Normalization(center=(10.0, -5.0, 2.0), scale=40.0)
    path = export_mesh(tmp_path / f"tube{suffix}", v, f, normalization=norm)
    back = trimesh.load(path, force="mesh", process=True)
    assert back.is_watertight
    assert np.allclose(back.bounds, norm.invert(v).min(0)[None] * [[1], [0]] + norm.invert(v).max(0)[None] * [[0], [1]], atol=1e-3)
    assert not list(tmp_path.glob(".*tmp*"))
    with pytest.raises(SkellabError, match="format"):
        export_mesh(tmp_path / "tube.vtk", v, f)


def test_decoding_precision_auto_bf16_and_fp32(monkeypatch):
    """bf16 autocast only where the CPU has native bf16 (``auto``); forced bf16 stays close to fp32."""
    from skellab import runtime
    from skellab.autoencoder import AutoencoderConfig, Latent, SkeletalAutoencoder
    from skellab.errors import SkellabError
    from skellab.meshing import decode_chunk, decode_points

    torch.manual_seed(0)
    model = SkeletalAutoencoder(config=AutoencoderConfig(num_tokens=16, num_surface=64, encoder_width=16,
                                                         encoder_blocks=1, group_k=8, decoder_width=32,
                                                         decoder_heads=2, decoder_blocks=1)).eval()
    with torch.no_grad():
        model.out[1].weight.normal_(0, 0.05)  # a non-trivial residual
    lat = Latent.from_parts(torch.rand(1, 16, 3) - 0.5, torch.full((1, 16), 0.2), torch.randn(1, 16, 12))
    pts = np.random.default_rng(0).uniform(-1, 1, (500, 3))
    exact = decode_points(model, lat, pts, precision="fp32")
    half = decode_points(model, lat, pts, precision="bf16")
    assert np.abs(half - exact).max() < 2e-2 and not np.array_equal(half, exact)
    monkeypatch.setattr(runtime, "cpu_has_fast_bf16", lambda: False)
    assert np.array_equal(decode_points(model, lat, pts), exact)  # auto on a CPU without bf16: fp32, exact
    monkeypatch.setattr(runtime, "cpu_has_fast_bf16", lambda: True)
    assert np.array_equal(decode_points(model, lat, pts), half)  # auto with native bf16: bf16
    with pytest.raises(SkellabError, match="precision"):
        decode_points(model, lat, pts, precision="fp16")
    # the number of queries per pass changes nothing but speed and float rounding (each query is decoded on its own)
    for chunk in (1, 7, 64, 65536):
        assert np.allclose(decode_points(model, lat, pts, chunk, precision="fp32"), exact, rtol=0, atol=1e-6)
    assert decode_chunk("cpu") == 8192 and decode_chunk("cuda") == 65536
    with pytest.raises(SkellabError, match="chunk"):
        decode_points(model, lat, pts, 0)


def test_pieces_and_volume_match_trimesh_on_closed_open_and_non_manifold_meshes():
    """count_components / signed_volume: trimesh's pieces (faces joined through edges exactly two faces share) and
    trimesh's volume, computed without building its face adjacency or mass integrals — on one, two and eleven
    pieces, open fragments, duplicated (non-manifold) faces and two triangles that touch at a vertex only."""
    import trimesh

    from skellab.meshing import count_components, signed_volume

    rng = np.random.default_rng(0)
    ball = trimesh.creation.icosphere(2)
    two = trimesh.util.concatenate([ball, trimesh.creation.box().apply_translation([3, 0, 0])])
    meshes = [ball, two,
              trimesh.Trimesh(ball.vertices, np.r_[ball.faces, ball.faces[:5]], process=False),  # non-manifold edges
              trimesh.Trimesh(ball.vertices, ball.faces[rng.permutation(len(ball.faces))[:60]], process=False),
              trimesh.Trimesh([[0, 0, 0], [1, 0, 0], [0, 1, 0], [-1, 0, 0], [0, -1, 0.0]], [[0, 1, 2], [0, 3, 4]],
                              process=False)]
    for m in meshes:
        expected = len(trimesh.graph.connected_components(m.face_adjacency, nodes=np.arange(len(m.faces)), min_len=1))
        assert count_components(m.vertices, m.faces) == expected == len(m.split(only_watertight=False))
        assert signed_volume(m.vertices, m.faces) == pytest.approx(m.volume, abs=1e-12)
    assert count_components(meshes[0].vertices, meshes[0].faces[:0]) == 0
    inverted = ball.copy()
    inverted.invert()
    assert signed_volume(inverted.vertices, inverted.faces) == pytest.approx(-ball.volume)
