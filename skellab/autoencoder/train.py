"""Training, checkpoints and batch encoding for the skeletal latent autoencoder.

Recipe (METHOD §5, shrunk for CPU): skeletons are computed once per shape with the
medial (shrinking-ball) method from a fixed subset of its stored surface points and
cached; each step draws ``batch_size`` training shapes, a fresh random subset of
their surface points and SDF queries (90% from the near-surface band), encodes,
decodes and minimises the truncated-SDF MSE (+ the optional skeleton constraint).
Adam, linear warm-up then linear decay to ``lr_final_fraction``, gradient clipping. The loop
is the shared training engine (:mod:`skellab.train`); the task is
:class:`skellab.train.AutoencoderTask`.

Checkpoint format ``skellab.autoencoder/1`` (a plain dict, loadable with
``torch.load(weights_only=True)``)::

    {"format": "skellab.autoencoder/1", "config": asdict(AutoencoderConfig),
     "state_dict": ..., "classes": [...], "train": asdict(TrainConfig) | None,
     "step": int, "metrics": {...}}

A run checkpoint (``checkpoint.pt`` of a training run) is the same dict plus a
``"train_state"`` entry for resuming (optimizer, scheduler, RNG, step).
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from ..data.medsdf import MedSDF
from ..checkpoint import read_checkpoint, write_checkpoint
from ..errors import SkellabError
from ..runtime import atomic_path, resolve_device
from .model import AutoencoderConfig, Latent, SkeletalAutoencoder

__all__ = [
    "CHECKPOINT_FORMAT", "DEFAULT_WEIGHTS", "TrainConfig", "tiny_config", "default_config",
    "skeletons_for", "trained_skeleton", "train_autoencoder", "autoencoder_payload", "save_autoencoder", "load_autoencoder", "encode_shapes", "encode_points",
]

CHECKPOINT_FORMAT = "skellab.autoencoder/1"
DEFAULT_WEIGHTS = Path(__file__).resolve().parent.parent / "weights" / "autoencoder.pt"


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation settings of :func:`train_autoencoder`."""

    steps: int = 3000  # optimisation steps
    batch_size: int = 4  # shapes per step
    num_queries: int = 2048  # SDF queries per shape per step
    near_fraction: float = 0.9  # fraction of queries from the near-surface band (paper 0.9)
    lr: float = 5e-4  # peak Adam learning rate
    warmup: int = 100  # linear warm-up steps
    lr_final_fraction: float = 0.01  # the LR decays linearly to lr · this (paper: 1%)
    grad_clip: float = 1.0  # max gradient norm (paper: 1)
    val_every: int = 250  # steps between validation losses (0: never)
    checkpoint_every: int = 500  # steps between checkpoints when ``out`` is given (0: only at the end)
    skeleton_method: str = "medial"  # skeletonization used for the tokens (see skellab.skeleton)

    def __post_init__(self) -> None:
        if self.steps < 1 or self.batch_size < 1 or self.num_queries < 1:
            raise SkellabError("TrainConfig: steps, batch_size and num_queries must be >= 1")
        if not self.lr > 0 or not 0 < self.lr_final_fraction <= 1:
            raise SkellabError("TrainConfig: lr must be > 0 and lr_final_fraction in (0, 1]")


def tiny_config(**overrides: Any) -> tuple[AutoencoderConfig, TrainConfig]:
    """A model and schedule that train in seconds on a CPU (tests, CI, notebook smoke runs)."""
    model = AutoencoderConfig(num_tokens=64, num_surface=512, encoder_width=32, encoder_blocks=1,
                              group_k=16, num_frequencies=4, decoder_width=32, decoder_heads=2,
                              decoder_blocks=1)
    train = TrainConfig(steps=50, batch_size=2, num_queries=512, lr=2e-3, warmup=5, val_every=25)
    return _split_overrides(model, train, overrides)


def default_config(**overrides: Any) -> tuple[AutoencoderConfig, TrainConfig]:
    """The shipped model: K=256 tokens of 16 numbers, CPU-trainable widths."""
    model = AutoencoderConfig(encoder_blocks=2, decoder_blocks=2)
    train = TrainConfig(steps=1200, warmup=50, val_every=100, checkpoint_every=100)
    return _split_overrides(model, train, overrides)


def _split_overrides(model: AutoencoderConfig, train: TrainConfig, overrides: dict[str, Any]):
    mk, tk = {f.name for f in fields(AutoencoderConfig)}, {f.name for f in fields(TrainConfig)}
    bad = sorted(set(overrides) - mk - tk)
    if bad:
        raise SkellabError(f"unknown config field(s): {', '.join(bad)}")
    return (model.replace(**{k: v for k, v in overrides.items() if k in mk}),
            TrainConfig(**{**asdict(train), **{k: v for k, v in overrides.items() if k in tk}}))


