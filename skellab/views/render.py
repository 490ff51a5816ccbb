"""Static PNG renders through polyscope's headless EGL backend.

Executed notebooks and reports keep these pictures without a live kernel (k3d needs
one). ``render_png`` returns PNG bytes; show them with ``IPython.display.Image``.
"""

from __future__ import annotations

import io
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
) -> bytes:
    """Render meshes ``[(V (n,3), F (m,3)), ...]``, skeletal ``spheres`` (centers (K,3), radii (K,)),
    a point cloud and a stick figure (``edges`` (E,2) over the sphere centres) to PNG bytes."""
    ps = _polyscope()
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
