"""matplotlib figures of a training run: loss curves per stage and galleries of meshes.

Both return the figure and never show it (``plt.show()`` in a notebook), so they work
headless (Agg) and the pictures stay in an executed notebook as PNGs.
"""

from __future__ import annotations

import io
import json
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from ..errors import SkellabError
from ..train import read_log
from .plots import _plt

__all__ = ["training_curves", "mesh_gallery", "nearest_reference_gallery", "figure_png"]

STAGE_ORDER = ("skeleton", "autoencoder", "diffusion")


def _rows(source: Any) -> list[dict[str, Any]]:
    """Log rows from a ``log.csv`` path, a list of row dicts, or anything with ``.history`` (FitResult)."""
    if isinstance(source, (str, os.PathLike)):
        return read_log(source)
    return list(getattr(source, "history", source))


def _column(rows: Sequence[dict[str, Any]], name: str) -> tuple[np.ndarray, np.ndarray]:
    pts = [(r["step"], float(r[name])) for r in rows if name in r and r[name] == r[name]]
    return np.array([p[0] for p in pts], float), np.array([p[1] for p in pts], float)


def _moving_average(y: np.ndarray, window: int) -> np.ndarray:
    """Trailing mean over ``window`` values (shorter at the start)."""
    c = np.cumsum(np.insert(y, 0, 0.0))
    i = np.arange(1, len(y) + 1)
    lo = np.maximum(i - window, 0)
    return (c[i] - c[lo]) / (i - lo)


