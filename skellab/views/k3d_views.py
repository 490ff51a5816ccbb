"""k3d views of meshes, point clouds and skeletal spheres; built once, updated in place.

Each helper takes an optional ``plot``: given one, it adds to it, else it makes a new
``k3d.Plot``. It returns the plot (and the created objects live in ``plot.objects``),
so a notebook can ``display(plot)`` and later update ``plot.objects[i].vertices``.
"""

from __future__ import annotations

import os
import warnings
from typing import Any

import numpy as np

from ..errors import SkellabError
from ..runtime import atomic_path

PALETTE = {"mesh": 0xE8A87C, "points": 0x41B3A3, "spheres": 0xC38D9E, "graph": 0x1F3A5F}


def _k3d() -> Any:
    try:
        import k3d
    except ImportError as exc:  # optional dependency
        raise SkellabError("3D views need k3d: pip install 'skellab[viz]'") from exc
    warnings.filterwarnings("ignore", message="Given trait value dtype")
    return k3d


def _new_plot(plot: Any, height: int) -> Any:
    return plot if plot is not None else _k3d().plot(height=height, grid_visible=False, menu_visibility=False)


def mesh_view(vertices: np.ndarray, faces: np.ndarray, *, color: int = PALETTE["mesh"], opacity: float = 1.0,
              plot: Any = None, height: int = 400, name: str = "mesh") -> Any:
    """Add a triangle mesh ``vertices (V,3)``, ``faces (F,3)`` to a k3d plot."""
    k3d = _k3d()
    plot = _new_plot(plot, height)
    plot += k3d.mesh(np.asarray(vertices, np.float32), np.asarray(faces, np.uint32), color=color,
                     opacity=opacity, flat_shading=False, name=name, side="double" if opacity < 1 else "front")
    return plot


def points_view(points: np.ndarray, *, color: int = PALETTE["points"], point_size: float = 0.015,
                plot: Any = None, height: int = 400, name: str = "points") -> Any:
    """Add a point cloud ``points (N,3)`` to a k3d plot."""
    k3d = _k3d()
    plot = _new_plot(plot, height)
    plot += k3d.points(np.asarray(points, np.float32), color=color, point_size=point_size, shader="flat", name=name)
    return plot


def skeleton_view(centers: np.ndarray, radii: np.ndarray | None = None, edges: np.ndarray | None = None, *,
                  spheres: bool = True, graph: bool = True, sphere_opacity: float = 0.35, plot: Any = None,
                  height: int = 400, name: str = "skeleton") -> Any:
    """Add skeletal spheres (``centers (K,3)``, ``radii (K,)``) and a stick figure (``edges (E,2)``)."""
    k3d = _k3d()
    plot = _new_plot(plot, height)
    c = np.asarray(centers, np.float32)
    if spheres and radii is not None:
        plot += k3d.points(c, point_sizes=2.0 * np.asarray(radii, np.float32), color=PALETTE["spheres"],
                           shader="mesh", opacity=sphere_opacity, name=f"{name} spheres")
    if graph and edges is not None and len(edges):
        plot += k3d.lines(c, np.asarray(edges, np.uint32), indices_type="segment", color=PALETTE["graph"],
                          width=0.01, shader="mesh", name=f"{name} graph")
    plot += k3d.points(c, color=PALETTE["graph"], point_size=0.02, shader="flat", name=f"{name} centres")
    return plot


def snapshot_html(plot: Any, path: str | os.PathLike) -> None:
    """Write the plot as a self-contained offline HTML file (k3d snapshot)."""
    with atomic_path(path) as tmp:
        tmp.write_text(plot.get_snapshot())
