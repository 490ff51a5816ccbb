"""How close is the SDF an oriented point cloud implies to the exact one? (`skellab.data.sampling.point_cloud_sdf`)

    python benchmarks/point_cloud_sdf.py [--points 20000] [--out point_cloud_sdf.json]

For every shape of the unseen split (:func:`skellab.data.atlases.unseen_shapes`): draw an oriented surface point
cloud (``--points``, seed 12345), draw the queries refinement fits (``REFINE_SAMPLES``: 20,000 around the surface,
2,000 uniform in the box; seed 1) and compare, in units of the shipped autoencoder's truncation τ = 0.25 and after
truncation to [−τ, τ] (what refinement fits), four approximations with libigl's exact signed distance to the mesh:

* ``robust`` — what ``point_cloud_sdf`` returns: tangent-plane distance of the nearest point, never less than the
  distance to that point minus its spacing, signed by the point cloud's fast winding number;
* ``plane`` — the tangent-plane distance alone (Hoppe et al. 1992), signed by the winding number;
* ``hoppe`` — the tangent-plane distance with its own sign;
* ``point`` — the distance to the nearest point, signed by the winding number.

Reported per shape and as means: mean and largest absolute error, mean error on the near-surface queries with
|SDF| < 0.02, sign agreement of the winding number, and seconds for ``point_cloud_sdf``.
"""

from __future__ import annotations

import argparse
import json
import time
import warnings

import igl
import numpy as np
from scipy.spatial import cKDTree

from skellab.autoencoder import REFINE_SAMPLES
from skellab.data.atlases import unseen_shapes
from skellab.data.sampling import POINT_CLOUD_NEIGHBOURS, point_cloud_sdf, sample_sdf, sample_surface

TAU = 0.25


def variants(points: np.ndarray, normals: np.ndarray, queries: np.ndarray) -> dict[str, np.ndarray]:
    """The three alternatives ``point_cloud_sdf`` was chosen over (same neighbours, areas and winding number)."""
    tree = cKDTree(points)
    spacing, _ = tree.query(points, k=POINT_CLOUD_NEIGHBOURS + 1)
    area = np.pi * spacing[:, -1] ** 2 / POINT_CLOUD_NEIGHBOURS
    dist, nearest = tree.query(queries)
    plane = np.einsum("ij,ij->i", queries - points[nearest], normals[nearest])
    sign = np.where(igl.fast_winding_number(points, normals, area, queries) > 0.5, -1.0, 1.0)
    return {"plane": sign * np.abs(plane), "hoppe": plane, "point": sign * dist}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--points", type=int, default=20000)
    ap.add_argument("--out", default="point_cloud_sdf.json")
    args = ap.parse_args()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        shapes = unseen_shapes()
    rows = []
    for shape in shapes:
        p, n = (a.astype(np.float64) for a in sample_surface(shape, args.points, seed=12345))
        s = sample_sdf(shape, config=REFINE_SAMPLES, seed=1)
        q, exact = s["sdf_points"].astype(np.float64), s["sdf_values"].astype(np.float64)
        t0 = time.perf_counter()
        robust = point_cloud_sdf(p, n, q)
        seconds = time.perf_counter() - t0
        truth = np.clip(exact / TAU, -1, 1)
        near = np.abs(exact) < 0.02
        row = {"id": shape.shape_id, "class": shape.organ, "seconds": seconds,
               "sign_agreement": float(np.mean((robust < 0) == (exact < 0)))}
        for name, approx in {"robust": robust, **variants(p, n, q)}.items():
            err = np.abs(np.clip(approx / TAU, -1, 1) - truth)
            row[name] = {"mean": float(err.mean()), "max": float(err.max()), "near_mean": float(err[near].mean())}
        rows.append(row)
        print(f"{shape.shape_id:24s} " + "  ".join(f"{k} {row[k]['mean']:.4f}/{row[k]['max']:.2f}"
                                                   for k in ("robust", "plane", "hoppe", "point")), flush=True)
    summary = {k: {m: float(np.mean([r[k][m] for r in rows])) for m in ("mean", "max", "near_mean")}
               for k in ("robust", "plane", "hoppe", "point")}
    summary["largest_max"] = {k: float(max(r[k]["max"] for r in rows)) for k in ("robust", "plane", "hoppe", "point")}
    summary["sign_agreement"] = float(np.mean([r["sign_agreement"] for r in rows]))
    summary["seconds"] = float(np.median([r["seconds"] for r in rows]))
    print(json.dumps(summary, indent=1))
    with open(args.out, "w") as fh:
        json.dump({"points": args.points, "tau": TAU, "shapes": rows, "summary": summary}, fh, indent=1)


if __name__ == "__main__":
    main()
