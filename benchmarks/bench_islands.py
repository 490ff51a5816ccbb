"""Islands of skeletal spheres: encoded training shapes vs sampled token sets, and what ``connect`` moves.

    python benchmarks/bench_islands.py --data medsdf-mini --out islands.json [--organs vessel_tree airway_tree] [--n 8]

1. Encoded shapes (every ``--every``-th training shape, shipped autoencoder): overlap components of the
   sphere union (|c_i − c_j| ≤ r_i + r_j), per class, and for each margin m how many shapes
   :func:`skellab.skeleton.connect.connect_spheres` would change at all, with the largest move.
2. Sampled token sets (shipped diffusion model, ``--n`` per organ, raw: ``connect=None``): overlap
   components, and the decoded mesh's pieces raw vs joined at the default margin (``--resolution``³,
   whole meshes, specks below one grid cell dropped).
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch

from skellab.autoencoder import encode_shapes
from skellab.data.medsdf import MedSDF
from skellab.generation import (
    CONNECT_OVERLAP,
    connect_latents,
    decode_organ,
    generate_from_models,
    load_generation_models,
)
from skellab.skeleton.connect import connect_spheres, overlap_components


def _pieces(centers: torch.Tensor, radii: torch.Tensor) -> int:
    return int(overlap_components(centers, radii.clamp_min(0)).max() + 1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", required=True)
    ap.add_argument("--organs", nargs="+", default=["vessel_tree", "airway_tree", "colon"])
    ap.add_argument("--n", type=int, default=8, help="sampled organs per class")
    ap.add_argument("--every", type=int, default=4, help="encode every k-th training shape")
    ap.add_argument("--margins", type=float, nargs="+", default=[0.0, 0.1, 0.3])
    ap.add_argument("--resolution", type=int, default=128)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--seed", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default="islands.json")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    diffusion, autoencoder = load_generation_models()
    store = MedSDF.open(args.data)

    ids = store.ids(split="train")[:: args.every]
    latents, ids = encode_shapes(autoencoder, store, ids)
    encoded: dict = {"shapes": len(ids), "per_class": defaultdict(lambda: {"shapes": 0, "with_islands": 0}),
                     "margins": {}}
    for i, sid in enumerate(ids):
        row = encoded["per_class"][store.record(sid)["class"]]
        row["shapes"] += 1
        row["with_islands"] += int(_pieces(latents.centers[i], latents.radii[i]) > 1)
    for m in args.margins:
        moved, shift = [], []
        for i in range(len(ids)):
            _, info = connect_spheres(latents.centers[i], latents.radii[i].clamp_min(0), overlap=m)
            moved.append(info["spheres_moved"])
            shift.append(info["max_shift"])
        encoded["margins"][str(m)] = {"shapes_changed": float(np.mean(np.array(moved) > 0)),
                                      "mean_spheres_moved": float(np.mean(moved)),
                                      "max_shift_p95": float(np.percentile(shift, 95))}
    encoded["per_class"] = dict(encoded["per_class"])

    sampled = {}
    for organ in args.organs:
        raw = generate_from_models(diffusion, autoencoder, organ, args.n, steps=args.steps, seed=args.seed,
                                   decode=False, connect=None)
        joined, infos = connect_latents(raw, CONNECT_OVERLAP)
        rows = []
        for i in range(args.n):
            mesh = {name: decode_organ(autoencoder, lat[i], organ=organ, index=i, resolution=args.resolution,
                                       largest_component=False).components for name, lat in (("raw", raw),
                                                                                              ("joined", joined))}
            rows.append({"overlap_components": _pieces(raw.centers[i], raw.radii[i]),
                         "mesh_pieces_raw": mesh["raw"], "mesh_pieces_joined": mesh["joined"],
                         "islands_moved": infos[i]["islands"], "max_shift": infos[i]["max_shift"]})
        sampled[organ] = {"rows": rows, **{k: [r[k] for r in rows] for k in rows[0]}}
        print(organ, {k: v for k, v in sampled[organ].items() if k != "rows"}, flush=True)

    report = {"benchmark": "islands", "data": str(args.data), "every": args.every, "connect_default": CONNECT_OVERLAP,
              "resolution": args.resolution, "steps": args.steps, "seed": args.seed, "torch_threads": args.threads,
              "encoded": encoded, "sampled": sampled}
    Path(args.out).write_text(json.dumps(report, indent=1))
    print(json.dumps(encoded, indent=1))


if __name__ == "__main__":
    main()
