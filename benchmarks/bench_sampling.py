"""Latent sampling time of diffusion checkpoints side by side: one organ and a batch of 16, one thread.

    python benchmarks/bench_sampling.py --diffusion skellab/weights/diffusion.pt RUN/diffusion/model.pt \
        [--organ kidney] [--steps 20] [--batch 16] [--repeats 3] [--out sampling.json]

Every checkpoint samples the same organ with the same sampler (EDM Heun, ``--steps`` steps, i.e. 2·steps − 1
network calls; ``--guidance``, default ``DEFAULT_GUIDANCE``: at w = 1 each call is one conditional pass, at
w ≠ 0, 1 a conditional + unconditional pass). Runs are interleaved after one
warm-up of each, and the minimum over ``--repeats`` is reported, as seconds per call and per organ. The
first checkpoint is the baseline; ``ratio`` = its seconds / the candidate's (> 1: the candidate is faster).
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch

from skellab.diffusion import DEFAULT_GUIDANCE, load_diffusion
from skellab.runtime import make_generator, resolve_precision


def _parameters(model) -> int:
    """The sampler's parameters: the denoiser, and a two-stage model's feature stage (not the guide)."""
    nets = [model.denoiser] + ([model.features] if model.two_stage else [])
    return sum(p.numel() for net in nets for p in net.parameters())


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--diffusion", nargs="+", required=True, help="checkpoints; the first is the baseline")
    ap.add_argument("--organ", default="kidney")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--guidance", type=float, default=DEFAULT_GUIDANCE)
    ap.add_argument("--autoguidance", type=float, default=None,
                    help="weight of each checkpoint's guide network (default: its own; 1: off)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--precision", nargs="+", default=["auto"], choices=("auto", "fp32", "bf16"),
                    help="the denoisers' arithmetic; several: each checkpoint in each (default auto: bf16 where the "
                         "CPU has it natively)")
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    models = {path: load_diffusion(path, device="cpu") for path in args.diffusion}
    runs = [(path, prec) for prec in args.precision for path in models]  # the first run is the baseline
    times: dict[tuple[str, str], dict[int, list[float]]] = {r: {1: [], args.batch: []} for r in runs}
    for rep in range(args.repeats + 1):  # repeat 0 is the warm-up
        for path, prec in runs:
            for num in (1, args.batch):
                t0 = time.perf_counter()
                models[path].sample(num, class_index=args.organ, steps=args.steps, guidance=args.guidance,
                                    autoguidance=args.autoguidance, generator=make_generator(rep), precision=prec)
                if rep:
                    times[path, prec][num].append(time.perf_counter() - t0)
    base = runs[0]
    rows = {}
    for path, prec in runs:
        model = models[path]
        best = {num: min(v) for num, v in times[path, prec].items()}
        name = path if len(args.precision) == 1 else f"{path} [{prec}]"
        rows[name] = {"precision": resolve_precision("cpu", prec), "parameters": _parameters(model),
                      "autoguidance": model.guiding(args.autoguidance, args.organ)[1],
                      "guide_parameters": (model.guide_info or {}).get("parameters"),
                      "config": model.denoiser.config.to_dict(),
                      **({"feature_stage_config": model.features.config.to_dict(),
                          "feature_steps": model.feature_steps or args.steps} if model.two_stage else {}),
                      "seconds_one_organ": best[1], f"seconds_batch_{args.batch}": best[args.batch],
                      f"seconds_per_organ_batch_{args.batch}": best[args.batch] / args.batch,
                      "ratio_one_organ": min(times[base][1]) / best[1],
                      f"ratio_batch_{args.batch}": min(times[base][args.batch]) / best[args.batch]}
        print(f"{name}: {rows[name]['parameters'] / 1e6:.2f} M parameters, one organ {best[1]:.3f} s, batch of "
              f"{args.batch} {best[args.batch]:.3f} s ({best[args.batch] / args.batch:.3f} s per organ)")
    report = {"benchmark": "sampling", "organ": args.organ, "steps": args.steps, "sampler": f"edm heun, guidance {args.guidance:g}",
              "threads": args.threads, "repeats": args.repeats, "torch": torch.__version__,
              "machine": platform.machine(), "baseline": f"{base[0]} [{base[1]}]", "checkpoints": rows}
    if args.out:
        Path(args.out).write_text(json.dumps(report, indent=1) + "\n")
    return report


if __name__ == "__main__":
    main()
