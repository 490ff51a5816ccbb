"""Benchmark: dense vs skeleton-guided SDF decoding (METHOD §7).

For one encoded test shape, decode the full grid and the guided (coarse-to-fine,
sphere-band) grid at each resolution, mesh both with marching cubes and report

* ``query_ratio``  guided decoder queries / dense queries (aim ≤ 0.10),
* ``speedup``      dense wall time / guided wall time (aim ≥ 5),
* ``cd_vertices``  Chamfer distance (PointFlow convention: squared, summed) between the
                   two meshes' vertex sets, normalised frame (aim < 1e-5), plus whether
                   the face arrays are identical and the largest vertex difference,
* ``band_*``       the same for the previous guided setting (``coarse=32, narrow=None``: every
                   point of every cell that can hold surface decoded), timed in the same run.

Usage::

    python benchmarks/bench_decoding.py --dataset /tmp/medsdf-tiny --out benchmarks/results/decoding.json
    python benchmarks/bench_decoding.py --resolutions 64 --threads 1   # quick look

Without ``--dataset`` a ``tiny`` MedSDF is built into a temporary folder first.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--weights", default=None, help="autoencoder checkpoint (default: the shipped one)")
    ap.add_argument("--dataset", default=None, help="MedSDF folder (default: build the tiny preset in a temp dir)")
    ap.add_argument("--shape", default=None, help="shape id (default: the first test shape)")
    ap.add_argument("--resolutions", type=int, nargs="+", default=[128, 256])
    ap.add_argument("--chunk", type=int, default=65536, help="decoder queries per forward pass")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    ap.add_argument("--out", default=None, help="write the JSON result here")
    args = ap.parse_args(argv)

    from skellab.autoencoder import encode_shapes, load_autoencoder
    from skellab.data.build import build_dataset
    from skellab.data.medsdf import MedSDF
    from skellab.meshing import decode_grid_dense, decode_grid_guided, extract_mesh
    from skellab.metrics import chamfer_distance

    if args.threads:
        torch.set_num_threads(args.threads)
    root = args.dataset
    if root is None:
        root = Path(tempfile.mkdtemp(prefix="skellab-bench-")) / "tiny"
        build_dataset(root, preset_name="tiny", workers=1, progress=False)
    model = load_autoencoder(args.weights)
    store = MedSDF.open(root)
    sid = args.shape or store.ids(split="test")[0]
    latents, _ = encode_shapes(model, store, [sid])
    lat = latents[0]

    rows = []
    for res in args.resolutions:
        t0 = time.perf_counter()
        dense = decode_grid_dense(model, lat, res, chunk=args.chunk)
        t_dense = time.perf_counter() - t0
        t0 = time.perf_counter()
        guided = decode_grid_guided(model, lat, res, chunk=args.chunk)
        t_guided = time.perf_counter() - t0
        t0 = time.perf_counter()
        band = decode_grid_guided(model, lat, res, chunk=args.chunk, coarse=32, narrow=None)
        t_band = time.perf_counter() - t0
        vd, fd = extract_mesh(dense)
        vg, fg = extract_mesh(guided)
        vb, fb = extract_mesh(band)
        same_topology = vd.shape == vg.shape and np.array_equal(fd, fg)
        band_same = vd.shape == vb.shape and np.array_equal(fd, fb)
        row = {
            "resolution": res,
            "dense_queries": dense.num_queries,
            "guided_queries": guided.num_queries,
            "query_ratio": guided.num_queries / dense.num_queries,
            "dense_seconds": t_dense,
            "guided_seconds": t_guided,
            "speedup": t_dense / t_guided,
            "cd_vertices": chamfer_distance(vd, vg, convention="pointflow"),
            "identical_faces": bool(same_topology),
            "max_vertex_diff": float(np.abs(vd - vg).max()) if same_topology else None,
            "sign_mismatches": int(((dense.values < 0) != (guided.values < 0)).sum()),
            "faces": int(len(fd)),
            "band_queries": band.num_queries,
            "band_seconds": t_band,
            "guided_vs_band_query_ratio": band.num_queries / guided.num_queries,
            "guided_vs_band_speedup": t_band / t_guided,
            "band_identical_faces": bool(band_same),
            "band_sign_mismatches": int(((dense.values < 0) != (band.values < 0)).sum()),
        }
        rows.append(row)
        print(json.dumps(row), flush=True)

    result = {
        "benchmark": "bench_decoding",
        "shape": sid,
        "dataset": str(root),
        "weights": str(args.weights or "shipped"),
        "device": "cpu",
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "machine": platform.processor() or platform.machine(),
        "chunk": args.chunk,
        "guided_settings": {k: decode_grid_guided.__kwdefaults__[k] for k in ("coarse", "safety", "band", "narrow")},
        "band_settings": {"coarse": 32, "safety": 1.5, "band": 0.5, "narrow": None},
        "results": rows,
    }
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
