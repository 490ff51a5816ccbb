"""Does the network add what the spheres miss? Reconstruction of any shapes vs the sphere-union prior.

For each shape (a :class:`~skellab.data.shape.Shape`, normalised frame): sample its surface as
the CLI does, skeletonize with the model's own method, encode, decode on a guided grid and mesh
it; mesh the union of *the same* skeletal spheres (the decoder's prior, no network); compare both
with the true surface on ``n`` ≥ 20k area-uniform points: F1@τ (precision and recall of points
within τ), Chamfer distance (PointFlow convention: squared, summed) and Hausdorff. The difference
network − prior is what the 12 learned features per token carry. With ``refine`` > 0 a third mesh,
``refined``, decodes the same spheres after the features were fitted to the shape's exact SDF
(:func:`skellab.autoencoder.refine_on_shape`): what the features *can* carry, given the shape. With
``refine_from="points"`` the features are fitted instead to the SDF implied by an oriented surface point
cloud of the shape (:func:`skellab.autoencoder.refine_on_points`; ``REFINE_CLOUD_POINTS`` points drawn with
``seed + 1``, not the points the metric reads): what refinement gives when only a scan's points are known.

Splits are whatever the caller passes: the MedSDF test fold (trained classes, held-out shapes)
and, separately, shapes of classes the autoencoder never saw (``skellab.data`` unseen sources).
"""

from __future__ import annotations

import time
from collections import defaultdict
from typing import Any, Callable, Sequence

import igl
import numpy as np
import torch

from ..autoencoder import Latent, SkeletalAutoencoder, encode_points, refine_on_points, refine_on_shape
from ..data.sampling import sample_surface
from ..data.shape import Shape
from ..errors import SkellabError
from ..meshing import decode_grid_guided, extract_mesh, sphere_union_mesh
from ..metrics.reconstruction import reconstruction_metrics

__all__ = ["FIDELITY_KEYS", "REFINE_CLOUD_POINTS", "REFINE_FROM", "centres_inside", "fidelity_of_shape",
           "evaluate_fidelity"]

FIDELITY_KEYS = ("f1@0.02", "f1@0.05", "cd_pointflow", "hausdorff")
#: what refinement fits: the shape's exact SDF, or the SDF implied by an oriented surface point cloud
REFINE_FROM = ("sdf", "points")
#: size of the point cloud that ``refine_from="points"`` fits (a scan of the surface)
REFINE_CLOUD_POINTS = 20000


def centres_inside(shape: Shape, latent: Latent) -> float:
    """Fraction of a batch-1 latent's sphere centres inside ``shape`` (libigl's fast winding number > 1/2): the
    skeleton a thin wall needs stays >= 99 % inside."""
    wn = igl.fast_winding_number(np.asarray(shape.vertices, np.float64), np.asarray(shape.faces, np.int64),
                                 latent.centers[0].detach().cpu().double().numpy())
    return float(np.mean(wn > 0.5))


def _check_refine_from(refine_from: str) -> None:
    if refine_from not in REFINE_FROM:
        raise SkellabError(f"refine_from must be one of {', '.join(REFINE_FROM)}, got {refine_from!r}")


def fidelity_of_shape(model: SkeletalAutoencoder, shape: Shape, *, resolution: int = 128, n: int = 20000,
                      seed: int = 0, refine: int = 0, refine_from: str = "sdf", refine_lr: float = 0.3,
                      refine_schedule: str = "cosine", refine_sphere_lr: float = 0.0) -> dict[str, Any]:
    """Network and prior metrics of one shape: ``{"class", "network": {...}, "prior": {...}, "query_fraction",
    "centres_inside"}`` (fraction of the token spheres' centres inside the shape, winding number); with
    ``refine`` > 0 also ``"refined": {...}`` (the features fitted for ``refine`` steps; the spheres too when
    ``refine_sphere_lr`` > 0, then also ``"refined_centres_inside"``) and
    ``"refine": {"seconds", "loss_first", "loss_last", ...}``.

    ``refine_from``: ``"sdf"`` (exact SDF samples) or ``"points"`` (an oriented point cloud's SDF), see the module;
    ``refine_lr``, ``refine_schedule``, ``refine_sphere_lr``: :func:`skellab.autoencoder.refine_features`'s ``lr``,
    ``schedule`` and ``sphere_lr`` (> 0: the spheres move too; the prior row stays the encoder's spheres' union).
    A decode with no surface counts as F1 = 0 (``"error"`` says why) rather than being dropped.
    """
    _check_refine_from(refine_from)
    points, normals = sample_surface(shape, model.config.num_surface, seed=seed)
    dev = next(model.parameters()).device
    classes = list(model.classes or [])
    ci = classes.index(shape.organ) if model.config.class_conditioning and shape.organ in classes else None
    with torch.no_grad():
        lat = encode_points(model, torch.from_numpy(points).to(dev), torch.from_numpy(normals).to(dev),
                            class_index=ci).to("cpu")
    row: dict[str, Any] = {"class": shape.organ, "id": shape.shape_id}
    row["centres_inside"] = centres_inside(shape, lat)
    taus = (0.02, 0.05)
    grid = decode_grid_guided(model, lat, resolution)
    row["query_fraction"] = grid.query_fraction
    makers = [("network", lambda: extract_mesh(grid)),
              ("prior", lambda: sphere_union_mesh(lat.centers[0], lat.radii[0], resolution))]
    if refine:
        t0 = time.perf_counter()
        if refine_from == "points":
            cloud, cloud_normals = sample_surface(shape, REFINE_CLOUD_POINTS, seed=seed + 1)
            fitted, info = refine_on_points(model, lat.to(dev), cloud, cloud_normals, steps=int(refine), lr=refine_lr,
                                            schedule=refine_schedule, sphere_lr=refine_sphere_lr, seed=seed)
        else:
            fitted, info = refine_on_shape(model, lat.to(dev), shape, steps=int(refine), lr=refine_lr,
                                           schedule=refine_schedule, sphere_lr=refine_sphere_lr, seed=seed)
        if refine_sphere_lr > 0:  # the refined skeleton: still inside the shape?
            row["refined_centres_inside"] = centres_inside(shape, fitted)
        row["refine"] = {**info, "from": refine_from, "seconds": time.perf_counter() - t0}
        makers.append(("refined", lambda: extract_mesh(decode_grid_guided(model, fitted.to("cpu"), resolution))))
    for name, make in makers:
        try:
            m = reconstruction_metrics(make(), shape, n=n, seed=seed, taus=taus, with_emd=False)
            row[name] = {k: m[k] for k in FIDELITY_KEYS}
        except SkellabError as exc:
            row[name] = {"f1@0.02": 0.0, "f1@0.05": 0.0, "cd_pointflow": float("nan"), "hausdorff": float("nan"),
                         "error": str(exc)}
    return row


