"""Arguments of ``skellab train`` and ``python -m skellab.train`` (the ``torchrun`` entry point)."""

from __future__ import annotations

import argparse
import json
import os
from typing import Any, Sequence

import torch

from ..errors import SkellabError
from ..train.stages import train_stage
from .common import Parser, add_debug_flag, positive_int, run_command, seed_arg


def _override(text: str) -> tuple[str, str]:
    """``FIELD=VALUE`` → (field, value text); the preset parses and checks the text against the field's type."""
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"expected FIELD=VALUE, got {text!r}")
    key, raw = text.split("=", 1)
    return key.strip(), raw


def add_train_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("stage", choices=["skeleton", "autoencoder", "diffusion", "all"],
                   help="what to train ('all': [skeleton →] autoencoder → diffusion)")
    p.add_argument("--data", required=True, help="MedSDF dataset folder")
    p.add_argument("--out", required=True, help="run folder (one sub-folder per stage)")
    p.add_argument("--preset", default="tiny", help="tiny (a CPU minute) or default (the shipped recipe)")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda")
    p.add_argument("--max-steps", type=positive_int, default=None, help="replace the preset's number of steps")
    p.add_argument("--resume", action="store_true", help="continue from the stage's checkpoint.pt")
    p.add_argument("--seed", type=seed_arg, default=0)
    p.add_argument("--autoencoder", default=None, help="diffusion: frozen autoencoder (default RUN/autoencoder/model.pt)")
    p.add_argument("--skeleton-method", default="medial", choices=["medial", "learned", "contraction", "thinning"],
                   help="autoencoder: skeletons for the tokens ('learned' uses RUN/skeleton/model.pt)")
    p.add_argument("--skeleton-checkpoint", default=None, help="learned skeleton weights (default RUN/skeleton/model.pt)")
    p.add_argument("--finetune", default=None, metavar="CKPT",
                   help="autoencoder: start from CKPT and train its decoder only (its latents stay), e.g. with "
                        "--set sphere_noise=0.05")
    p.add_argument("--set", dest="overrides", type=_override, action="append", default=[], metavar="FIELD=VALUE",
                   help="override a model or engine config field, e.g. --set batch_size=64 (repeatable)")
    p.add_argument("--threads", type=positive_int, default=None, help="torch CPU threads per process")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def run_train(args: argparse.Namespace) -> int:
    overrides = dict(args.overrides)
    if args.finetune is not None and args.stage != "autoencoder":  # before any work, `all` included
        raise SkellabError("--finetune applies to the autoencoder stage only (skellab train autoencoder)")
    if args.threads:
        torch.set_num_threads(args.threads)
    stages = [args.stage] if args.stage != "all" else (
        (["skeleton"] if args.skeleton_method == "learned" else []) + ["autoencoder", "diffusion"])
    rank = int(os.environ.get("RANK", "0"))
    for stage in stages:
        kw: dict[str, Any] = dict(overrides)
        if stage == "autoencoder":
            kw.update(skeleton_method=args.skeleton_method, skeleton_checkpoint=args.skeleton_checkpoint,
                      finetune=args.finetune)
        if stage == "diffusion":
            kw["autoencoder"] = args.autoencoder
        res = train_stage(stage, args.data, args.out, preset=args.preset, device=args.device, max_steps=args.max_steps,
                          resume=args.resume, seed=args.seed, progress=not args.quiet, **kw)
        if rank == 0:
            last = res.history[-1] if res.history else {}
            val = {k: v for k, v in last.items() if k.startswith("val_")}
            print(f"{stage}: {res.step} steps (resumed from {res.resumed_from}) in {res.seconds:.1f} s; "
                  f"loss {last.get('loss', float('nan')):.4g}"
                  + (f"; {json.dumps({k: round(v, 6) for k, v in val.items()})}" if val else "")
                  + f" → {res.model_path}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m skellab.train STAGE --data DIR --out RUN ...`` (what ``torchrun`` launches)."""
    p = Parser(prog="python -m skellab.train", description="train a skellab stage (torchrun-compatible)")
    add_train_arguments(p)
    add_debug_flag(p)
    args = p.parse_args(argv)
    return run_command(run_train, args)
