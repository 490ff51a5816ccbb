"""Reconstruction quality of an autoencoder checkpoint on a MedSDF split (the model-card numbers).

    python benchmarks/eval_autoencoder.py --data medsdf-mini --out ae_eval.json [--checkpoint PATH]
        [--exclude-train-of medsdf-fidelity]   # leave out test shapes another dataset trained on

Two point budgets, named distinctly: the paper/PointFlow-style metrics on 2,048 surface points
per shape (CD both conventions, EMD, F1@0.02/0.06 — with 2,048 points the sampling floor itself
limits F1@0.02, so it is reported too), and dense F1@0.02/0.06 + CD on 30,000 points, where the
sampling floor is negligible. Normalised frame, guided decoding at --resolution.
"""

from __future__ import annotations

import argparse
import json
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch

from skellab.autoencoder import encode_shapes, load_autoencoder
from skellab.data.medsdf import MedSDF, ids_unseen_by
from skellab.evaluation import evaluate_autoencoder
from skellab.meshing import decode_grid_guided, extract_mesh
from skellab.metrics import reconstruction_metrics


def dense_metrics(model, root: str, ids: list[str], resolution: int, n: int) -> dict:
    store = MedSDF.open(root)
    latents, ids = encode_shapes(model, store, ids)
    per_class = defaultdict(list)
    for i, sid in enumerate(ids):
        ref = store.shape(sid)
        mesh = extract_mesh(decode_grid_guided(model, latents[i:i + 1], resolution))
        row = reconstruction_metrics(mesh, ref, n=n, seed=0, with_emd=False)
        per_class[ref.organ].append(row)
    keys = ("cd_pointflow", "f1@0.02", "f1@0.06")
    out = {c: {k: float(np.mean([r[k] for r in rows])) for k in keys} | {"shapes": len(rows)}
           for c, rows in sorted(per_class.items())}
    allrows = [r for rows in per_class.values() for r in rows]
    out["mean"] = {k: float(np.mean([r[k] for r in allrows])) for k in keys} | {"shapes": len(allrows)}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True)
    ap.add_argument("--checkpoint", default=None, help="default: the shipped autoencoder")
    ap.add_argument("--split", default="test")
    ap.add_argument("--resolution", type=int, default=128)
    ap.add_argument("--dense-points", type=int, default=30000)
    ap.add_argument("--exclude-train-of", nargs="*", default=[], metavar="DIR",
                    help="leave out shapes in the train/val split of these datasets (e.g. medsdf-fidelity)")
    ap.add_argument("--out", default="ae_eval.json")
    args = ap.parse_args()
    torch.set_num_threads(1)
    model = load_autoencoder(args.checkpoint)
    t0 = time.perf_counter()
    ids = ids_unseen_by(args.data, args.split, args.exclude_train_of)
    sparse = evaluate_autoencoder(model, args.data, split=args.split, ids=ids, resolution=args.resolution, n=2048)
    sparse.pop("shapes")
    dense = dense_metrics(model, args.data, ids, args.resolution, args.dense_points)
    report = {"checkpoint": args.checkpoint or "shipped", "config": model.config.to_dict(), "split": args.split,
              "excludes_train_of": list(args.exclude_train_of), "shapes": len(ids),
              "resolution": args.resolution, "points_2048": sparse,
              f"points_{args.dense_points}": dense, "seconds": round(time.perf_counter() - t0, 1)}
    Path(args.out).write_text(json.dumps(report, indent=1))
    print(json.dumps({"mean_2048": sparse["mean"], "floor_2048": sparse["floor_mean"], "mean_dense": dense["mean"]},
                     indent=1))


if __name__ == "__main__":
    main()
