"""Time each skeletonization method: 2,560 surface points → 256 spheres, batch 1 and 16, CPU.

    python benchmarks/bench_skeleton.py --out bench_skeleton.json [--repeats 5] [--threads 1]

Reports the median wall time (ms) over ``--repeats`` runs after one warm-up, per method
and batch size, and the ratio to the paper's contraction at the same batch size. The
shape is an analytic torus (known normals); graph edges are not included in the timing
(thinning builds its own and runs once per mesh, so batch 16 is 16 sequential calls).
Methods whose module is missing (learned, thinning) or that fail are reported as skipped.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time

import numpy as np
import torch
import trimesh

from skellab.runtime import atomic_path
from skellab.skeleton import METHODS, skeletonize


def _torus_sample(n: int, seed: int) -> tuple[trimesh.Trimesh, np.ndarray, np.ndarray]:
    mesh = trimesh.creation.torus(major_radius=0.7, minor_radius=0.2, major_sections=96, minor_sections=48)
    pts, face = trimesh.sample.sample_surface(mesh, n, seed=seed)
    return mesh, pts.astype(np.float32), mesh.face_normals[face].astype(np.float32)


def _time(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(1e3 * (time.perf_counter() - start))
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="bench_skeleton.json", help="JSON file to write")
    parser.add_argument("--points", type=int, default=2560, help="surface points per shape")
    parser.add_argument("--k", type=int, default=256, help="skeletal spheres per shape")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 16], help="batch sizes")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per setting (median)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (0: leave as is)")
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    args = parser.parse_args()
    if args.threads > 0:
        torch.set_num_threads(args.threads)

    mesh, pts, nrm = _torus_sample(args.points, seed=0)
    results: dict[str, dict] = {}
    for method in args.methods:
        results[method] = {}
        for batch in args.batches:
            x = torch.from_numpy(np.repeat(pts[None], batch, 0))
            n = torch.from_numpy(np.repeat(nrm[None], batch, 0))

            def run() -> None:
                if method == "thinning":  # one mesh at a time
                    for _ in range(batch):
                        skeletonize(pts, method=method, k=args.k, mesh=mesh, device="cpu")
                    return
                skeletonize(x, n if method == "medial" else None, method=method, k=args.k, device="cpu", edges=False)

            try:
                results[method][str(batch)] = {"ms": round(_time(run, args.repeats), 2)}
            except Exception as exc:  # noqa: BLE001 — a benchmark reports, it does not crash
                results[method][str(batch)] = {"skipped": f"{type(exc).__name__}: {exc}"[:200]}
            print(method, batch, results[method][str(batch)], flush=True)
    for method, per_batch in results.items():
        for batch, row in per_batch.items():
            base = results.get("contraction", {}).get(batch, {}).get("ms")
            if "ms" in row and base:
                row["ratio_vs_contraction"] = round(row["ms"] / base, 3)
    report = {
        "task": f"{args.points} surface points -> {args.k} spheres, CPU, median of {args.repeats}",
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "machine": platform.processor() or platform.machine(),
        "results": results,
    }
    with atomic_path(args.out) as tmp:
        tmp.write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
