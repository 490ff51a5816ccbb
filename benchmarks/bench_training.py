"""Benchmark: what the training engine costs per step, against a bare loop doing the same work.

For each stage (autoencoder, diffusion) the same task, model and batches are trained three ways,
interleaved in the same run:

* ``bare forward+backward``  — pre-built batches; ``loss = task.compute_loss(model, batch)``,
  ``backward()``, ``optimizer.step()``: nothing else;
* ``bare loop with batching`` — the same, plus assembling each batch with ``task.make_batch``
  (the data pipeline every training loop needs);
* ``engine``                  — :func:`skellab.train.fit`: sampler, per-step seeding, LR schedule,
  gradient clipping, EMA (diffusion), loss bookkeeping, CSV log, tqdm disabled; seconds per step
  from the differences of its own log's ``seconds`` column, the first steps dropped as warm-up.

``overhead`` = engine / bare loop with batching − 1 (aim ≤ 0.20); ``overhead_vs_fwd_bwd`` =
engine / bare forward+backward − 1 (includes the data pipeline). Medians over steps and repeats.

    python benchmarks/bench_training.py --out training.json [--quick] [--dataset DIR] [--threads 1]

Without ``--dataset`` the autoencoder stage builds the tiny MedSDF in a temporary folder.
The autoencoder uses the shipped (default) architecture and batch; the diffusion stage uses the
default preset's denoiser and batch on synthetic latents of the shipped shape (K = 256, D = 16).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

if importlib.util.find_spec("skellab") is None:  # a checkout that is not installed: use its sources
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _bare(task, cfg, steps: int, *, batching: bool) -> list[float]:
    from skellab.train import StepSampler

    dev = torch.device("cpu")
    task.prepare(None, dev, None, False)
    torch.manual_seed(cfg.seed)
    model = task.build_model().to(dev).train()
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    sampler = StepSampler(task.num_items(), cfg.batch_size, seed=cfg.seed)
    batches = None if batching else [task.make_batch(*sampler.local_batch(s), s, dev) for s in range(steps)]
    times = []
    for s in range(steps):
        t0 = time.perf_counter()
        batch = task.make_batch(*sampler.local_batch(s), s, dev) if batching else batches[s]
        loss = task.compute_loss(model, batch)["total"]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        times.append(time.perf_counter() - t0)
    return times


def _engine(task, cfg, steps: int) -> list[float]:
    from skellab.train import fit

    with tempfile.TemporaryDirectory() as tmp:
        res = fit(task, cfg.replace(steps=steps, val_every=0, checkpoint_every=0), out=tmp, device="cpu",
                  progress=False)
    secs = [r["seconds"] for r in res.history]
    # the last step also validates and writes the final checkpoint: not a per-step cost
    return list(np.diff(secs[:-1])) if len(secs) > 2 else secs


def _tasks(dataset: str | None, quick: bool, seed: int = 0):
    from skellab.diffusion.denoiser import DenoiserConfig, TokenDenoiser
    from skellab.diffusion.schedulers import make_scheduler
    from skellab.train import stage_config
    from skellab.train.tasks import AutoencoderTask, DenoisingTask

    out = []
    if dataset is not None:
        ae = stage_config("autoencoder", "tiny" if quick else "default")
        out.append(("autoencoder", AutoencoderTask(dataset, ae.model, ae.sampling, seed=seed,
                                                   val_batch_size=ae.engine.batch_size), ae.engine.replace(seed=seed)))
    engine = stage_config("diffusion", "tiny" if quick else "default").engine
    g = torch.Generator().manual_seed(seed)
    lat = torch.randn(64, 256, 16, generator=g)
    cls = torch.arange(64) % 4
    cfg = DenoiserConfig.tiny(token_dim=16, num_classes=4)
    out.append(("diffusion", DenoisingTask(lat, cls, make_scheduler("edm"), lambda: TokenDenoiser(config=cfg),
                                           class_dropout=cfg.class_dropout, seed=seed), engine.replace(seed=seed)))
    return out


def measure(*, quick: bool = False, threads: int | None = 1, dataset: str | None = None) -> dict[str, Any]:
    """Per-stage seconds per step: bare forward+backward, bare loop with batching, engine; overheads."""
    if threads:
        torch.set_num_threads(int(threads))
    tmp = None
    if dataset is None:
        from skellab.data.build import build_dataset

        tmp = tempfile.TemporaryDirectory()
        dataset = str(build_dataset(Path(tmp.name) / "tiny", preset_name="tiny", workers=1, progress=False).parent)
    steps, repeats, warm = (12, 1, 2) if quick else (40, 3, 5)
    stages = []
    try:
        for name, task, cfg in _tasks(dataset, quick):
            fb, lb, en = [], [], []
            _bare(task, cfg, 3, batching=True)  # warm-up (caches, allocator)
            for _ in range(repeats):  # interleaved, so drifting machine load hits all three alike
                fb += _bare(task, cfg, steps, batching=False)[warm:]
                lb += _bare(task, cfg, steps, batching=True)[warm:]
                en += _engine(task, cfg, steps)[warm:]
            f, b, e = statistics.median(fb), statistics.median(lb), statistics.median(en)
            stages.append({
                "name": f"training_overhead_{name}", "stage": name,
                "baseline": "bare loop: make_batch + forward + backward + optimizer step",
                "candidate": "skellab.train.fit (sampler, seeding, LR schedule, clipping, EMA, logs)",
                "batch_size": cfg.batch_size, "steps_timed": len(en),
                "bare_fwd_bwd_seconds_per_step": f, "baseline_seconds_per_step": b,
                "candidate_seconds_per_step": e, "overhead": e / b - 1, "overhead_vs_fwd_bwd": e / f - 1,
                "aim": "overhead <= 0.20",
            })
    finally:
        if tmp is not None:
            tmp.cleanup()
    return {"name": "training_overhead", "threads": torch.get_num_threads(), "quick": quick, "stages": stages}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dataset", default=None, help="MedSDF folder (default: build the tiny preset in a temp dir)")
    ap.add_argument("--quick", action="store_true", help="tiny presets, few steps (seconds)")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads (0: leave as is)")
    ap.add_argument("--out", default=None, help="write the JSON result here")
    args = ap.parse_args(argv)
    result = measure(quick=args.quick, threads=args.threads or None, dataset=args.dataset)
    for s in result["stages"]:
        print(f"{s['stage']:12s} fwd+bwd {1e3 * s['bare_fwd_bwd_seconds_per_step']:8.1f} ms  "
              f"loop {1e3 * s['baseline_seconds_per_step']:8.1f} ms  engine {1e3 * s['candidate_seconds_per_step']:8.1f} ms"
              f"  overhead {100 * s['overhead']:+.1f}%  (vs fwd+bwd {100 * s['overhead_vs_fwd_bwd']:+.1f}%)")
    if args.out:
        from skellab.runtime import atomic_path

        with atomic_path(args.out) as tmp:
            tmp.write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main()
