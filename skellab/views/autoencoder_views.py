"""Views of skeletal latents: tokens on their skeleton, SDF callables for slices, an interpolation widget.

Like the other views, builders return widgets or plots and never ``display()`` them.
Everything here works in the normalised frame; SDFs are **negative inside**.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import torch

from ..autoencoder.model import Latent, SkeletalAutoencoder, sphere_union_sdf
from ..errors import SkellabError

__all__ = ["edit_sphere", "interpolation_widget", "sdf_function", "skeleton_explorer", "token_view"]

SDF_SOURCES = ("decoder", "prior")


def _single(latent: Any, name: str = "latent") -> Latent:
    if not isinstance(latent, Latent) or latent.batch_size != 1:
        raise SkellabError(f"{name} must be a Latent with batch size 1 (e.g. latents[i])")
    return latent


def token_view(latent: Latent, *, channel: int = 0, plot: Any = None, opacity: float = 0.6,
               min_size: float = 0.02, color_map: str = "Coolwarm", height: int = 400, name: str = "tokens") -> Any:
    """Add the K tokens of a batch-1 latent as spheres (diameter 2r) coloured by feature ``channel``.

    latent  : :class:`Latent` (1, K, 4 + F); centres and radii in the normalised frame
    channel : feature channel in [0, F) mapped to colour (features are standardised, so the
              colour range is symmetric around 0)
    min_size: smallest drawn diameter (surface-point tokens have r = 0)
    returns : the k3d plot (new unless ``plot`` is given); the token object is its last one.
    """
    _single(latent)
    F = latent.features.shape[-1]
    if not 0 <= int(channel) < F:
        raise SkellabError(f"feature channel must be in [0, {F}), got {channel}")
    from .k3d_views import _k3d, _new_plot

    k3d = _k3d()
    cmap = getattr(k3d.colormaps.matplotlib_color_maps, color_map, None)
    if cmap is None:
        raise SkellabError(f"unknown k3d colour map {color_map!r}")
    plot = _new_plot(plot, height)
    c = latent.centers[0].detach().float().cpu().numpy()
    size = np.maximum(2.0 * latent.radii[0].detach().float().cpu().numpy(), min_size)
    value = latent.features[0, :, int(channel)].detach().float().cpu().numpy()
    span = float(np.abs(value).max()) or 1.0
    plot += k3d.points(c, point_sizes=size.astype(np.float32), attribute=value.astype(np.float32),
                       color_map=cmap, color_range=[-span, span], shader="mesh", opacity=opacity,
                       name=f"{name} (feature {int(channel)})")
    return plot


def sdf_function(model: SkeletalAutoencoder, latent: Latent, *, source: str = "decoder",
                 chunk: int = 65536) -> Callable[[np.ndarray], np.ndarray]:
    """A callable ``points (n, 3) → sdf (n,)`` for :func:`~skellab.views.sdf_slices_figure`.

    source : ``"decoder"`` (the network's truncated SDF) or ``"prior"`` (the union of the
             latent's skeletal spheres, ``min_k ‖q − c_k‖ − r_k``, truncated to ±τ like the decoder's)
    Normalised frame, negative inside. Not differentiable (numpy out).
    """
    _single(latent)
    if source not in SDF_SOURCES:
        raise SkellabError(f"source must be one of {', '.join(SDF_SOURCES)}, got {source!r}")
    from ..meshing import decode_points

    tau = float(model.config.truncation)

    def evaluate(points: np.ndarray) -> np.ndarray:
        p = np.asarray(points, dtype=np.float32).reshape(-1, 3)
        if source == "decoder":
            return decode_points(model, latent, p, chunk)
        with torch.no_grad():
            s = sphere_union_sdf(torch.from_numpy(p)[None], latent.centers.float().cpu(), latent.radii.float().cpu())
        return s[0].clamp(-tau, tau).numpy()

    return evaluate


def _ipywidgets() -> Any:
    from .widgets import _ipywidgets as load

    return load()


def interpolation_widget(
    model: SkeletalAutoencoder,
    latents: Mapping[str, Latent],
    *,
    steps: int = 11,
    preview_resolution: int = 24,
    full_resolution: int = 96,
    initial: tuple[str, str] | None = None,
    cache_size: int = 64,
    height: int = 420,
) -> Any:
    """Pick two shapes, drag t: the decoded mesh of the token-matched blend, updated in place.

    model       : the autoencoder that made ``latents`` (eval mode)
    latents     : ``{name: Latent (1, K, 4 + F)}``, at least one entry
    steps       : slider positions; the interpolated latents of each pair are computed once
                  (:func:`skellab.interpolation.interpolate_latents`, tokens matched)
    preview_resolution : grid per axis decoded while the slider moves
    full_resolution    : grid per axis decoded by the "refine" button, on a new pair and at build
    returns     : an ``ipywidgets.VBox`` with attributes ``slider`` (FloatSlider over t,
                  ``continuous_update``), ``dropdown_a``, ``dropdown_b``, ``refine`` (Button),
                  ``status`` (Label), ``plot`` (k3d), ``mesh`` (its k3d mesh, updated in place),
                  ``state`` (dict: pair, t, resolution, watertight, components, message),
                  ``blends`` (the per-pair interpolated latents computed so far) and the
                  methods ``set_t(t, full=False)``, ``set_pair(a, b)``, ``refine_now()``.
    Same shape twice or an empty selection shows a message in ``status`` and never raises;
    a blend with no surface at the chosen grid keeps the previous mesh and says so.
    """
    if not latents:
        raise SkellabError("interpolation_widget needs at least one latent")
    names = list(latents)
    for n in names:
        _single(latents[n], f"latents[{n!r}]")
    if int(steps) < 2:
        raise SkellabError(f"steps must be >= 2, got {steps}")
    for r in (preview_resolution, full_resolution):
        if not isinstance(r, (int, np.integer)) or not 8 < int(r) <= 512:
            raise SkellabError(f"grid resolutions must be integers in (8, 512], got {r!r}")
    if initial is not None and any(n not in latents for n in initial):
        raise SkellabError(f"initial pair {initial} is not among the latents: {', '.join(names)}")
    import trimesh

    from ..interpolation import interpolate_latents
    from ..meshing import decode_grid_guided, extract_mesh
    from .k3d_views import PALETTE, _k3d

    widgets, k3d = _ipywidgets(), _k3d()
    steps = int(steps)
    a0, b0 = initial if initial is not None else (names[0], names[1] if len(names) > 1 else names[0])
    blends: dict[tuple[str, str], Latent] = {}  # (a, b) → (steps, K, D) interpolated latents
    meshes: dict[tuple[str, str, int, int], tuple] = {}  # (a, b, step, R) → (V, F, watertight, components)
    state: dict[str, Any] = {"pair": None, "t": 0.0, "resolution": None, "watertight": None,
                             "components": None, "message": ""}

    def pair_latents(a: str, b: str) -> Latent:
        if (a, b) not in blends:
            blends[(a, b)] = interpolate_latents(latents[a], latents[b], steps)
        return blends[(a, b)]

    def decode(a: str, b: str, i: int, R: int) -> tuple:
        i = 0 if a == b else i  # one shape: nothing to blend
        key = (a, b, i, R)
        if key not in meshes:
            lat = pair_latents(a, b)[i] if a != b else latents[a]
            v, f = extract_mesh(decode_grid_guided(model, lat, R))  # SkellabError: no surface
            tm = trimesh.Trimesh(v, f, process=False)
            comps = len(trimesh.graph.connected_components(tm.face_adjacency, nodes=np.arange(len(f)), min_len=1))
            if len(meshes) >= cache_size:
                meshes.pop(next(iter(meshes)))
            meshes[key] = (v.astype(np.float32), f.astype(np.uint32), bool(tm.is_watertight), comps)
        return meshes[key]

    v0, f0, *_ = decode(a0, b0, 0, int(full_resolution))
    plot = k3d.plot(height=height, grid_visible=False, menu_visibility=False)
    mesh = k3d.mesh(v0, f0, color=PALETTE["mesh"], flat_shading=False, name="interpolated")
    plot += mesh
    options = [(n, n) for n in names]
    dropdown_a = widgets.Dropdown(options=options, value=a0, description="organ A")
    dropdown_b = widgets.Dropdown(options=options, value=b0, description="organ B")
    slider = widgets.FloatSlider(value=0.0, min=0.0, max=1.0, step=1.0 / (steps - 1), description="t",
                                 continuous_update=True, readout_format=".2f")
    refine = widgets.Button(description=f"refine ({int(full_resolution)}³)", tooltip="decode at full resolution")
    status = widgets.Label(value="")

    def show(full: bool) -> None:
        a, b = dropdown_a.value, dropdown_b.value
        t = float(slider.value)
        state.update(pair=(a, b), t=t)
        if a is None or b is None:
            state["message"] = status.value = "pick two organs (one of the dropdowns is empty)"
            return
        R = int(full_resolution if full else preview_resolution)
        i = round(t * (steps - 1))
        same = a == b
        try:
            v, f, watertight, comps = decode(a, b, i, R)
        except SkellabError as exc:
            state["message"] = status.value = f"t = {t:.2f}: nothing to mesh at {R}³ ({exc}); previous mesh kept"
            return
        with mesh.hold_sync():  # one message: vertices and indices stay consistent in the browser
            mesh.vertices, mesh.indices = v, f
        state.update(resolution=R, watertight=watertight, components=comps)
        flags = f"{'watertight' if watertight else 'NOT watertight'}, {comps} component{'s' if comps != 1 else ''}"
        kind = "full" if full else "preview"
        prefix = f"same organ twice ({a}): pick two different shapes · " if same else ""
        state["message"] = status.value = f"{prefix}t = {t:.2f} · {kind} {R}³ · {len(f)} faces · {flags}"

    def set_t(t: float, full: bool = False) -> None:
        """Move the slider to ``t`` (snapped to the nearest step) and decode (preview unless ``full``)."""
        t = float(np.clip(t, 0.0, 1.0))
        snapped = round(t * (steps - 1)) / (steps - 1)
        if abs(float(slider.value) - snapped) > 1e-9:
            slider.value = snapped  # the observer decodes the preview
        if full:
            show(True)
        elif abs(state["t"] - snapped) > 1e-9 or state["resolution"] is None:
            show(False)

    def set_pair(a: str | None, b: str | None) -> None:
        """Select two shapes by name (``None``: empty selection) and decode at full resolution."""
        unknown = [n for n in (a, b) if n is not None and n not in latents]
        if unknown:
            raise SkellabError(f"unknown shape {unknown[0]!r}; choose from: {', '.join(names)}")
        box._quiet = True
        try:
            dropdown_a.value, dropdown_b.value = a, b
        finally:
            box._quiet = False
        show(True)

    def on_slider(change: dict) -> None:
        show(False)

    def on_pair(change: dict) -> None:
        if not getattr(box, "_quiet", False):
            show(True)

    slider.observe(on_slider, names="value")
    dropdown_a.observe(on_pair, names="value")
    dropdown_b.observe(on_pair, names="value")
    refine.on_click(lambda _button: show(True))

    box = widgets.VBox([widgets.HBox([dropdown_a, dropdown_b]), widgets.HBox([slider, refine]), status, plot])
    box._quiet = False
    box.slider, box.dropdown_a, box.dropdown_b, box.refine = slider, dropdown_a, dropdown_b, refine
    box.status, box.plot, box.mesh, box.state = status, plot, mesh, state
    box.set_t, box.set_pair, box.refine_now = set_t, set_pair, lambda: show(True)
    box.blends = blends
    show(True)
    return box


def edit_sphere(latent: Latent, index: int, *, scale: float = 1.0,
                offset: tuple[float, float, float] = (0.0, 0.0, 0.0)) -> Latent:
    """A copy of a batch-1 latent with sphere ``index`` scaled (radius × ``scale``) and moved by ``offset``.

    Only the skeletal columns change (centre 0–2, radius 3); the token's features stay, so
    decoding shows how the shape follows its skeleton.
    """
    _single(latent)
    K = latent.tokens.shape[1]
    if not 0 <= int(index) < K:
        raise SkellabError(f"sphere index must be in [0, {K}), got {index}")
    if not scale > 0:
        raise SkellabError(f"radius scale must be positive, got {scale}")
    tokens = latent.tokens.clone()
    tokens[0, int(index), :3] += torch.as_tensor(offset, dtype=tokens.dtype, device=tokens.device)
    tokens[0, int(index), 3] *= float(scale)
    return Latent(tokens, latent.class_index)


def skeleton_explorer(model: SkeletalAutoencoder, latent: Latent, *, preview_resolution: int = 24,
                      full_resolution: int = 96, height: int = 420) -> Any:
    """Toggle mesh / spheres / stick figure, pick a sphere, scale its radius and re-decode.

    Dragging decodes at ``preview_resolution``; the "refine" button at ``full_resolution``.
    Returns an ``ipywidgets.VBox`` with ``.sphere`` (IntSlider, which sphere), ``.scale``
    (FloatSlider, radius factor), ``.show_mesh`` / ``.show_spheres`` / ``.show_graph``
    (Checkboxes), ``.refine``, ``.status``, ``.plot``, ``.mesh`` and ``.edited`` (the current
    edited latent). Objects are updated in place, never rebuilt.
    """
    from ..meshing import decode_mesh
    from ..skeleton.graph import skeleton_edges
    from .k3d_views import PALETTE, _k3d
    from .widgets import _ipywidgets

    _single(latent)
    widgets, k3d = _ipywidgets(), _k3d()
    centers = latent.centers[0].detach().float().cpu()
    edges = skeleton_edges(centers).numpy().astype(np.uint32)
    plot = k3d.plot(height=height, grid_visible=False, menu_visibility=False)
    v0, f0 = decode_mesh(model, latent, full_resolution)
    mesh = k3d.mesh(v0.astype(np.float32), f0.astype(np.uint32), color=PALETTE["mesh"], opacity=0.5,
                    flat_shading=False, name="decoded")
    c = centers.numpy().astype(np.float32)
    spheres = k3d.points(c, point_sizes=2 * latent.radii[0].detach().cpu().numpy().astype(np.float32),
                         color=PALETTE["spheres"], shader="mesh", opacity=0.4, name="spheres")
    picked = k3d.points(c[:1], point_size=0.05, color=0xD62728, shader="mesh", name="picked")
    graph = k3d.lines(c, edges, indices_type="segment", color=PALETTE["graph"], width=0.008, shader="mesh",
                      name="graph")
    for obj in (mesh, spheres, graph, picked):
        plot += obj
    sphere = widgets.IntSlider(value=0, min=0, max=latent.tokens.shape[1] - 1, description="sphere")
    scale = widgets.FloatSlider(value=1.0, min=0.25, max=3.0, step=0.05, description="radius ×")
    show_mesh, show_spheres, show_graph = (widgets.Checkbox(value=True, description=d)
                                           for d in ("mesh", "spheres", "stick figure"))
    refine = widgets.Button(description=f"refine ({int(full_resolution)}³)")
    status = widgets.Label(value="")
    box = widgets.VBox([widgets.HBox([show_mesh, show_spheres, show_graph]), widgets.HBox([sphere, scale, refine]),
                        status, plot])

    def update(full: bool = False) -> None:
        i, s = int(sphere.value), float(scale.value)
        box.edited = edit_sphere(latent, i, scale=s)
        picked.positions = c[i : i + 1]
        sizes = 2 * box.edited.radii[0].detach().cpu().numpy().astype(np.float32)
        spheres.point_sizes = sizes
        R = int(full_resolution if full else preview_resolution)
        try:
            v, f = decode_mesh(model, box.edited, R)
        except SkellabError as exc:
            status.value = f"sphere {i}, radius × {s:.2f}: nothing to mesh at {R}³ ({exc})"
            return
        with mesh.hold_sync():
            mesh.vertices, mesh.indices = v.astype(np.float32), f.astype(np.uint32)
        status.value = f"sphere {i} (r = {sizes[i] / 2:.3f}) × {s:.2f} · {'full' if full else 'preview'} {R}³"

    sphere.observe(lambda _: update(), names="value")
    scale.observe(lambda _: update(), names="value")
    refine.on_click(lambda _: update(True))
    show_mesh.observe(lambda ch: setattr(mesh, "visible", ch["new"]), names="value")
    show_spheres.observe(lambda ch: setattr(spheres, "visible", ch["new"]), names="value")
    show_graph.observe(lambda ch: setattr(graph, "visible", ch["new"]), names="value")
    box.sphere, box.scale, box.refine, box.status, box.plot, box.mesh = sphere, scale, refine, status, plot, mesh
    box.show_mesh, box.show_spheres, box.show_graph, box.spheres, box.graph = (show_mesh, show_spheres, show_graph,
                                                                               spheres, graph)
    box.edited = latent
    status.value = f"{latent.tokens.shape[1]} spheres · pick one and scale its radius"
    return box
