"""Static PNG renders: polyscope's headless EGL backend, or matplotlib where EGL is missing.

Executed notebooks and reports keep these pictures without a live kernel (k3d needs
one). ``render_png`` returns PNG bytes; show them with ``IPython.display.Image``.
``backend="auto"`` (the default) tries polyscope and falls back to a matplotlib render
(flat-shaded, painter's algorithm) when no headless OpenGL is available; the environment
variable ``SKELLAB_RENDER_BACKEND=matplotlib`` forces the fallback.
"""

from __future__ import annotations

import io
import os
import warnings
from typing import Any, Sequence

import numpy as np

from ..errors import SkellabError

_READY = False


def _polyscope() -> Any:
    global _READY
    try:
        import polyscope as ps
    except ImportError as exc:
        raise SkellabError("static renders need polyscope: pip install 'skellab[viz]'") from exc
    if not _READY:
        ps.set_allow_headless_backends(True)
        ps.set_use_prefs_file(False)
        ps.set_program_name("skellab")
        ps.set_verbosity(0)
        try:
            ps.init()
        except Exception as exc:  # no GL/EGL available
            raise SkellabError(f"polyscope could not start a headless OpenGL backend ({exc})") from exc
        ps.set_ground_plane_mode("shadow_only")
        _READY = True
    return ps


def render_png(
    *,
    meshes: Sequence[tuple[np.ndarray, np.ndarray]] = (),
    spheres: tuple[np.ndarray, np.ndarray] | None = None,
    points: np.ndarray | None = None,
    edges: np.ndarray | None = None,
    size: tuple[int, int] = (640, 480),
    mesh_transparency: float = 1.0,
    camera: tuple[Sequence[float], Sequence[float]] = ((2.2, 1.4, 2.6), (0.0, 0.0, 0.0)),
    backend: str = "auto",
) -> bytes:
    """Render meshes ``[(V (n,3), F (m,3)), ...]``, skeletal ``spheres`` (centers (K,3), radii (K,)),
    a point cloud and a stick figure (``edges`` (E,2) over the sphere centres) to PNG bytes.

    ``backend``: ``"polyscope"`` (raises without headless OpenGL), ``"matplotlib"``, or ``"auto"``
    (polyscope, else matplotlib with a warning; ``SKELLAB_RENDER_BACKEND`` overrides ``"auto"``).
    """
    if backend == "auto":
        backend = os.environ.get("SKELLAB_RENDER_BACKEND", "auto") or "auto"
    if backend not in ("auto", "polyscope", "matplotlib"):
        raise SkellabError(f"unknown render backend {backend!r}: use auto, polyscope or matplotlib")
    args = dict(meshes=meshes, spheres=spheres, points=points, edges=edges, size=size,
                mesh_transparency=mesh_transparency, camera=camera)
    if backend == "matplotlib":
        return _render_matplotlib(**args)
    try:
        ps = _polyscope()
    except SkellabError as exc:
        if backend == "polyscope":
            raise
        warnings.warn(f"{exc}; rendering with matplotlib instead", RuntimeWarning, stacklevel=2)
        return _render_matplotlib(**args)
    return _render_polyscope(ps, **args)


def _render_polyscope(ps: Any, *, meshes: Sequence[tuple[np.ndarray, np.ndarray]], spheres: Any, points: Any,
                      edges: Any, size: tuple[int, int], mesh_transparency: float, camera: Any) -> bytes:
    from PIL import Image

    ps.remove_all_structures()
    ps.set_window_size(*size)
    colors = [(0.91, 0.66, 0.49), (0.45, 0.62, 0.80), (0.60, 0.80, 0.55)]
    for i, (v, f) in enumerate(meshes):
        m = ps.register_surface_mesh(f"mesh{i}", np.asarray(v, np.float64), np.asarray(f, np.int64),
                                     color=colors[i % len(colors)], smooth_shade=True)
        m.set_transparency(mesh_transparency)
    if spheres is not None:
        c, r = (np.asarray(a, np.float64) for a in spheres)
        pc = ps.register_point_cloud("spheres", c, color=(0.76, 0.55, 0.62))
        pc.add_scalar_quantity("radius", r)
        pc.set_point_radius_quantity("radius", autoscale=False)
        if edges is not None and len(edges):
            ps.register_curve_network("graph", c, np.asarray(edges, np.int64), color=(0.12, 0.23, 0.37), radius=0.004)
    if points is not None:
        ps.register_point_cloud("points", np.asarray(points, np.float64), color=(0.25, 0.70, 0.64), radius=0.004)
    if mesh_transparency < 1.0:
        ps.set_transparency_mode("pretty")
    ps.look_at(camera[0], camera[1])
    buf = ps.screenshot_to_buffer(transparent_bg=False)
    out = io.BytesIO()
    Image.fromarray(buf[..., :3]).save(out, format="PNG")
    return out.getvalue()


