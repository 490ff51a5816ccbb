"""Stage runners and the whole pipeline: learned skeleton → autoencoder → latents → diffusion (presets: :mod:`.presets`).

A *run folder* holds one sub-folder per stage::

    RUN/skeleton/      checkpoint.pt  model.pt  log.csv  summary.json          (optional stage)
    RUN/autoencoder/   checkpoint.pt  model.pt  log.csv  summary.json  skeletons.npz
    RUN/diffusion/     checkpoint.pt  model.pt  log.csv  summary.json  latents.pt

``checkpoint.pt`` resumes training; ``model.pt`` is the exported model in the same format as
the shipped weights (``load_autoencoder(RUN/autoencoder/model.pt)``,
``load_diffusion(RUN/diffusion/model.pt)``, ``skeletonize(..., method="learned",
config=RUN/skeleton/model.pt)``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable

import torch

from ..autoencoder import CHECKPOINT_FORMAT as AUTOENCODER_FORMAT
from ..autoencoder import Latent, encode_shapes, load_autoencoder
from ..checkpoint import read_checkpoint, save_bytes
from ..data.medsdf import MedSDF
from ..diffusion import CHECKPOINT_FORMAT as DIFFUSION_FORMAT
from ..diffusion import (
    LatentDiffusion,
    LatentNormalizer,
    TokenDenoiser,
    classes_present,
    diffusion_payload,
    generated_channels,
    make_scheduler,
    sort_tokens,
)
from ..errors import SkellabError
from ..runtime import atomic_path, resolve_device
from ..skeleton import METHODS as SKELETON_METHODS
from .engine import FitResult, fit
from .presets import PRESETS, STAGES, stage_config
from .tasks import (
    AutoencoderTask,
    DenoisingTask,
    SkeletonTask,
    dataset_fingerprint,
    file_sha256,
)

__all__ = ["STAGES", "PRESETS", "train_stage", "precompute_latents", "run_pipeline", "PipelineResult"]


# ---------------------------------------------------------------------- latents
def precompute_latents(autoencoder_path: str | os.PathLike, data: str | os.PathLike, out: str | os.PathLike | None, *,
                       device: str | torch.device = "auto", progress: bool = True,
                       skeleton_cache: str | os.PathLike | None = None) -> dict[str, Any]:
    """Encode the train and val splits with a frozen autoencoder; cached in ``out`` (``latents.pt``; None: no cache).

    The cache is reused only when it was made by the same autoencoder file (sha256) from the same
    dataset (manifest fingerprint). Returns ``{"train": Latent, "val": Latent | None, "ids", "val_ids",
    "classes", "autoencoder_sha256", "data"}``.
    """
    ae_sha = file_sha256(autoencoder_path)
    fp = dataset_fingerprint(data)
    cache = None if out is None else Path(out) / "latents.pt"
    if cache is not None and cache.is_file():
        try:
            c = torch.load(cache, map_location="cpu", weights_only=True)
            if c.get("autoencoder_sha256") == ae_sha and c.get("data") == fp:
                def lat(key):
                    return None if c[key] is None else Latent(c[key]["tokens"], c[key]["class_index"])
                return {**c, "train": lat("train"), "val": lat("val")}
        except Exception:  # noqa: BLE001  (a stale or damaged cache is recomputed)
            pass
    ae = load_autoencoder(autoencoder_path, device=device)
    store = MedSDF.open(data)
    kw = dict(skeleton_cache=skeleton_cache, progress=progress)  # the skeleton method comes from the checkpoint
    train, ids = encode_shapes(ae, store, split="train", **kw)
    val_ids = store.ids(split="val")
    val = encode_shapes(ae, store, val_ids, **kw)[0] if val_ids else None
    result = {"train": train, "val": val, "ids": ids, "val_ids": val_ids, "classes": list(ae.classes),
              "autoencoder_sha256": ae_sha, "data": fp}

    if cache is None:
        return result

    def pack(x):
        return None if x is None else {"tokens": x.tokens.detach().cpu(),
                                       "class_index": None if x.class_index is None else x.class_index.cpu()}
    with atomic_path(cache) as tmp:
        save_bytes({**result, "train": pack(train), "val": pack(val)}, tmp)
    return result


class _LatentTask(DenoisingTask):
    """:class:`DenoisingTask` whose latents are encoded (or read from the cache) in :meth:`prepare`."""

    def __init__(self, autoencoder_path: Path, data: Path, config: Any, scheduler: Any, *, seed: int,
                 skeleton_cache: Path | None) -> None:
        ae = read_checkpoint(autoencoder_path, format=AUTOENCODER_FORMAT, kind="autoencoder")
        try:
            ae_cfg = ae["config"]
            token_dim = 4 + int(ae_cfg["feature_dim"])
            num_tokens = int(ae_cfg["num_tokens"])
        except (KeyError, TypeError, ValueError) as exc:
            raise SkellabError(f"{autoencoder_path}: checkpoint config is missing or malformed") from exc
        self.classes = list(ae.get("classes") or [])
        # a stage of a two-stage model generates some of the channels: the 4 sphere ones, or the features
        token_dim = generated_channels(config.channels, token_dim)
        cfg = replace(config, token_dim=token_dim, num_classes=len(self.classes),
                      num_tokens=num_tokens if config.token_order != "set" else config.num_tokens)
        self.model_config, self.num_tokens = cfg, num_tokens
        self.autoencoder_path, self.data_root, self.skeleton_cache = autoencoder_path, data, skeleton_cache
        self.ae_sha = file_sha256(autoencoder_path)
        super().__init__(torch.empty(0), None, scheduler, self._new_model, class_dropout=cfg.class_dropout, seed=seed,
                         config={"model": cfg.to_dict(), "autoencoder_sha256": self.ae_sha[:16]},
                         fingerprint=f"{dataset_fingerprint(data)}-{self.ae_sha[:16]}",
                         payload_fn=self._payload, checkpoint_format=DIFFUSION_FORMAT)
        self.normalizer, self.trained_classes = None, None

    def _new_model(self):
        return TokenDenoiser(config=self.model_config)

    def prepare(self, out, device, dist, progress) -> None:
        if self.normalizer is not None:
            return
        lat = precompute_latents(self.autoencoder_path, self.data_root, out, device=device, progress=progress,
                                 skeleton_cache=self.skeleton_cache)
        train, val = lat["train"], lat["val"]
        order = self.model_config.token_order
        self.normalizer = LatentNormalizer.fit(train.tokens, shared=self.model_config.shared_channels())
        self.data = self.normalizer.normalize(sort_tokens(train.tokens.float(), order)).to(device)
        self.class_index = train.class_index.to(device) if train.class_index is not None else None
        if val is not None:
            self.val_data = self.normalizer.normalize(sort_tokens(val.tokens.float(), order)).to(device)
            self.val_class_index = val.class_index
        self.latent_count = int(train.tokens.shape[0])
        if train.class_index is not None and self.classes:
            self.trained_classes = classes_present(self.classes, train.class_index)

    def _payload(self, model, *, step, metrics):
        info = {"step": step, "metrics": metrics,
                "train": {"autoencoder_sha256": self.ae_sha, "num_latents": self.latent_count,
                          "cpu_seconds": metrics.get("cpu_seconds"), "wall_seconds": metrics.get("wall_seconds")}}
        return diffusion_payload(LatentDiffusion(model, self.scheduler, self.normalizer, self.classes or None,
                                                 self.num_tokens, info, trained_classes=self.trained_classes),
                                 step=step, metrics=metrics)


# ---------------------------------------------------------------------- one stage
#: the autoencoder config fields a fine-tuning run may change: how the decoder is trained, not its shape
FINETUNE_FIELDS = ("sphere_noise", "sdf_weight", "skeleton_weight")


def _finetune_config(path: Path, preset_model: Any, overrides: dict[str, Any], skeleton_method: str) -> Any:
    """The config of checkpoint ``path`` with the overridden :data:`FINETUNE_FIELDS` (already parsed in ``preset_model``)."""
    if not path.is_file():
        raise SkellabError(f"autoencoder checkpoint to fine-tune not found: {path}")
    base = load_autoencoder(path).config
    if skeleton_method != base.skeleton_method:
        raise SkellabError(f"{path} was trained on {base.skeleton_method} skeletons, not {skeleton_method}")
    model_fields = set(base.to_dict())
    changed = sorted(k for k in overrides if k in model_fields)
    bad = [k for k in changed if k not in FINETUNE_FIELDS]
    if bad:
        raise SkellabError(f"--finetune keeps the checkpoint's architecture: {', '.join(bad)} cannot be set "
                           f"(only {', '.join(FINETUNE_FIELDS)})")
    return base.replace(**{k: getattr(preset_model, k) for k in changed})


def train_stage(
    stage: str,
    data: str | os.PathLike,
    out: str | os.PathLike,
    *,
    preset: str = "tiny",
    device: str | torch.device = "auto",
    max_steps: int | None = None,
    resume: bool = False,
    seed: int = 0,
    progress: bool = True,
    autoencoder: str | os.PathLike | None = None,
    skeleton_method: str = "medial",
    skeleton_checkpoint: str | os.PathLike | None = None,
    finetune: str | os.PathLike | None = None,
    callback: Callable[[int, dict[str, float]], None] | None = None,
    **overrides: Any,
) -> FitResult:
    """Train one stage into ``out/<stage>/`` (what ``skellab train <stage>`` runs).

    data                : MedSDF folder
    out                 : run folder (shared by the stages)
    preset              : ``"tiny"`` (a CPU minute) or ``"default"`` (the shipped models' recipe)
    max_steps           : replaces the preset's number of steps (and so the LR schedule's length)
    resume              : continue ``out/<stage>/checkpoint.pt``
    autoencoder         : diffusion only: the frozen autoencoder (default ``out/autoencoder/model.pt``)
    skeleton_method     : autoencoder only: ``"medial"`` (default) or ``"learned"``
    skeleton_checkpoint : learned skeleton weights (default ``out/skeleton/model.pt``)
    finetune            : autoencoder only: start from this checkpoint and train its decoder only; its encoder, and
                          so every latent a diffusion model learnt from it, stays. Its config is kept; overrides
                          may change only the decoder's training (:data:`FINETUNE_FIELDS`), e.g. ``sphere_noise``
    overrides           : fields of the stage's model config or of :class:`EngineConfig`
    """
    if stage not in STAGES:
        raise SkellabError(f"unknown stage {stage!r}: use {', '.join(STAGES)}")
    if preset not in PRESETS:
        raise SkellabError(f"unknown preset {preset!r}: use {' or '.join(PRESETS)}")
    data = Path(data)
    if not data.exists():
        raise SkellabError(f"dataset not found: {data}")
    dataset_fingerprint(data)  # a clear error when it is not a MedSDF folder
    if max_steps is not None:
        if int(max_steps) < 1:
            raise SkellabError(f"max_steps must be >= 1, got {max_steps}")
        overrides["steps"] = int(max_steps)
    overrides["seed"] = int(seed)
    run = Path(out)
    stage_dir = run / stage
    cfg = stage_config(stage, preset, **overrides)
    resolve_device(device)
    if stage == "skeleton":
        task = SkeletonTask(data, cfg.model, seed=seed)
    elif stage == "autoencoder":
        if skeleton_method not in SKELETON_METHODS:
            raise SkellabError(f"unknown skeleton method {skeleton_method!r}")
        ck = None
        if skeleton_method == "learned":
            ck = Path(skeleton_checkpoint) if skeleton_checkpoint is not None else run / "skeleton" / "model.pt"
        model = cfg.model.replace(skeleton_method=skeleton_method, skeleton_checkpoint=None if ck is None else str(ck))
        if finetune is not None:
            model = _finetune_config(Path(finetune), cfg.model, overrides, skeleton_method)
        task = AutoencoderTask(data, model, cfg.sampling, seed=seed, val_batch_size=cfg.engine.batch_size,
                               finetune=finetune)
    else:
        if finetune is not None:
            raise SkellabError("--finetune applies to the autoencoder stage only")
        ae_path = Path(autoencoder) if autoencoder is not None else run / "autoencoder" / "model.pt"
        if not ae_path.is_file():
            raise SkellabError(f"autoencoder checkpoint not found: {ae_path} (train it first with "
                               f"`skellab train autoencoder --out {run}` or pass --autoencoder)")
        skel_cache = (run / "autoencoder" / "skeletons.npz") if autoencoder is None else stage_dir / "skeletons.npz"
        task = _LatentTask(ae_path, data, cfg.model, make_scheduler("edm"), seed=seed, skeleton_cache=skel_cache)
    engine = cfg.engine
    return fit(task, engine, out=stage_dir, device=device, resume=resume, progress=progress, callback=callback)


# ---------------------------------------------------------------------- the pipeline
@dataclass
class PipelineResult:
    """Per-stage :class:`FitResult` s of :func:`run_pipeline` and the run folder."""

    run: Path
    stages: dict[str, FitResult]

    @property
    def autoencoder_path(self) -> Path:
        return self.run / "autoencoder" / "model.pt"

    @property
    def diffusion_path(self) -> Path:
        return self.run / "diffusion" / "model.pt"


def run_pipeline(
    data: str | os.PathLike,
    out: str | os.PathLike,
    *,
    preset: str = "tiny",
    device: str | torch.device = "auto",
    learned_skeleton: bool = False,
    max_steps: dict[str, int] | int | None = None,
    resume: bool = False,
    seed: int = 0,
    progress: bool = True,
) -> PipelineResult:
    """Train every stage in order: [learned skeleton →] autoencoder → latents → diffusion.

    max_steps : one number for every stage, or ``{"autoencoder": 100, ...}``; None: the preset's
    resume    : continue each stage from its checkpoint (finished stages are just re-exported)
    """
    run = Path(out)
    order = (["skeleton"] if learned_skeleton else []) + ["autoencoder", "diffusion"]
    steps = max_steps if isinstance(max_steps, dict) else {s: max_steps for s in order}
    results: dict[str, FitResult] = {}
    for stage in order:
        kw: dict[str, Any] = {}
        if stage == "autoencoder" and learned_skeleton:
            kw["skeleton_method"] = "learned"
        results[stage] = train_stage(stage, data, run, preset=preset, device=device, max_steps=steps.get(stage),
                                     resume=resume, seed=seed, progress=progress, **kw)
    return PipelineResult(run, results)
