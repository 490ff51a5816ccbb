"""Turn a trained run into shipped weights: ``skellab/weights/<name>.pt`` + its ``<name>.json`` index.

The index records what a model card needs: format, sha256, size, config, classes, the training
recipe and compute (from the run's ``summary.json`` and ``log.csv``), and metrics (measured
afterwards and merged in with :func:`add_metrics`).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch

from ..checkpoint import stored_weights, write_checkpoint
from ..diffusion import (attach_guide, classes_present, join_stages, load_diffusion, save_diffusion,
                         with_class_autoguidance)
from ..errors import SkellabError
from ..runtime import atomic_path
from ..weights import WEIGHTS_DIR
from .engine import read_log
from .tasks import file_sha256

__all__ = ["release_weights", "add_metrics", "release_guide", "release_feature_stage", "release_class_autoguidance"]


def release_weights(run: str | os.PathLike, stage: str, name: str, *, weights_dir: str | os.PathLike = WEIGHTS_DIR,
                    dataset_name: str | None = None, command: str | None = None,
                    extra: dict[str, Any] | None = None, storage: str = "fp32") -> dict[str, Any]:
    """Copy ``run/<stage>/model.pt`` to ``weights_dir/<name>.pt`` and write ``<name>.json``; return the index.

    ``storage="bf16"`` ships the weights rounded to bfloat16 (half the bytes; :func:`skellab.checkpoint.stored_weights`);
    the index records it as ``"storage"``."""
    src = Path(run) / stage / "model.pt"
    summary_path = Path(run) / stage / "summary.json"
    if not src.is_file() or not summary_path.is_file():
        raise SkellabError(f"{Path(run) / stage}: no finished run (model.pt and summary.json are written at the end)")
    payload = torch.load(src, map_location="cpu", weights_only=True)
    summary = json.loads(summary_path.read_text())
    rows = read_log(Path(run) / stage / "log.csv")
    dst = Path(weights_dir) / f"{name}.pt"
    if storage != "fp32":
        payload["state_dict"] = stored_weights(payload["state_dict"], storage)
    if _add_trained_classes(payload, Path(run) / stage / "latents.pt") or storage != "fp32":
        write_checkpoint(dst, payload)
    else:
        with atomic_path(dst) as tmp:
            shutil.copyfile(src, tmp)
    val = _validation(rows)
    index = {
        "name": name, "file": dst.name, "format": payload.get("format"), "sha256": file_sha256(dst),
        "bytes": dst.stat().st_size, "storage": storage,
        "parameters": sum(int(v.numel()) for v in payload["state_dict"].values()),
        "config": payload.get("config"), "classes": payload.get("classes"),
        **({"trained_classes": payload["trained_classes"]} if payload.get("trained_classes") is not None
           else {}),
        "training": {
            "stage": stage, "dataset": dataset_name, "data_fingerprint": summary.get("data"),
            "engine": summary.get("engine"), "task": summary.get("task"), "steps": summary.get("steps"),
            "device": summary.get("device"), "world_size": summary.get("world_size"), "bf16": summary.get("bf16"),
            "wall_seconds": summary.get("seconds_total"), "torch": summary.get("torch"),
            "torch_threads": torch.get_num_threads(), "final_train_loss_mean_last50": summary["metrics"].get("train_loss"),
            "validation": val, "command": command, **(extra or {}),
        },
        "metrics": {k: v for k, v in summary.get("metrics", {}).items()},
    }
    for key in ("scheduler", "num_tokens"):
        if key in payload:
            index[key] = payload[key]
    with atomic_path(dst.with_suffix(".json")) as tmp:
        tmp.write_text(json.dumps(index, indent=1, default=str) + "\n")
    return index


def _validation(rows: list[dict[str, Any]]) -> dict[str, list]:
    """The validation curves of a run's log rows: {"val_…": [(step, value), …]} (NaN rows skipped)."""
    return {k: [(r["step"], r[k]) for r in rows if r.get(k) == r.get(k)] for k in (rows[-1] if rows else {})
            if k.startswith("val_")}


def release_feature_stage(name: str, run: str | os.PathLike, *, weights_dir: str | os.PathLike = WEIGHTS_DIR,
                          command: str | None = None, storage: str = "fp32", export: str = "model.pt",
                          feature_steps: int | None = None) -> dict[str, Any]:
    """Join the feature stage trained in ``run/diffusion/`` (``--set channels=features``) into the sphere stage
    shipped as ``weights_dir/<name>.pt`` (:func:`release_weights` of a ``channels=spheres`` run; a guide, if already
    attached, stays): the checkpoint is rewritten atomically as one two-stage model
    (:func:`skellab.diffusion.join_stages`) and ``<name>.json`` gets the new sha256 and size and a ``features``
    entry (config, parameters, the export's step and metrics, the run's training record and validation curve).
    ``export``: the run's final ``model.pt`` or one of its step exports (``model_step2000.pt``); ``feature_steps``: the
    feature stage's sampler steps (:attr:`skellab.diffusion.LatentDiffusion.feature_steps`). Returns the index."""
    src = Path(run) / "diffusion"
    if not (src / export).is_file() or not (src / "summary.json").is_file():
        raise SkellabError(f"{src}: no finished run with {export} (model.pt and summary.json are written at the end)")
    dst = Path(weights_dir) / f"{name}.pt"
    features = load_diffusion(src / export)
    joined = join_stages(load_diffusion(dst), features, feature_steps=feature_steps)
    save_diffusion(dst, joined, storage=storage)
    summary = json.loads((src / "summary.json").read_text())
    path = dst.with_suffix(".json")
    index = json.loads(path.read_text())
    index.update(sha256=file_sha256(dst), bytes=dst.stat().st_size, storage=storage, features={
        "config": joined.features.config.to_dict(), "parameters": sum(p.numel() for p in joined.features.parameters()),
        "sampler_steps": feature_steps, "source": export, "source_sha256": file_sha256(src / export), "step": features.info.get("step"),
        "export_metrics": features.info.get("metrics"),
        "training": {"engine": summary.get("engine"), "task": summary.get("task"), "steps": summary.get("steps"),
                     "data_fingerprint": summary.get("data"), "bf16": summary.get("bf16"),
                     "wall_seconds": summary.get("seconds_total"), "command": command,
                     "validation": _validation(read_log(src / "log.csv"))},
        "metrics": summary.get("metrics", {})})
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(index, indent=1, default=str) + "\n")
    return index