_PRESETS = {"tiny": tiny_config, "default": default_config}


# ---------------------------------------------------------------------- skeletons
def _skeletonize_batch(points: torch.Tensor, normals: torch.Tensor, *, k: int,
                       method: str, config: Any = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, N, 3) oriented points → centers (B, k, 3), radii (B, k), via the skeleton dispatcher."""
    try:
        from ..skeleton import skeletonize
    except ImportError:  # dispatcher not available: the medial method directly
        skeletonize = None
    if skeletonize is None:
        if method != "medial":
            raise SkellabError(f"skeleton method {method!r} needs skellab.skeleton.skeletonize")
        from ..skeleton.medial import medial_spheres

        c, r, _ = medial_spheres(points, normals, k=k)
        return c.detach(), r.detach()
    out = skeletonize(points, normals, method=method, k=k, config=config, generator=None, device=points.device,
                      edges=False)
    return torch.stack([s.centers for s in out]).detach(), torch.stack([s.radii for s in out]).detach()


def skeletons_for(store: MedSDF, ids: Sequence[str], *, k: int, num_surface: int, method: str = "medial",
                  cache: str | os.PathLike | None = None, batch: int = 8, progress: bool = False,
                  skeleton_config: Any = None) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Skeletal spheres of each shape: ``{id: (centers (k, 3), radii (k,))}``, normalised frame.

    Computed from the first ``num_surface`` stored surface points (a random area-uniform
    subset) and their normals, deterministically (farthest-point sampling of the medial
    balls starts from the first kept ball), so a shape's skeleton never depends on
    which other shapes share its batch. With ``cache`` (an ``.npz`` path), results are read from
    and added to it, so each shape is skeletonized once. ``skeleton_config`` is passed to
    :func:`skellab.skeleton.skeletonize` (for ``"learned"``: a checkpoint path, part of the cache key).
    """
    out: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    tag = f"{method}-k{k}-n{num_surface}"
    if skeleton_config is not None:
        ident = Path(skeleton_config).read_bytes() if isinstance(skeleton_config, (str, os.PathLike)) else repr(skeleton_config).encode()
        tag += "-" + hashlib.sha256(ident).hexdigest()[:12]
    if cache is not None and Path(cache).is_file():
        with np.load(cache, allow_pickle=False) as z:
            for sid in ids:
                if f"{tag}/{sid}/c" in z.files:
                    out[sid] = (z[f"{tag}/{sid}/c"], z[f"{tag}/{sid}/r"])
    todo = [sid for sid in ids if sid not in out]
    for s in tqdm(range(0, len(todo), batch), desc="skeletons", disable=not progress or not todo):
        chunk = todo[s : s + batch]
        arrays = [store.samples(sid) for sid in chunk]
        if any(len(a["surface_points"]) < num_surface for a in arrays):
            raise SkellabError(f"a shape in {store.root} has fewer than {num_surface} stored surface points")
        pts = torch.from_numpy(np.stack([a["surface_points"][:num_surface] for a in arrays]))
        nrm = torch.from_numpy(np.stack([a["surface_normals"][:num_surface] for a in arrays]))
        c, r = _skeletonize_batch(pts, nrm, k=k, method=method, config=skeleton_config)
        for i, sid in enumerate(chunk):
            out[sid] = (c[i].cpu().numpy().astype(np.float32), r[i].cpu().numpy().astype(np.float32))
    if cache is not None and todo:
        old = {}
        if Path(cache).is_file():
            with np.load(cache, allow_pickle=False) as z:
                old = {key: z[key] for key in z.files}
        for sid, (c, r) in out.items():
            old[f"{tag}/{sid}/c"], old[f"{tag}/{sid}/r"] = c, r
        with atomic_path(cache) as tmp:
            with open(tmp, "wb") as fh:
                np.savez(fh, **old)
    return out