_COLORS = [(0.91, 0.66, 0.49), (0.45, 0.62, 0.80), (0.60, 0.80, 0.55)]


def _render_matplotlib(*, meshes: Sequence[tuple[np.ndarray, np.ndarray]], spheres: Any, points: Any, edges: Any,
                       size: tuple[int, int], mesh_transparency: float, camera: Any) -> bytes:
    """The same scene drawn by matplotlib's 3D axes: Lambert-shaded triangles sorted back to front."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
        from mpl_toolkits.mplot3d.art3d import Poly3DCollection
    except ImportError as exc:
        raise SkellabError("static renders need matplotlib (or polyscope): pip install 'skellab[viz]'") from exc
    eye, target = (np.asarray(a, float) for a in camera)
    view = eye - target
    # polyscope is y-up, matplotlib z-up: draw P = (x, −z, y), a rotation (no mirror image)
    azim = np.degrees(np.arctan2(-view[2], view[0]))
    elev = np.degrees(np.arctan2(view[1], np.hypot(view[0], view[2])))
    light = view / np.linalg.norm(view)
    dpi = 100
    fig = Figure(figsize=(size[0] / dpi, size[1] / dpi), dpi=dpi)  # no pyplot: the notebook's backend stays
    FigureCanvasAgg(fig)
    ax = fig.add_axes((0, 0, 1, 1), projection="3d")

    def rot(a: np.ndarray) -> np.ndarray:
        return np.stack([a[..., 0], -a[..., 2], a[..., 1]], axis=-1)
    for i, (v, f) in enumerate(meshes):
        v, f = np.asarray(v, float), np.asarray(f, np.int64)
        if not len(f):
            continue
        tri = v[f]
        n = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
        n /= np.linalg.norm(n, axis=1, keepdims=True) + 1e-12
        shade = 0.35 + 0.65 * np.abs(n @ light)
        rgb = np.clip(np.asarray(_COLORS[i % len(_COLORS)])[None] * shade[:, None], 0, 1)
        faces = Poly3DCollection(rot(tri), facecolors=np.c_[rgb, np.full(len(rgb), mesh_transparency)],
                                 edgecolors="none")
        ax.add_collection3d(faces)
    if spheres is not None:
        c, r = (np.asarray(a, float) for a in spheres)
        pc = rot(c)
        ax.scatter(pc[:, 0], pc[:, 1], pc[:, 2], s=np.clip((r * size[1]) ** 2, 2, None), color=(0.76, 0.55, 0.62),
                   alpha=0.5, depthshade=True)
        if edges is not None and len(edges):
            for a, b in np.asarray(edges, np.int64):
                ax.plot(*pc[[a, b]].T, color=(0.12, 0.23, 0.37), lw=0.8)
    if points is not None:
        p = rot(np.asarray(points, float))
        ax.scatter(p[:, 0], p[:, 1], p[:, 2], s=1.5, color=(0.25, 0.70, 0.64))
    ax.set(xlim=(-1, 1), ylim=(-1, 1), zlim=(-1, 1))
    ax.set_box_aspect((1, 1, 1))
    ax.view_init(elev=elev, azim=azim)
    ax.set_axis_off()
    out = io.BytesIO()
    fig.savefig(out, format="png", dpi=dpi, facecolor="white")
    return out.getvalue()
