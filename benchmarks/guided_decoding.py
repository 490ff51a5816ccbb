"""Guided decoding, current vs previous settings, on autoencoder reconstructions of many shapes.

    python benchmarks/guided_decoding.py --data medsdf-mini --unseen --max-per-class 1 \
        --checkpoints skellab/weights/autoencoder.pt skellab/weights/autoencoder_kernel.pt --out guided.json

For each shape (the test fold's first ``--max-per-class`` shapes per class, and with ``--unseen`` every shape
of :func:`skellab.data.atlases.unseen_shapes`: real anatomy of classes never trained on and the thin-walled
perforated shells) and each checkpoint, the shape is encoded from its surface points as ``skellab
reconstruct`` does and decoded on a ``--resolution``³ grid twice, interleaved:

* **current**: ``decode_grid_guided``'s defaults (16³ first lattice, the interpolation bound ``narrow=1``
  and the repair pass);
* **previous**: ``coarse=32, narrow=None`` (every point of every cell that can hold surface is decoded).

Reported per shape and summed per checkpoint: decoder queries, wall seconds, grid points whose sign differs,
and whether marching cubes gives identical triangles (same faces, vertices within 1e-6).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch

from skellab.autoencoder import load_autoencoder
from skellab.data.atlases import unseen_shapes
from skellab.meshing import decode_grid_guided, extract_mesh
from skellab.pipeline import encode_shape
from skellab.runtime import atomic_path

sys.path.insert(0, str(Path(__file__).parent))
from fidelity import test_fold_shapes  # noqa: E402  (the same shape selection as the fidelity benchmark)

PREVIOUS = {"coarse": 32, "narrow": None}


def compare(model, shape, resolution: int) -> dict:
    known = model.config.class_conditioning and shape.organ in (model.classes or [])
    lat = encode_shape(model, shape, seed=0, organ=shape.organ if known else None)
    current = decode_grid_guided(model, lat, resolution)
    previous = decode_grid_guided(model, lat, resolution, **PREVIOUS)
    vc, fc = extract_mesh(current)
    vp, fp = extract_mesh(previous)
    same_faces = bool(fc.shape == fp.shape and np.array_equal(fc, fp))
    diff = float(np.abs(vc - vp).max()) if same_faces else None
    return {"class": shape.organ, "id": shape.shape_id, "queries_current": current.num_queries,
            "queries_previous": previous.num_queries, "seconds_current": current.seconds,
            "seconds_previous": previous.seconds,
            "sign_mismatches": int(((current.values < 0) != (previous.values < 0)).sum()),
            "identical_mesh": same_faces and diff <= 1e-6, "max_vertex_diff": diff}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", required=True, help="MedSDF folder: its test fold's shapes")
    ap.add_argument("--checkpoints", nargs="+", default=[None], help="autoencoder checkpoints (default: shipped)")
    ap.add_argument("--unseen", action="store_true", help="also every shape of classes never trained on")
    ap.add_argument("--max-per-class", type=int, default=1)
    ap.add_argument("--resolution", type=int, default=128)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    shapes = test_fold_shapes(args.data, args.max_per_class)
    if args.unseen:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # a missing optional source is skipped
            shapes = unseen_shapes() + shapes
    t0 = time.perf_counter()
    result: dict = {"benchmark": "guided_decoding", "resolution": args.resolution, "threads": args.threads,
                    "current": {k: decode_grid_guided.__kwdefaults__[k] for k in ("coarse", "safety", "band", "narrow")},
                    "previous": PREVIOUS, "torch": torch.__version__, "machine": platform.machine(), "models": {}}
    for ck in args.checkpoints:
        model = load_autoencoder(ck)
        rows = []
        for shape in shapes:
            rows.append(compare(model, shape, args.resolution))
            print(json.dumps(rows[-1]), flush=True)
        summary = {"shapes": len(rows), "identical_meshes": sum(r["identical_mesh"] for r in rows),
                   "sign_mismatches": sum(r["sign_mismatches"] for r in rows),
                   "query_ratio": sum(r["queries_previous"] for r in rows) / sum(r["queries_current"] for r in rows),
                   "min_query_ratio": min(r["queries_previous"] / r["queries_current"] for r in rows),
                   "speedup": sum(r["seconds_previous"] for r in rows) / sum(r["seconds_current"] for r in rows),
                   "mean_queries_current": float(np.mean([r["queries_current"] for r in rows])),
                   "mean_queries_previous": float(np.mean([r["queries_previous"] for r in rows]))}
        print(f"{ck or 'shipped'}: {json.dumps(summary)}", flush=True)
        result["models"][str(ck or "shipped")] = {"summary": summary, "shapes": rows}
    result["seconds"] = time.perf_counter() - t0
    if args.out:
        with atomic_path(args.out) as tmp:
            Path(tmp).write_text(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
