"""Interpolation topology and slider latency with the shipped autoencoder.

    python benchmarks/bench_interpolation.py --data medsdf-mini --out interpolation.json

1. For ``--pairs`` random pairs of test-fold shapes × ``--steps`` steps (tokens matched by
   Hungarian assignment), the fraction of decoded meshes that are watertight and single-component.
   ``--different-topology`` draws only pairs whose meshes have different Euler numbers (e.g. a
   vascular ring and a kidney), the hard case; ``--checkpoint`` picks the autoencoder.
2. Slider latency: time per slider step of the interpolation widget's preview decode
   (``--preview-resolution``), the number a user dragging the slider feels on this CPU.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from skellab.autoencoder import encode_shapes, load_autoencoder
from skellab.data.medsdf import MedSDF
from skellab.interpolation import interpolate_meshes


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True)
    ap.add_argument("--pairs", type=int, default=10)
    ap.add_argument("--steps", type=int, default=7)
    ap.add_argument("--resolution", type=int, default=96)
    ap.add_argument("--preview-resolution", type=int, default=24)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--checkpoint", default=None, help="autoencoder checkpoint (default: the shipped one)")
    ap.add_argument("--different-topology", action="store_true", help="only pairs with different Euler numbers")
    ap.add_argument("--no-slider", action="store_true", help="skip the slider-latency part")
    ap.add_argument("--connect", type=float, default=None, metavar="MARGIN",
                    help="also decode every pair with islands of spheres joined at this overlap margin "
                         "(interpolate_meshes(connect=...)) and report both, same pairs, same run")
    ap.add_argument("--out", default="interpolation.json")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    model = load_autoencoder(args.checkpoint)
    store = MedSDF.open(args.data)
    latents, ids = encode_shapes(model, store, split="test")
    euler = [store.record(i)["euler_number"] for i in ids]
    rng = np.random.default_rng(args.seed)
    pairs: list[tuple] = []
    while len(pairs) < args.pairs:
        a, b = rng.choice(len(ids), size=2, replace=False)
        if not args.different_topology or euler[a] != euler[b]:
            pairs.append((a, b))
    rows = []
    for a, b in pairs:
        row = {"a": ids[a], "b": ids[b]}
        for key, margin in [("", None)] + ([("connected_", args.connect)] if args.connect is not None else []):
            meshes = interpolate_meshes(model, latents[int(a):int(a) + 1], latents[int(b):int(b) + 1], args.steps,
                                        args.resolution, connect=margin)
            row[key + "watertight"] = [bool(m.watertight) for m in meshes]
            row[key + "components"] = [int(m.components) for m in meshes]
        rows.append(row)
    total = len(rows) * args.steps
    ok = sum(w and c == 1 for r in rows for w, c in zip(r["watertight"], r["components"]))
    extra = {}
    if args.connect is not None:
        extra = {"connect": args.connect, "connected_watertight_single_component_fraction": sum(
            w and c == 1 for r in rows for w, c in zip(r["connected_watertight"], r["connected_components"])) / total}
    report = {
        "benchmark": "interpolation", "split": "test", "pairs": len(rows), "steps": args.steps,
        "checkpoint": str(args.checkpoint or "shipped"), "different_topology": args.different_topology,
        "resolution": args.resolution, "torch_threads": args.threads,
        "watertight_single_component_fraction": ok / total, "meshes": total,
        "watertight_fraction": sum(w for r in rows for w in r["watertight"]) / total,
        "single_component_fraction": sum(c == 1 for r in rows for c in r["components"]) / total, **extra,
        "rows": rows,
    }
    if not args.no_slider:
        report["slider_preview_ms"] = _slider(model, ids, latents, pairs[0], args)
    Path(args.out).write_text(json.dumps(report, indent=1))
    print(json.dumps({k: v for k, v in report.items() if k != "rows"}, indent=1))


def _slider(model, ids, latents, pair, args) -> dict:
    from skellab.views.autoencoder_views import interpolation_widget

    a, b = pair
    widget = interpolation_widget(model, {ids[a]: latents[int(a):int(a) + 1], ids[b]: latents[int(b):int(b) + 1]},
                                  steps=11, preview_resolution=args.preview_resolution,
                                  full_resolution=args.resolution)
    times = []
    for k in range(1, 11):
        t0 = time.perf_counter()
        widget.set_t(k / 10)  # one slider step: interpolate (cached) + preview decode + in-place mesh update
        times.append(1e3 * (time.perf_counter() - t0))
    return {"resolution": args.preview_resolution, "median": statistics.median(times), "max": max(times),
            "all": [round(t, 1) for t in times]}


if __name__ == "__main__":
    main()