def _window(n: int) -> int:
    return max(1, min(100, n // 10))


def training_curves(run_dir_or_logs: str | os.PathLike | Mapping[str, Any], *,
                    stages: Sequence[str] | None = None, ax: Any = None) -> Any:
    """Loss curves of a run: one panel per stage (skeleton, autoencoder, diffusion).

    run_dir_or_logs : a run folder (``RUN/<stage>/log.csv`` and, if present, ``summary.json``),
                      or ``{stage: log.csv path | list of log rows | FitResult}``
    stages          : which stages to draw (default: every stage that has a log, in pipeline order)
    ax              : one Axes per drawn stage (a single Axes for a single stage); default: a new figure

    Each panel: the training loss per step (thin) and its moving average on a log y-axis, the
    training term that a validation column measures (``sdf`` for ``val_sdf``), validation
    values as markers, and the learning rate on a twin axis. Titles give the steps and the
    seconds (and device) from ``summary.json`` when there is one.
    """
    plt = _plt()
    logs: dict[str, Any] = {}
    summaries: dict[str, dict[str, Any]] = {}
    if isinstance(run_dir_or_logs, Mapping):
        logs = dict(run_dir_or_logs)
    else:
        run = Path(run_dir_or_logs)
        for stage in STAGE_ORDER:
            if (run / stage / "log.csv").is_file():
                logs[stage] = run / stage / "log.csv"
            if (run / stage / "summary.json").is_file():
                summaries[stage] = json.loads((run / stage / "summary.json").read_text())
    names = [s for s in (stages or sorted(logs, key=lambda s: (STAGE_ORDER + (s,)).index(s))) if s in logs]
    if not names:
        raise SkellabError(f"no training logs found in {run_dir_or_logs}" if stages is None
                           else f"no training logs for stage(s) {', '.join(stages)}")
    if ax is None:
        fig, axes = plt.subplots(1, len(names), figsize=(4.6 * len(names), 3.4), squeeze=False, constrained_layout=True)
        axes = list(axes[0])
    else:
        axes = list(np.atleast_1d(ax))
        if len(axes) != len(names):
            raise SkellabError(f"got {len(axes)} Axes for {len(names)} stage(s)")
        fig = axes[0].figure
    for a, stage in zip(axes, names):
        rows = _rows(logs[stage])
        steps, loss = _column(rows, "loss")
        if len(steps):
            positive = bool((loss > 0).all())
            a.plot(steps, loss, color="C0", lw=0.7, alpha=0.35, label="train loss")
            a.plot(steps, _moving_average(loss, _window(len(loss))), color="C0", lw=1.6, label="moving avg")
            val_cols = [k for k in rows[0] if k.startswith("val_")] if rows else []
            main_val = "val_loss" if "val_loss" in val_cols else (val_cols[0] if val_cols else None)
            if main_val is not None:
                term = main_val[4:]
                if term != "loss":
                    ts, tv = _column(rows, term)
                    if len(ts):
                        a.plot(ts, _moving_average(tv, _window(len(tv))), color="C2", lw=1.0,
                               label=f"train {term} (avg)")
                        positive = positive and bool((tv > 0).all())
                vs, vv = _column(rows, main_val)
                if len(vs):
                    a.plot(vs, vv, "o", color="C3", ms=5, zorder=5, label=main_val.replace("_", " "))
                    positive = positive and bool((vv > 0).all())
            a.set_yscale("log" if positive else "linear")
            ls, lv = _column(rows, "lr")
            if len(ls):
                twin = a.twinx()
                twin.plot(ls, lv, color="0.5", lw=0.9, ls="--")
                twin.set_ylabel("learning rate", color="0.4", fontsize=8)
                twin.tick_params(axis="y", labelsize=7, colors="0.4")
                twin.set_ylim(0, 1.1 * float(lv.max()) if lv.max() > 0 else 1)
            a.legend(fontsize=7, loc="best", framealpha=0.6)
        s = summaries.get(stage, {})
        n = s.get("steps", int(steps[-1]) if len(steps) else 0)
        secs = s.get("seconds_total", rows[-1].get("seconds") if rows else None)
        title = f"{stage}: {n} steps" + (f", {secs:.0f} s" if isinstance(secs, (int, float)) and np.isfinite(secs) else "")
        if s.get("device"):
            title += f" ({s['device']})"
        a.set(title=title, xlabel="step", ylabel="loss")
        a.grid(alpha=0.3, which="both", lw=0.4)
    return fig


def _vertices_faces(mesh: Any) -> tuple[np.ndarray, np.ndarray] | None:
    """(V, F) of a trimesh / GeneratedOrgan / (V, F) pair, or None when it is missing or empty."""
    if mesh is None:
        return None
    if isinstance(mesh, (tuple, list)) and len(mesh) == 2:
        v, f = mesh
    else:
        v, f = getattr(mesh, "vertices", None), getattr(mesh, "faces", None)
    if v is None or f is None:
        raise SkellabError(f"cannot draw a {type(mesh).__name__}: expected a mesh or a (vertices, faces) pair")
    v, f = np.asarray(v, float), np.asarray(f, np.int64)
    return (v, f) if len(v) and len(f) else None


def mesh_gallery(meshes: Sequence[Any], titles: Sequence[str] | None = None, *, cols: int = 4,
                 size: float = 2.5) -> Any:
    """A grid of shaded 3D renders of meshes (matplotlib, so it works headless).

    meshes : trimesh meshes, :class:`~skellab.generation.GeneratedOrgan` s or ``(V, F)`` pairs;
             ``None`` or an empty mesh is drawn as an empty panel saying so
    titles : one per mesh; cols: panels per row; size: inches per panel

    Faces are flat-shaded by their normal against a fixed light; all panels share the
    same cube of axes limits (the largest |coordinate| of any mesh), so sizes compare.
    """
    plt = _plt()
    from mpl_toolkits.mplot3d.art3d import Poly3DCollection

    if not len(meshes):
        raise SkellabError("mesh_gallery needs at least one mesh")
    if titles is not None and len(titles) != len(meshes):
        raise SkellabError(f"got {len(titles)} titles for {len(meshes)} meshes")
    parts = [_vertices_faces(m) for m in meshes]
    extent = max([float(np.abs(p[0]).max()) for p in parts if p is not None] or [1.0])
    cols = max(1, min(int(cols), len(parts)))
    rows = -(-len(parts) // cols)
    fig = plt.figure(figsize=(size * cols, size * rows), constrained_layout=True)
    light = np.array([0.4, -0.5, 0.75]) / np.linalg.norm([0.4, -0.5, 0.75])
    base = np.array([0.91, 0.62, 0.45])
    for i, part in enumerate(parts):
        a = fig.add_subplot(rows, cols, i + 1, projection="3d")
        if part is None:
            a.text2D(0.5, 0.5, "empty mesh", ha="center", va="center", transform=a.transAxes, color="0.4")
        else:
            v, f = part
            tri = v[f]  # (F, 3, 3)
            normals = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
            normals /= np.linalg.norm(normals, axis=1, keepdims=True).clip(1e-12)
            shade = 0.35 + 0.65 * np.abs(normals @ light)
            a.add_collection3d(Poly3DCollection(tri, facecolors=shade[:, None] * base, edgecolors="none"))
        a.set(xlim=(-extent, extent), ylim=(-extent, extent), zlim=(-extent, extent))
        a.set_box_aspect((1, 1, 1))
        a.view_init(elev=20, azim=-60)
        a.set_axis_off()
        if titles is not None:
            a.set_title(str(titles[i]), fontsize=9)
    return fig


def nearest_reference_gallery(generated: Sequence[Any], references: Sequence[Any], *,
                              chamfer: Sequence[float] | None = None, title: str | None = None,
                              size: float = 2.2) -> Any:
    """Generated meshes in the top row and, under each, its nearest reference (:func:`mesh_gallery`).

    generated, references : equally many meshes (``references[i]`` is the one nearest ``generated[i]``,
                            e.g. a :class:`~skellab.evaluation.GalleryRow`); chamfer: their distances for the
                            titles (raw CD, shown ×10³); title: a figure title
    """
    if len(generated) != len(references):
        raise SkellabError(f"got {len(generated)} generated meshes and {len(references)} references")
    if chamfer is not None and len(chamfer) != len(generated):
        raise SkellabError(f"got {len(chamfer)} distances for {len(generated)} pairs")
    titles = [f"generated {i}" for i in range(len(generated))]
    titles += ["nearest reference" if chamfer is None else f"nearest ref, CD {1e3 * float(d):.1f}e-3"
               for d in (chamfer if chamfer is not None else [None] * len(references))]
    fig = mesh_gallery(list(generated) + list(references), titles, cols=max(1, len(generated)), size=size)
    if title:
        fig.suptitle(title)
    return fig


def figure_png(fig: Any, *, dpi: int = 100, close: bool = True) -> bytes:
    """A matplotlib figure as PNG bytes (white background); ``close`` frees it from pyplot."""
    out = io.BytesIO()
    try:
        fig.savefig(out, format="png", dpi=dpi, facecolor="white")
    finally:
        if close:
            _plt().close(fig)
    return out.getvalue()
