"""Views of skeletal latents: tokens on their skeleton, SDF callables for slices, an interpolation widget.

Like the other views, builders return widgets or plots and never ``display()`` them.
Everything here works in the normalised frame; SDFs are **negative inside**.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import torch
import trimesh

from ..autoencoder import Latent, SkeletalAutoencoder, sphere_union_sdf
from ..errors import SkellabError
from ..interpolation import interpolate_latents
from ..meshing import (
    check_resolution,
    count_components,
    decode_grid_guided,
    decode_mesh,
    decode_points,
    extract_mesh,
)
from ..skeleton.graph import skeleton_edges
from .k3d_views import PALETTE, _k3d, _new_plot
from .widgets import _ipywidgets

__all__ = ["InterpolationWidget", "edit_sphere", "interpolation_widget", "sdf_function", "skeleton_explorer", "token_view"]

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
                 chunk: int | None = None) -> Callable[[np.ndarray], np.ndarray]:
    """A callable ``points (n, 3) → sdf (n,)`` for :func:`~skellab.views.sdf_slices_figure`.

    source : ``"decoder"`` (the network's truncated SDF) or ``"prior"`` (the union of the
             latent's skeletal spheres, ``min_k ‖q − c_k‖ − r_k``, truncated to ±τ like the decoder's)
    Normalised frame, negative inside. Not differentiable (numpy out).
    """
    _single(latent)
    if source not in SDF_SOURCES:
        raise SkellabError(f"source must be one of {', '.join(SDF_SOURCES)}, got {source!r}")

    tau = float(model.config.truncation)

    def evaluate(points: np.ndarray) -> np.ndarray:
        p = np.asarray(points, dtype=np.float32).reshape(-1, 3)
        if source == "decoder":
            return decode_points(model, latent, p, chunk)
        with torch.no_grad():
            s = sphere_union_sdf(torch.from_numpy(p)[None], latent.centers.float().cpu(), latent.radii.float().cpu())
        return s[0].clamp(-tau, tau).numpy()

    return evaluate


class InterpolationWidget:
    """Pick two shapes, drag t: the decoded mesh of the token-matched blend, updated in place.

    Build with :func:`interpolation_widget`; display it in a notebook like any widget. Parts:
    ``slider`` (FloatSlider over t, ``continuous_update``), ``dropdown_a``, ``dropdown_b``,
    ``refine`` (Button), ``status`` (Label), ``plot`` (k3d), ``mesh`` (its k3d mesh, updated in
    place) and ``box`` (the VBox holding them). State: ``state`` (pair, t, resolution, watertight,
    components, message), ``blends`` (per-pair interpolated latents computed so far).
    Same shape twice or an empty selection shows a message in ``status`` and never raises;
    a blend with no surface at the chosen grid keeps the previous mesh and says so.
    """

    def __init__(self, model: SkeletalAutoencoder, latents: Mapping[str, Latent], *, steps: int = 11,
                 preview_resolution: int = 24, full_resolution: int = 96, initial: tuple[str, str] | None = None,
                 cache_size: int = 64, height: int = 420) -> None:
        if not latents:
            raise SkellabError("interpolation_widget needs at least one latent")
        self.names = list(latents)
        for n in self.names:
            _single(latents[n], f"latents[{n!r}]")
        if int(steps) < 2:
            raise SkellabError(f"steps must be >= 2, got {steps}")
        for r in (preview_resolution, full_resolution):
            check_resolution(r)
        if initial is not None and any(n not in latents for n in initial):
            raise SkellabError(f"initial pair {initial} is not among the latents: {', '.join(self.names)}")
        widgets, k3d = _ipywidgets(), _k3d()
        self.model, self.latents, self.steps = model, latents, int(steps)
        self.preview_resolution, self.full_resolution = int(preview_resolution), int(full_resolution)
        self.cache_size = int(cache_size)
        self.blends: dict[tuple[str, str], Latent] = {}  # (a, b) → (steps, K, D) interpolated latents
        self._meshes: dict[tuple[str, str, int, int], tuple] = {}  # (a, b, step, R) → (V, F, watertight, components)
        self.state: dict[str, Any] = {"pair": None, "t": 0.0, "resolution": None, "watertight": None,
                                      "components": None, "message": ""}
        self._quiet = False  # True while set_pair changes both dropdowns (one decode, not two)
        a0, b0 = initial if initial is not None else (self.names[0], self.names[1 if len(self.names) > 1 else 0])
        v0, f0, *_ = self._decode(a0, b0, 0, self.full_resolution)
        self.plot = k3d.plot(height=height, grid_visible=False, menu_visibility=False)
        self.mesh = k3d.mesh(v0, f0, color=PALETTE["mesh"], flat_shading=False, name="interpolated")
        self.plot += self.mesh
        options = [(n, n) for n in self.names]
        self.dropdown_a = widgets.Dropdown(options=options, value=a0, description="organ A")
        self.dropdown_b = widgets.Dropdown(options=options, value=b0, description="organ B")
        self.slider = widgets.FloatSlider(value=0.0, min=0.0, max=1.0, step=1.0 / (self.steps - 1), description="t",
                                          continuous_update=True, readout_format=".2f")
        self.refine = widgets.Button(description=f"refine ({self.full_resolution}³)",
                                     tooltip="decode at full resolution")
        self.status = widgets.Label(value="")
        self.slider.observe(lambda _change: self._show(False), names="value")
        self.dropdown_a.observe(self._on_pair, names="value")
        self.dropdown_b.observe(self._on_pair, names="value")
        self.refine.on_click(lambda _button: self._show(True))
        self.box = widgets.VBox([widgets.HBox([self.dropdown_a, self.dropdown_b]),
                                 widgets.HBox([self.slider, self.refine]), self.status, self.plot])
        self._show(True)

    # ------------------------------------------------------------------ notebook display
    def _ipython_display_(self) -> None:
        from IPython.display import display

        display(self.box)

    # ------------------------------------------------------------------ public actions
    def set_t(self, t: float, full: bool = False) -> None:
        """Move the slider to ``t`` (snapped to the nearest step) and decode (preview unless ``full``)."""
        t = float(np.clip(t, 0.0, 1.0))
        snapped = round(t * (self.steps - 1)) / (self.steps - 1)
        if abs(float(self.slider.value) - snapped) > 1e-9:
            self.slider.value = snapped  # the observer decodes the preview
        if full:
            self._show(True)
        elif abs(self.state["t"] - snapped) > 1e-9 or self.state["resolution"] is None:
            self._show(False)

    def set_pair(self, a: str | None, b: str | None) -> None:
        """Select two shapes by name (``None``: empty selection) and decode at full resolution."""
        unknown = [n for n in (a, b) if n is not None and n not in self.latents]
        if unknown:
            raise SkellabError(f"unknown shape {unknown[0]!r}; choose from: {', '.join(self.names)}")
        self._quiet = True
        try:
            self.dropdown_a.value, self.dropdown_b.value = a, b
        finally:
            self._quiet = False
        self._show(True)

    def refine_now(self) -> None:
        """Decode the current blend at full resolution."""
        self._show(True)

    # ------------------------------------------------------------------ internals
    def _pair_latents(self, a: str, b: str) -> Latent:
        if (a, b) not in self.blends:
            self.blends[(a, b)] = interpolate_latents(self.latents[a], self.latents[b], self.steps)
        return self.blends[(a, b)]

    def _decode(self, a: str, b: str, i: int, R: int) -> tuple:
        i = 0 if a == b else i  # one shape: nothing to blend
        key = (a, b, i, R)
        if key not in self._meshes:
            lat = self._pair_latents(a, b)[i] if a != b else self.latents[a]
            v, f = extract_mesh(decode_grid_guided(self.model, lat, R))  # SkellabError: no surface
            watertight = bool(trimesh.Trimesh(v, f, process=False).is_watertight)
            if len(self._meshes) >= self.cache_size:
                self._meshes.pop(next(iter(self._meshes)))
            self._meshes[key] = (v.astype(np.float32), f.astype(np.uint32), watertight, count_components(v, f))
        return self._meshes[key]

    def _on_pair(self, _change: dict) -> None:
        if not self._quiet:
            self._show(True)

    def _show(self, full: bool) -> None:
        a, b = self.dropdown_a.value, self.dropdown_b.value
        t = float(self.slider.value)
        self.state.update(pair=(a, b), t=t)
        if a is None or b is None:
            self.state["message"] = self.status.value = "pick two organs (one of the dropdowns is empty)"
            return
        R = self.full_resolution if full else self.preview_resolution
        i = round(t * (self.steps - 1))
        try:
            v, f, watertight, comps = self._decode(a, b, i, R)
        except SkellabError as exc:
            self.state["message"] = self.status.value = f"t = {t:.2f}: nothing to mesh at {R}³ ({exc}); previous mesh kept"
            return
        with self.mesh.hold_sync():  # one message: vertices and indices stay consistent in the browser
            self.mesh.vertices, self.mesh.indices = v, f
        self.state.update(resolution=R, watertight=watertight, components=comps)
        flags = f"{'watertight' if watertight else 'NOT watertight'}, {comps} component{'s' if comps != 1 else ''}"
        prefix = f"same organ twice ({a}): pick two different shapes · " if a == b else ""
        self.state["message"] = self.status.value = (
            f"{prefix}t = {t:.2f} · {'full' if full else 'preview'} {R}³ · {len(f)} faces · {flags}")


def interpolation_widget(model: SkeletalAutoencoder, latents: Mapping[str, Latent], **options: Any) -> InterpolationWidget:
    """An :class:`InterpolationWidget` over ``latents`` (``{name: Latent (1, K, 4 + F)}``, decoded by ``model``).

    options : ``steps`` (slider positions; the interpolated latents of each pair are computed once,
              tokens matched), ``preview_resolution`` (grid while the slider moves), ``full_resolution``
              (the "refine" button, a new pair, the first view), ``initial`` (a pair of names),
              ``cache_size``, ``height``.
    """
    return InterpolationWidget(model, latents, **options)


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