def _add_trained_classes(payload: dict[str, Any], latents: Path) -> bool:
    """A diffusion checkpoint written before it recorded ``trained_classes``: add them from the run's cached
    training latents (the classes with at least one latent). True when ``payload`` changed."""
    classes = payload.get("classes")
    if "trained_classes" in payload or not classes or not latents.is_file() or "normalizer" not in payload:
        return False
    cache = torch.load(latents, map_location="cpu", weights_only=True)
    index = (cache.get("train") or {}).get("class_index") if isinstance(cache, dict) else None
    if index is None or list(cache.get("classes") or []) != list(classes):
        return False
    payload["trained_classes"] = classes_present(classes, index)
    return True


def add_metrics(name: str, metrics: dict[str, Any], *, weights_dir: str | os.PathLike = WEIGHTS_DIR) -> dict[str, Any]:
    """Merge ``metrics`` into ``weights_dir/<name>.json``'s ``metrics`` (atomically); return the index."""
    path = Path(weights_dir) / f"{name}.json"
    index = json.loads(path.read_text())
    index.setdefault("metrics", {}).update(metrics)
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(index, indent=1, default=str) + "\n")
    return index


def release_guide(name: str, guide_checkpoint: str | os.PathLike, autoguidance: float, *,
                  weights_dir: str | os.PathLike = WEIGHTS_DIR, info: dict[str, Any] | None = None,
                  storage: str = "fp32", interval: tuple[float, float] | None = None) -> dict[str, Any]:
    """Ship ``guide_checkpoint``'s denoiser inside ``weights_dir/<name>.pt`` as its autoguidance guide.

    The diffusion checkpoint is rewritten atomically with the guide (:func:`skellab.diffusion.attach_guide`:
    it must be a denoiser of the same latents) and ``autoguidance`` as its default weight; ``<name>.json``
    gets the new sha256 and size and a ``guide`` entry (the guide's source file, its sha256, parameters,
    step and ``info``). ``storage`` is how both networks' weights are written (:func:`release_weights`);
    ``interval``: the noise levels (lo, hi] the guide applies at (None: every step). Returns the index.
    """
    dst = Path(weights_dir) / f"{name}.pt"
    model = load_diffusion(dst)
    guide = load_diffusion(guide_checkpoint)
    src_info = {"source": Path(guide_checkpoint).name, "source_sha256": file_sha256(guide_checkpoint),
                "train": guide.info.get("train"), **(info or {})}
    guided = attach_guide(model, guide, autoguidance, src_info, interval=interval)
    save_diffusion(dst, guided, storage=storage)
    path = dst.with_suffix(".json")
    index = json.loads(path.read_text())
    index.update(sha256=file_sha256(dst), bytes=dst.stat().st_size, storage=storage,
                 guide={"autoguidance": guided.autoguidance, **guided.guide_info,
                        "interval": list(guided.guide_interval) if guided.guide_interval is not None else None})
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(index, indent=1, default=str) + "\n")
    return index


def release_class_autoguidance(name: str, weights: dict[str, float], *, weights_dir: str | os.PathLike = WEIGHTS_DIR,
                               info: dict[str, Any] | None = None) -> dict[str, Any]:
    """Give classes of the shipped ``weights_dir/<name>.pt`` their own default autoguidance weight
    (:func:`skellab.diffusion.with_class_autoguidance`; {} removes them). The networks are written back as they are
    stored (bf16-rounded weights stay exactly those), atomically; ``<name>.json`` gets the new sha256 and size and
    ``guide.class_weights`` (with ``info``, e.g. how the weights were chosen). Returns the index."""
    dst = Path(weights_dir) / f"{name}.pt"
    index_path = dst.with_suffix(".json")
    index = json.loads(index_path.read_text())
    storage = index.get("storage", "fp32")
    model = with_class_autoguidance(load_diffusion(dst), weights)
    save_diffusion(dst, model, storage=storage)
    index.update(sha256=file_sha256(dst), bytes=dst.stat().st_size)
    guide = dict(index.get("guide") or {})
    guide["class_weights"] = dict(model.class_autoguidance)
    if info:
        guide["class_weights_info"] = dict(info)
    else:
        guide.pop("class_weights_info", None)
    index["guide"] = guide
    with atomic_path(index_path) as tmp:
        tmp.write_text(json.dumps(index, indent=1, default=str) + "\n")
    return index