def _mean(rows: list[dict[str, float]]) -> dict[str, float]:
    return {k: float(np.nanmean([r[k] for r in rows])) for k in FIDELITY_KEYS} if rows else {}


def evaluate_fidelity(model: SkeletalAutoencoder, shapes: Sequence[Shape], *, resolution: int = 128, n: int = 20000,
                      seed: int = 0, log: Callable[[str], None] | None = None, refine: int = 0,
                      refine_from: str = "sdf", refine_lr: float = 0.3, refine_schedule: str = "cosine",
                      refine_sphere_lr: float = 0.0) -> dict[str, Any]:
    """:func:`fidelity_of_shape` for every shape, then per class and overall means.

    returns ``{"n", "resolution", "shapes": [...], "per_class": {class: {"network", "prior", "gain",
    "count"}}, "mean": {"network", "prior", "gain"}, "class_mean": {...}}``: ``gain`` = network − prior
    (positive F1 gain and negative CD gain mean the network adds detail); ``mean`` averages shapes,
    ``class_mean`` averages classes (each class counts once). With ``refine`` > 0 each summary also has
    ``"refined"`` and ``"gain_refined"`` (refined − prior) (:func:`fidelity_of_shape`).
    """
    if not shapes:
        raise SkellabError("evaluate_fidelity needs at least one shape")
    _check_refine_from(refine_from)
    rows = []
    for i, shape in enumerate(shapes):
        rows.append(fidelity_of_shape(model, shape, resolution=resolution, n=n, seed=seed, refine=refine,
                                      refine_from=refine_from, refine_lr=refine_lr, refine_schedule=refine_schedule,
                                      refine_sphere_lr=refine_sphere_lr))
        if log is not None:
            r = rows[-1]
            refined = f" refined {r['refined']['f1@0.02']:.3f}" if "refined" in r else ""
            log(f"[{i + 1}/{len(shapes)}] {r['class']:<22} F1@0.02 network {r['network']['f1@0.02']:.3f} "
                f"prior {r['prior']['f1@0.02']:.3f}{refined}")
    by_class: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in rows:
        by_class[r["class"]].append(r)

    def summary(group: list[dict[str, Any]]) -> dict[str, Any]:
        net, pri = _mean([r["network"] for r in group]), _mean([r["prior"] for r in group])
        out = {"network": net, "prior": pri, "gain": {k: net[k] - pri[k] for k in FIDELITY_KEYS}, "count": len(group),
               "centres_inside": float(np.mean([r["centres_inside"] for r in group]))}
        if refine:
            ref = _mean([r["refined"] for r in group])
            out.update(refined=ref, gain_refined={k: ref[k] - pri[k] for k in FIDELITY_KEYS})
        if any("refined_centres_inside" in r for r in group):
            out["refined_centres_inside"] = float(np.mean([r["refined_centres_inside"] for r in group]))
        return out

    per_class = {c: summary(g) for c, g in sorted(by_class.items())}
    parts = ("network", "prior", "gain") + (("refined", "gain_refined") if refine else ())
    class_mean = {part: {k: float(np.nanmean([pc[part][k] for pc in per_class.values()])) for k in FIDELITY_KEYS}
                  for part in parts}
    return {"n": int(n), "resolution": int(resolution), "refine_from": refine_from if refine else None,
            "refine_lr": refine_lr if refine else None, "refine_schedule": refine_schedule if refine else None,
            "refine_sphere_lr": refine_sphere_lr if refine else None,
            "frame": "per-shape normalised (bbox centre 0, max |x| 1)",
            "shapes": rows, "per_class": per_class, "mean": summary(rows), "class_mean": class_mean}
