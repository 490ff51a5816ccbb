"""Latent views: token spheres, SDF callables and the interpolation widget (tiny untrained model)."""

import numpy as np
import pytest
import torch

from skellab.autoencoder import AutoencoderConfig, Latent, SkeletalAutoencoder
from skellab.errors import SkellabError

pytest.importorskip("k3d")
pytest.importorskip("ipywidgets")

from skellab.views.autoencoder_views import (
    edit_sphere,
    interpolation_widget,
    skeleton_explorer,
    sdf_function,
    token_view,
)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    cfg = AutoencoderConfig(num_tokens=8, num_surface=32, encoder_width=16, encoder_blocks=1, group_k=8,
                            num_frequencies=2, decoder_width=16, decoder_heads=2, decoder_blocks=1)
    return SkeletalAutoencoder(config=cfg).eval()  # zero output head: decodes the sphere union


def _latents():
    t = torch.linspace(-0.5, 0.5, 8)
    line = torch.stack([t, 0 * t, 0 * t], -1)[None]
    arc = torch.stack([0.8 * t, 0.4 * (1 - 4 * t**2), 0 * t], -1)[None]
    feats = torch.randn(1, 8, 12, generator=torch.Generator().manual_seed(0))
    return {"line": Latent.from_parts(line, torch.full((1, 8), 0.2), feats),
            "arc": Latent.from_parts(arc.flip(1), torch.full((1, 8), 0.15), feats)}


def _widget(model, **kw):
    return interpolation_widget(model, _latents(), steps=5, preview_resolution=16, full_resolution=24, **kw)


def test_set_t_updates_the_mesh_in_place(model):
    w = _widget(model)
    mesh, plot = w.mesh, w.plot
    before = np.array(w.mesh.vertices)
    w.set_t(0.5)
    assert w.mesh is mesh and w.plot is plot and len(plot.objects) == 1  # same objects, not rebuilt
    after = np.array(w.mesh.vertices)
    assert after.shape != before.shape or not np.allclose(after, before)
    assert w.slider.value == pytest.approx(0.5) and w.state["resolution"] == 16
    assert "t = 0.50" in w.status.value and "preview" in w.status.value
    assert w.state["watertight"] and w.state["components"] == 1
    assert ("line", "arc") in w.blends and w.blends[("line", "arc")].batch_size == 5


def test_slider_and_refine_drive_the_kernel_side(model):
    w = _widget(model)
    w.slider.value = 0.75  # what a browser drag / ArrowRight does
    assert w.state["t"] == pytest.approx(0.75) and w.state["resolution"] == 16
    preview = np.array(w.mesh.indices)
    w.refine.click()
    assert w.state["resolution"] == 24 and "full" in w.status.value
    assert len(np.array(w.mesh.indices)) > len(preview)
    w.set_t(0.33)  # snapped to the nearest of the 5 steps
    assert w.slider.value == pytest.approx(0.25)


def test_same_shape_and_empty_selection_give_a_message(model):
    w = _widget(model)
    w.set_pair("arc", "arc")
    assert "same organ" in w.status.value
    w.set_t(1.0)  # moving t with one shape is harmless
    assert "same organ" in w.status.value
    vertices = np.array(w.mesh.vertices)
    w.set_pair(None, "arc")
    assert "pick two" in w.status.value
    assert np.array_equal(np.array(w.mesh.vertices), vertices)  # previous mesh kept
    w.dropdown_b.value = None  # through the widget, as a user would
    w.slider.value = 0.5
    assert "pick two" in w.status.value
    w.set_pair("line", "arc")
    assert "t = 0.50" in w.status.value and "full" in w.status.value


def test_bad_input_is_rejected_loudly(model):
    with pytest.raises(SkellabError):
        interpolation_widget(model, {})
    with pytest.raises(SkellabError):
        _widget(model, initial=("line", "nope"))
    w = _widget(model)
    with pytest.raises(SkellabError):
        w.set_pair("line", "nope")


def test_token_view_and_sdf_function(model):
    lat = _latents()["line"]
    plot = token_view(lat, channel=3)
    pts = plot.objects[-1]
    assert np.allclose(np.array(pts.attribute), lat.features[0, :, 3].numpy())
    assert np.allclose(np.array(pts.point_sizes), 0.4)
    with pytest.raises(SkellabError):
        token_view(lat, channel=12)
    c0 = lat.centers[0, 0].numpy()
    q = np.array([c0, c0 + [0.0, 0.0, 0.1], [0.0, 0.9, 0.0]])
    prior = sdf_function(model, lat, source="prior")(q)
    assert np.allclose(prior, [-0.2, -0.1, 0.25], atol=1e-5)  # in a ball, deeper in it, truncated at τ
    decoded = sdf_function(model, lat)(q)  # untrained model = sphere-union prior
    assert np.allclose(decoded, prior, atol=1e-5)
    with pytest.raises(SkellabError):
        sdf_function(model, lat, source="mesh")


def test_skeleton_explorer_edits_a_sphere_and_redecodes(model):
    latent = _latents()["line"]
    box = skeleton_explorer(model, latent, preview_resolution=16, full_resolution=24)
    before = np.array(box.mesh.vertices)
    box.sphere.value = 3
    box.scale.value = 2.0  # what dragging the radius slider does
    assert torch.isclose(box.edited.radii[0, 3], 2 * latent.radii[0, 3])
    assert torch.equal(box.edited.radii[0, :3], latent.radii[0, :3])  # only the picked sphere changed
    preview = np.array(box.mesh.vertices)
    assert preview.shape != before.shape or not np.allclose(preview, before)  # the mesh object was updated in place
    box.refine.click()  # full resolution, like the initial mesh
    after = np.array(box.mesh.vertices)
    # the line lies along x: doubling one sphere's radius (0.2 → 0.4) makes the tube bulge in y
    assert np.abs(after[:, 1]).max() > np.abs(before[:, 1]).max() + 0.1
    box.show_spheres.value = False
    assert box.spheres.visible is False
    with pytest.raises(SkellabError):
        edit_sphere(latent, 99)
    with pytest.raises(SkellabError):
        edit_sphere(latent, 0, scale=0.0)


def test_completion_widget_keeps_the_edited_spheres():
    """Select a branch, move it, press complete: the completions keep the moved spheres, the rest is new."""
    import torch

    from skellab.generation import generate_from_models, load_generation_models
    from skellab.views.completion import completion_widget

    diffusion, autoencoder = load_generation_models()
    latent = generate_from_models(diffusion, autoencoder, "kidney", 1, steps=3, decode=False)
    w = completion_widget(diffusion, autoencoder, latent[0], "kidney", num=2, steps=3, resample=1, resolution=24)
    w.center.value, w.radius.value, w.dx.value = 5, 0.4, 0.1
    kept = w.mask.clone()
    assert 0 < int(kept.sum()) < 256 and "kept" in w.status.value
    out = w.run()
    assert out.tokens.shape == (2, 256, 16)
    moved = latent.tokens[0, kept, :3] + torch.tensor([0.1, 0.0, 0.0])
    assert torch.allclose(out.tokens[:, kept, :3], moved.expand(2, -1, -1), atol=1e-6)
    assert not torch.allclose(out.tokens[0, ~kept], out.tokens[1, ~kept])
    assert len(w.meshes) >= 1 and "completions shown" in w.status.value
    with pytest.raises(SkellabError):
        completion_widget(diffusion, autoencoder, Latent.cat([latent, latent]), "kidney")  # batch of 1 only
    with pytest.raises(SkellabError, match="unknown class"):
        completion_widget(diffusion, autoencoder, latent[0], "brain")
