"""Decoder cost per query (one thread): global vs local attention vs the kernel decoder, fp32 vs bf16 where native.

    python benchmarks/bench_decoder.py [--queries 16384] [--repeats 3] [--out decoder.json]

The baseline is the shipped autoencoder's decoder (global attention to all K tokens, fp32); the
candidates are the same widths with ``decoder="local"`` and ``decoder="kernel"`` (``--kernel-neighbors``
nearest spheres, ``--kernel-width`` channels; random weights: the cost does not depend on them), and each in
bf16 autocast when this CPU multiplies bf16 natively (:func:`skellab.runtime.cpu_has_fast_bf16`;
forced bf16 on a CPU without it is reported too, as a warning of what not to do). Times are the
minimum over interleaved repeats, µs per query.
"""

from __future__ import annotations

import argparse
import json
import platform
import time

import torch

from skellab.autoencoder import Latent, SkeletalAutoencoder, load_autoencoder
from skellab.runtime import cpu_has_fast_bf16, inference_autocast


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--queries", type=int, default=16384)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--neighbors", type=int, default=16, help="local attention: spheres per query")
    ap.add_argument("--kernel-neighbors", type=int, default=8, help="kernel decoder: spheres per query")
    ap.add_argument("--kernel-width", type=int, default=48, help="kernel decoder: channels per neighbour")
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
    with open(args.out, "w") as fh:
        json.dump(report, fh, indent=1)
    for k, v in best.items():
        print(f"{k:<14} {v:8.2f} µs/query   {base / v:5.2f}x vs global/fp32")
    print(f"native bf16 on this CPU: {report['cpu_has_fast_bf16']}; wrote {args.out}")


if __name__ == "__main__":
    main()
