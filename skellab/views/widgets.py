"""ipywidgets built once and updated in place. Builders return widgets; they never ``display()``."""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from ..errors import SkellabError
from .k3d_views import PALETTE, _k3d, points_view


def _ipywidgets() -> Any:
    try:
        import ipywidgets
    except ImportError as exc:
        raise SkellabError("interactive widgets need ipywidgets: pip install 'skellab[viz]'") from exc
    return ipywidgets


def history_scrubber(
    frames: Sequence[tuple[str, np.ndarray]],
    *,
    surface_points: np.ndarray | None = None,
    point_size: float = 0.025,
    height: int = 420,
) -> Any:
    """A slider over iterates ``[(label, points (M_i, 3)), ...]`` (e.g. contraction stages).

    The k3d point object is updated in place (its ``positions``), the plot is never
    rebuilt. Returns an ``ipywidgets.VBox`` whose ``.slider`` and ``.plot`` attributes
    let tests and notebooks drive it.
    """
    if not frames:
        raise SkellabError("history_scrubber needs at least one frame")
    widgets = _ipywidgets()

    k3d = _k3d()
    plot = k3d.plot(height=height, grid_visible=False, menu_visibility=False)
    if surface_points is not None:
        points_view(surface_points, color=0xBBBBBB, point_size=0.01, plot=plot, name="surface")
    moving = k3d.points(np.asarray(frames[0][1], np.float32), color=PALETTE["graph"], point_size=point_size,
                        shader="flat", name="iterate")
    plot += moving
    slider = widgets.IntSlider(value=0, min=0, max=len(frames) - 1, description="step", continuous_update=True)
    label = widgets.Label(value=frames[0][0])

    def _on_change(change: dict) -> None:
        name, pts = frames[int(change["new"])]
        moving.positions = np.asarray(pts, np.float32)
        label.value = name

    slider.observe(_on_change, names="value")
    box = widgets.VBox([widgets.HBox([slider, label]), plot])
    box.slider, box.plot, box.moving = slider, plot, moving
    return box
