"""matplotlib figures: SDF slices and the like. Figures are returned, never shown."""

from __future__ import annotations

from typing import Any, Callable

import numpy as np

from ..errors import SkellabError


def _plt() -> Any:
    try:
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise SkellabError("figures need matplotlib: pip install 'skellab[viz]'") from exc
    return plt


def sdf_slices_figure(sdf: Callable[[np.ndarray], np.ndarray] | np.ndarray, *, box: float = 1.1,
                      resolution: int = 128, offsets: tuple[float, float, float] = (0.0, 0.0, 0.0),
                      truncation: float | None = 0.25, title: str = "") -> Any:
    """Three axis-aligned slices (x=, y=, z= ``offsets``) of a signed distance field.

    ``sdf`` is either a function (n,3)→(n,) or a dense grid (R,R,R) over [-box, box]^3 in
    ``ij`` order. Blue is inside (negative), red outside; the black line is the surface.
    """
    plt = _plt()
    axis = np.linspace(-box, box, resolution)
    fig, axes = plt.subplots(1, 3, figsize=(12, 4), constrained_layout=True)
    limit = truncation or None
    for ax_i, name in enumerate("xyz"):
        u, v = np.meshgrid(axis, axis, indexing="ij")
        if callable(sdf):
            pts = np.zeros((resolution * resolution, 3))
            free = [a for a in range(3) if a != ax_i]
            pts[:, ax_i] = offsets[ax_i]
            pts[:, free[0]] = u.ravel()
            pts[:, free[1]] = v.ravel()
            img = np.asarray(sdf(pts)).reshape(resolution, resolution)
        else:
            grid = np.asarray(sdf)
            if grid.ndim != 3:
                raise SkellabError(f"sdf grid must be (R, R, R), got {grid.shape}")
            r = grid.shape[0]
            idx = int(round((offsets[ax_i] + box) / (2 * box) * (r - 1)))
            img = np.take(grid, idx, axis=ax_i)
            u, v = np.meshgrid(np.linspace(-box, box, r), np.linspace(-box, box, r), indexing="ij")
        vmax = limit if limit else float(np.abs(img).max())
        ax = fig.axes[ax_i]
        mesh = ax.pcolormesh(u, v, np.clip(img, -vmax, vmax), cmap="RdBu_r", vmin=-vmax, vmax=vmax, shading="auto")
        ax.contour(u, v, img, levels=[0.0], colors="k", linewidths=1.2)
        free_names = [n for n in "xyz" if n != name]
        ax.set(title=f"{name} = {offsets[ax_i]:+.2f}", xlabel=free_names[0], ylabel=free_names[1], aspect="equal")
    fig.colorbar(mesh, ax=list(fig.axes), shrink=0.8, label="signed distance (negative inside)")
    if title:
        fig.suptitle(title)
    return fig