def train_autoencoder(
    dataset_root: str | os.PathLike,
    *,
    config: AutoencoderConfig | None = None,
    train_config: TrainConfig | None = None,
    preset: str = "tiny",
    steps: int | None = None,
    device: str | torch.device = "auto",
    seed: int = 0,
    out: str | os.PathLike | None = None,
    resume: bool = False,
    progress: bool = True,
) -> tuple[SkeletalAutoencoder, dict[str, list]]:
    """Train a :class:`SkeletalAutoencoder` on a MedSDF folder with the shared engine (:mod:`skellab.train`).

    dataset_root : MedSDF folder (train split = folds 1–4 minus val; val for the val loss)
    config       : model config (default: the ``preset``'s); ``num_classes`` is set from the data
    train_config : optimisation settings (default: the ``preset``'s); ``steps`` overrides its steps
    preset       : ``"tiny"`` (seconds on a CPU) or ``"default"`` (the shipped model)
    out          : run folder: ``skeletons.npz`` (cache), ``checkpoint.pt`` (resumable, atomic),
                   ``model.pt`` (the exported model), ``log.csv``, ``summary.json``
    resume       : continue ``out/checkpoint.pt``
    returns      : the trained model (eval mode, on ``device``) and the history
                   ``{"step", "loss", "sdf", "skeleton", "lr", "val_step", "val_sdf", "seconds"}``
                   (losses in units of τ², MSE of SDF/τ).
    """
    from ..train.engine import EngineConfig, fit
    from ..train.tasks import AutoencoderTask

    if preset not in _PRESETS:
        raise SkellabError(f"unknown preset {preset!r}: use tiny or default")
    p_model, p_train = _PRESETS[preset]()
    train_cfg = train_config or p_train
    if steps is not None:
        train_cfg = TrainConfig(**{**asdict(train_cfg), "steps": int(steps)})
    task = AutoencoderTask(dataset_root, config or p_model, train_cfg, seed=seed)
    engine = EngineConfig(steps=train_cfg.steps, batch_size=train_cfg.batch_size, lr=train_cfg.lr,
                          warmup=train_cfg.warmup, schedule="linear", lr_final_fraction=train_cfg.lr_final_fraction,
                          grad_clip=train_cfg.grad_clip or None, val_every=train_cfg.val_every,
                          checkpoint_every=train_cfg.checkpoint_every, seed=seed)
    res = fit(task, engine, out=out, device=device, resume=resume, progress=progress)
    rows = res.history
    hist: dict[str, list] = {k: [r[k] for r in rows] for k in ("step", "loss", "sdf", "skeleton", "lr", "seconds")}
    hist["val_step"], hist["val_sdf"] = res.column("val_sdf")
    return res.model, hist


# ---------------------------------------------------------------------- checkpoints
def autoencoder_payload(model: SkeletalAutoencoder, *, train_config: TrainConfig | dict | None = None,
                        step: int = 0, metrics: dict[str, Any] | None = None) -> dict[str, Any]:
    """The ``skellab.autoencoder/1`` checkpoint dict of ``model`` (config and classes embedded)."""
    train = asdict(train_config) if isinstance(train_config, TrainConfig) else train_config
    return {
        "format": CHECKPOINT_FORMAT,
        "config": model.config.to_dict(),
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "classes": list(model.classes),
        "train": None if train is None else dict(train),
        "step": int(step),
        "metrics": dict(metrics or {}),
    }


def save_autoencoder(path: str | os.PathLike, model: SkeletalAutoencoder, *, train_config: TrainConfig | dict | None = None,
                     step: int = 0, metrics: dict[str, Any] | None = None) -> Path:
    """Write a ``skellab.autoencoder/1`` checkpoint atomically (config embedded); return its path."""
    write_checkpoint(path, autoencoder_payload(model, train_config=train_config, step=step, metrics=metrics))
    return Path(path)


def load_autoencoder(path: str | os.PathLike | None = None, *, device: str | torch.device = "cpu",
                     expect: AutoencoderConfig | None = None) -> SkeletalAutoencoder:
    """Rebuild a model from its checkpoint alone (default: the shipped ``skellab/weights/autoencoder.pt``).

    Returns the model in eval mode with ``.classes`` set and ``.checkpoint_info``
    (``step``, ``metrics``, ``train``). A missing or corrupt file, another format, a
    config the weights do not fit, or (with ``expect``) a different config →
    :class:`SkellabError`.
    """
    p = Path(path) if path is not None else DEFAULT_WEIGHTS
    ckpt = read_checkpoint(p, format=CHECKPOINT_FORMAT, kind="autoencoder")
    try:
        cfg = AutoencoderConfig.from_dict(ckpt["config"])
    except (KeyError, TypeError) as exc:
        raise SkellabError(f"{p}: checkpoint config is missing or malformed") from exc
    if expect is not None and expect != cfg:
        diff = [f.name for f in fields(cfg) if getattr(cfg, f.name) != getattr(expect, f.name)]
        raise SkellabError(f"{p}: checkpoint config differs from the expected one in {', '.join(diff)}")
    model = SkeletalAutoencoder(config=cfg, classes=ckpt.get("classes") or None)
    try:
        model.load_state_dict(ckpt["state_dict"])
    except (KeyError, RuntimeError) as exc:
        raise SkellabError(f"{p}: checkpoint weights do not fit its config (other architecture?)") from exc
    model.checkpoint_info = {k: ckpt.get(k) for k in ("step", "metrics", "train")}
    return model.to(resolve_device(device)).eval()


