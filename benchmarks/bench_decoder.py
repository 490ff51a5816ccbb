"""Decoder cost per query (one thread): global vs local attention vs the kernel decoder, fp32 vs bf16 where native.

    python benchmarks/bench_decoder.py [--queries 16384] [--repeats 3] [--out decoder.json]

The baseline is the shipped autoencoder's decoder (global attention to all K tokens, fp32); the
candidates are the same widths with ``decoder="local"`` and ``decoder="kernel"`` (``--kernel-neighbors``
nearest spheres, ``--kernel-width`` channels; random weights: the cost does not depend on them), and each in
bf16 autocast when this CPU multiplies bf16 natively (:func:`skellab.runtime.cpu_has_fast_bf16`;
forced bf16 on a CPU without it is reported too, as a warning of what not to do). Times are the
minimum over interleaved repeats, µs per query.

That synthetic workload (random spheres, queries uniform in the box) is the same for every decoder, but the kernel
decoder's cost depends on its input: most of it is choosing each query's nearest spheres, and ``torch.topk`` selects
faster when a few spheres are clearly nearest, as near a real surface. ``--data DIR`` therefore also times each
*shipped* decoder on its real workload: ``--shapes`` test shapes of different classes, encoded by that autoencoder,
and exactly the queries guided decoding at ``--resolution``³ asks of it for them (recorded, then replayed through
:func:`skellab.meshing.decode_points` in its chunks), fp32 and bf16, interleaved repeats:

    python benchmarks/bench_decoder.py --data medsdf-mini --shapes 5 --out decoder.json
"""

from __future__ import annotations

import argparse
import json
import platform
import time

import torch

import numpy as np

from skellab.autoencoder import Latent, SkeletalAutoencoder, encode_shapes, load_autoencoder
from skellab.data.medsdf import MedSDF
from skellab.meshing import decode_grid_guided, decode_points
from skellab.runtime import cpu_has_fast_bf16, inference_autocast
from skellab.weights import weights_path


def guided_queries(model: SkeletalAutoencoder, latent: Latent, resolution: int) -> np.ndarray:
    """The query points (n, 3) guided decoding at ``resolution``³ sends to ``model`` for ``latent``, in order."""
    seen: list[np.ndarray] = []
    decode = model.decode

    def recording(lat, q, **kw):
        seen.append(q[0].detach().cpu().numpy().copy())
        return decode(lat, q, **kw)

    model.decode = recording  # an instance attribute shadows the method for this one decode
    try:
        decode_grid_guided(model, latent, resolution)
    finally:
        del model.decode
    return np.concatenate(seen)


def real_workload(data: str, shapes: int, resolution: int, repeats: int) -> dict:
    """µs per query of each shipped decoder on its own guided-decoding queries of ``shapes`` encoded test shapes."""
    store = MedSDF.open(data)
    ids, classes = [], set()
    for sid in store.ids(split="test"):
        c = store.record(sid)["class"]
        if c not in classes and len(ids) < shapes:
            ids.append(sid)
            classes.add(c)
    work = {}
    for name in ("global", "kernel"):
        model = load_autoencoder(weights_path("autoencoder" if name == "global" else "autoencoder_kernel"))
        with torch.no_grad():
            lat, _ = encode_shapes(model, store, ids)
        work[name] = (model, lat, [guided_queries(model, lat[i], resolution) for i in range(len(ids))])
    times: dict[str, list[float]] = {}
    with torch.no_grad():
        for _ in range(repeats):
            for name, (model, lat, queries) in work.items():
                for prec in ("fp32", "bf16"):
                    t = time.perf_counter()
                    for i, q in enumerate(queries):
                        decode_points(model, lat[i], q, precision=prec)
                    n = sum(len(q) for q in queries)
                    times.setdefault(f"{name}/{prec}", []).append(1e6 * (time.perf_counter() - t) / n)
    best = {k: min(v) for k, v in times.items()}
    base = best["global/fp32"]
    return {"shapes": ids, "resolution": resolution,
            "queries": {name: [len(q) for q in w[2]] for name, w in work.items()},
            "us_per_query": best, "ratio_vs_global_fp32": {k: base / v for k, v in best.items()}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--queries", type=int, default=16384)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--neighbors", type=int, default=16, help="local attention: spheres per query")
    ap.add_argument("--kernel-neighbors", type=int, default=8, help="kernel decoder: spheres per query")
    ap.add_argument("--kernel-width", type=int, default=48, help="kernel decoder: channels per neighbour")
    ap.add_argument("--data", default=None, help="MedSDF folder: also time the shipped decoders on real workloads")
    ap.add_argument("--shapes", type=int, default=5, help="with --data: test shapes (one per class)")
    ap.add_argument("--resolution", type=int, default=128, help="with --data: guided-decoding grid")
    ap.add_argument("--out", default="decoder.json")
    args = ap.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    shipped = load_autoencoder()
    local = SkeletalAutoencoder(config=shipped.config.replace(decoder="local", decoder_neighbors=args.neighbors)).eval()
    kernel = SkeletalAutoencoder(config=shipped.config.replace(decoder="kernel", decoder_neighbors=args.kernel_neighbors,
                                                              kernel_width=args.kernel_width)).eval()
    g = torch.Generator().manual_seed(0)
    K = shipped.config.num_tokens
    lat = Latent.from_parts(torch.rand(1, K, 3, generator=g) * 1.6 - 0.8, torch.rand(1, K, generator=g) * 0.1 + 0.02,
                            torch.randn(1, K, shipped.config.feature_dim, generator=g))
    q = torch.rand(1, args.queries, 3, generator=g) * 2.2 - 1.1
    times: dict[str, list[float]] = {}
    with torch.no_grad():
        for _ in range(args.repeats):
            for name, model in (("global", shipped), ("local", local), ("kernel", kernel)):
                for prec in ("fp32", "bf16"):
                    with inference_autocast("cpu", prec):
                        t = time.perf_counter()
                        model.decode(lat, q, chunk=4096)
                        times.setdefault(f"{name}/{prec}", []).append(1e6 * (time.perf_counter() - t) / args.queries)
    best = {k: min(v) for k, v in times.items()}
    base = best["global/fp32"]
    report = {"cpu_has_fast_bf16": cpu_has_fast_bf16(), "machine": platform.machine(), "processor": platform.processor(),
              "torch": torch.__version__, "threads": 1, "queries": args.queries, "neighbors": args.neighbors,
              "kernel_neighbors": args.kernel_neighbors, "kernel_width": args.kernel_width,
              "us_per_query": best, "ratio_vs_global_fp32": {k: base / v for k, v in best.items()}}
    if args.data:
        report["real_workload"] = real_workload(args.data, args.shapes, args.resolution, args.repeats)
    with open(args.out, "w") as fh:
        json.dump(report, fh, indent=1)
    for k, v in best.items():
        print(f"{k:<14} {v:8.2f} µs/query   {base / v:5.2f}x vs global/fp32")
    if args.data:
        real = report["real_workload"]
        print(f"real workload: {len(real['shapes'])} test shapes, guided decoding at {args.resolution}³ "
              f"({sum(real['queries']['global']):,} / {sum(real['queries']['kernel']):,} queries)")
        for k, v in real["us_per_query"].items():
            print(f"{k:<14} {v:8.2f} µs/query   {real['ratio_vs_global_fp32'][k]:5.2f}x vs global/fp32")
    print(f"native bf16 on this CPU: {report['cpu_has_fast_bf16']}; wrote {args.out}")


if __name__ == "__main__":
    main()