# ---------------------------------------------------------------------- encoding
@torch.no_grad()
def encode_shapes(
    model: SkeletalAutoencoder,
    dataset_root: str | os.PathLike | MedSDF,
    ids: Sequence[str] | None = None,
    *,
    split: str = "test",
    batch_size: int = 8,
    skeleton_cache: str | os.PathLike | None = None,
    device: str | torch.device | None = None,
    progress: bool = False,
    skeleton_method: str | None = None,
    skeleton_config: Any = None,
) -> tuple[Latent, list[str]]:
    """Encode stored shapes: (Latent (len(ids), K, 4 + F), ids). Deterministic.

    Uses the first ``num_surface`` stored surface points of each shape (the same subset
    its skeleton is computed from) and the shape's class index in ``model.classes``.
    ``skeleton_method`` / ``skeleton_config`` must be the ones the model was trained with; by
    default they are read from the checkpoint's training record (medial when it has none).
    """
    store = dataset_root if isinstance(dataset_root, MedSDF) else MedSDF.open(dataset_root)
    ids = list(ids) if ids is not None else store.ids(split=split)
    if not ids:
        raise SkellabError("no shapes to encode")
    cfg = model.config
    dev = next(model.parameters()).device if device is None else resolve_device(device)
    method, skel_cfg = trained_skeleton(model)
    if skeleton_method is not None:
        method, skel_cfg = skeleton_method, skeleton_config
    skel = skeletons_for(store, ids, k=cfg.num_tokens, num_surface=cfg.num_surface, cache=skeleton_cache,
                         method=method, skeleton_config=skel_cfg)
    classes = model.classes or store.classes
    parts = []
    for s in tqdm(range(0, len(ids), batch_size), desc="encode", disable=not progress):
        chunk = ids[s : s + batch_size]
        arrays = [store.samples(sid) for sid in chunk]
        pts = torch.from_numpy(np.stack([a["surface_points"][: cfg.num_surface] for a in arrays])).to(dev)
        nrm = torch.from_numpy(np.stack([a["surface_normals"][: cfg.num_surface] for a in arrays])).to(dev)
        c = torch.from_numpy(np.stack([skel[i][0] for i in chunk])).to(dev)
        r = torch.from_numpy(np.stack([skel[i][1] for i in chunk])).to(dev)
        organ = [store.record(i)["class"] for i in chunk]
        unknown = [o for o in organ if o not in classes]
        if unknown and cfg.class_conditioning:
            raise SkellabError(f"class {unknown[0]!r} is not one this autoencoder was trained on")
        ci = torch.tensor([classes.index(o) if o in classes else -1 for o in organ], device=dev)
        lat = model.encode(pts, nrm, c, r, ci)
        parts.append(lat)
    return Latent.cat(parts), ids


def trained_skeleton(model: SkeletalAutoencoder) -> tuple[str, Any]:
    """(skeleton method, its config — a checkpoint path for "learned") the model was trained with."""
    train = (getattr(model, "checkpoint_info", None) or {}).get("train") or {}
    return train.get("skeleton_method") or "medial", train.get("skeleton_checkpoint")


@torch.no_grad()
def encode_points(
    model: SkeletalAutoencoder,
    points: torch.Tensor,
    normals: torch.Tensor,
    *,
    class_index: torch.Tensor | int | None = None,
    method: str | None = None,
) -> Latent:
    """Skeletonize and encode raw oriented surface samples (normalised frame).

    points, normals : (N, 3) or (B, N, 3), N ≥ ``model.config.num_surface`` (the first
                      ``num_surface`` points are used; pass a random subset)
    returns         : :class:`Latent` (B, K, 4 + F) on the model's device.
    """
    cfg = model.config
    pts = torch.as_tensor(points, dtype=torch.float32)
    nrm = torch.as_tensor(normals, dtype=torch.float32)
    if pts.ndim == 2:
        pts, nrm = pts[None], nrm[None]
    if pts.ndim != 3 or pts.shape[-1] != 3 or nrm.shape != pts.shape:
        raise SkellabError(f"points and normals must be matching (N, 3) or (B, N, 3), got {tuple(pts.shape)}, {tuple(nrm.shape)}")
    if pts.shape[1] < cfg.num_surface:
        raise SkellabError(f"need at least {cfg.num_surface} surface points, got {pts.shape[1]}")
    dev = next(model.parameters()).device
    pts, nrm = pts[:, : cfg.num_surface].to(dev), nrm[:, : cfg.num_surface].to(dev)
    c = r = None
    if cfg.token_source == "skeleton":
        m, skel_cfg = trained_skeleton(model)
        if method is not None and method != m:
            m, skel_cfg = method, None
        c, r = _skeletonize_batch(pts, nrm, k=cfg.num_tokens, method=m, config=skel_cfg)
    ci = None if class_index is None else torch.as_tensor(class_index, device=dev).long().reshape(-1).expand(pts.shape[0])
    return model.encode(pts, nrm, c, r, ci)
