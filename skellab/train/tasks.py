"""The three stages as :class:`~skellab.train.engine.TrainingTask` s, plus an in-memory denoising task.

* :class:`SkeletonTask` — the learned (Point2Skeleton-style) skeleton on a MedSDF train split;
* :class:`AutoencoderTask` — the skeletal latent autoencoder (skeletons precomputed and cached);
* :class:`DenoisingTask` — a token denoiser on a tensor of samples (latents, or the point-cloud
  baseline's clouds); :func:`latent_diffusion_task` builds it for precomputed latents.

Per-sample randomness is drawn from generators seeded by ``(seed, epoch, index)`` (dataset
items) or ``(seed, step, position)`` (noise), so the same sample gets the same numbers in any
process and after any resume (see :mod:`skellab.train.engine`).
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch import nn

from ..autoencoder import CHECKPOINT_FORMAT as AUTOENCODER_FORMAT
from ..autoencoder import (
    AutoencoderConfig,
    SkeletalAutoencoder,
    autoencoder_payload,
    perturb_spheres,
    skeletons_for,
)
from ..checkpoint import read_checkpoint
from ..data.dataset import MedSDFDataset, SDFBatchConfig
from ..data.medsdf import MedSDF
from ..data.medsdf import sha256_file as file_sha256
from ..diffusion.denoiser import split_channels
from ..errors import SkellabError
from ..skeleton.learned import CHECKPOINT_FORMAT as SKELETON_FORMAT
from ..skeleton.learned import (
    LearnedSkeletonConfig,
    PointSkeletonNet,
    random_rotations,
    renormalize,
    skeleton_losses,
)
from .engine import DistContext, TrainingTask, derive_seed

__all__ = ["CloudSkeletonTask", "SkeletonTask", "AutoencoderTask", "DenoisingTask", "dataset_fingerprint", "file_sha256"]


def dataset_fingerprint(root: str | os.PathLike) -> str:
    """sha256 (16 hex) of a MedSDF folder's manifest: it lists every file with its own sha256."""
    manifest = Path(root) / "manifest.json"
    if not manifest.is_file():
        raise SkellabError(f"dataset not found: {root} (no manifest.json; build one with `skellab data build`)")
    return file_sha256(manifest)[:16]


def _gen(*parts: int | str) -> torch.Generator:
    return torch.Generator().manual_seed(derive_seed(*parts))


SELF_COND_RATE = 0.5  # fraction of training samples that see the network's own estimate (Chen et al. 2023)


@torch.no_grad()
def self_condition_input(model: nn.Module, scheduler: Any, x_t: torch.Tensor, x_in: torch.Tensor, cond: torch.Tensor,
                         t: torch.Tensor, batch: dict[str, Any], kw: dict[str, Any]) -> torch.Tensor:
    """A self-conditioned denoiser's ``self_cond`` in training: for the samples whose coin (``batch["self_cond"]``)
    came up, the network's own x̂₀ estimate from a first pass without it (no gradient, so it is an input, not a path
    to train through); zeros for the others (what the sampler's first call sees). Standardised units, (B, K, D)."""
    sc = torch.zeros_like(x_t)
    pick = batch["self_cond"].nonzero().flatten()
    if len(pick):
        c = batch["class_index"]
        sub = {k: v[pick] for k, v in kw.items()}
        first = model(x_in[pick], cond[pick], None if c is None else c[pick], **sub).float()
        sc[pick] = scheduler.predict_original(first, t[pick], x_t[pick]).to(sc.dtype)
    return sc


# ---------------------------------------------------------------------- learned skeleton
class CloudSkeletonTask(TrainingTask):
    """Self-supervised Point2Skeleton-style training on oriented clouds (S, N0, 3 or 6) in memory.

    Each item is a random ``num_points`` subset of one cloud (and a random rotation when the
    config asks for it), drawn from ``(seed, epoch, index)``. ``batch_fn(step, generator)``, if
    given, replaces the item sampling (it must return (B, num_points, 3 or 6)).
    """

    name = "skeleton"

    def __init__(self, clouds: torch.Tensor | None, config: LearnedSkeletonConfig, *, seed: int = 0,
                 val_clouds: torch.Tensor | None = None,
                 batch_fn: Callable[[int, torch.Generator], torch.Tensor] | None = None,
                 model: nn.Module | None = None) -> None:
        self.checkpoint_format = SKELETON_FORMAT
        self.config, self.seed = config, int(seed)
        self.clouds, self.val_clouds, self.batch_fn, self._model = clouds, val_clouds, batch_fn, model
        if clouds is not None:
            self._check(clouds)

    def _check(self, clouds: torch.Tensor) -> None:
        if clouds.ndim != 3 or clouds.shape[-1] not in (3, 6) or clouds.shape[1] < self.config.num_points:
            raise SkellabError(f"training clouds must have shape (S, N0>={self.config.num_points}, 3 or 6), "
                               f"got {tuple(clouds.shape)}")

    def config_dict(self) -> dict[str, Any]:
        return {"model": asdict(self.config)}

    def data_fingerprint(self) -> str:
        if self.clouds is None:
            return "batch-function"
        return hashlib.sha256(self.clouds.detach().cpu().contiguous().numpy().tobytes()).hexdigest()[:16]

    def num_items(self) -> int:
        return 1 if self.clouds is None else int(self.clouds.shape[0])

    def build_model(self) -> nn.Module:
        return self._model if self._model is not None else PointSkeletonNet(config=self.config)

    def _item(self, cloud: torch.Tensor, g: torch.Generator, rotate: bool) -> torch.Tensor:
        sub = cloud[torch.randperm(cloud.shape[0], generator=g)[: self.config.num_points]]
        if not rotate:
            return sub
        rot = random_rotations(1, generator=g)[0].T
        pts = renormalize((sub[:, :3] @ rot)[None])[0]
        return torch.cat([pts, sub[:, 3:] @ rot], dim=-1) if sub.shape[1] == 6 else pts

    def make_batch(self, items, positions, step, device):
        if self.batch_fn is not None:
            return self.batch_fn(step, _gen(self.seed, "skeleton-batch", step)).to(device, torch.float32)
        rows = [self._item(self.clouds[i], _gen(self.seed, "skeleton", e, i), self.config.augment_rotation)
                for i, e in items]
        return torch.stack(rows).to(device, torch.float32)

    def compute_loss(self, model, batch):
        points = batch[..., :3]
        normals = batch[..., 3:6] if batch.shape[-1] == 6 else None
        centers, radii, _ = model(points)
        return skeleton_losses(points, centers, radii, self.config, normals)

    @torch.no_grad()
    def validate(self, model, device):
        if self.val_clouds is None or len(self.val_clouds) == 0:
            return {}
        model.eval()
        batch = torch.stack([self._item(c, _gen(self.seed, "skeleton-val", j), False)
                             for j, c in enumerate(self.val_clouds)]).to(device)
        out = {k: float(v) for k, v in self.compute_loss(model, batch).items()}
        return {"loss": out.pop("total"), **out}

    def payload(self, model, *, step, metrics):
        state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
        return {"format": self.checkpoint_format, "config": asdict(self.config), "state_dict": state,
                "step": int(step), "metrics": dict(metrics)}


class SkeletonTask(CloudSkeletonTask):
    """:class:`CloudSkeletonTask` on the stored surface samples (points + normals) of a MedSDF train split."""

    def __init__(self, root: str | os.PathLike, config: LearnedSkeletonConfig, *, seed: int = 0,
                 max_cloud_points: int = 8192) -> None:
        super().__init__(None, config, seed=seed)
        self.root = Path(root)
        self.store = MedSDF.open(root)
        self.ids = self.store.ids(split="train")
        self.val_ids = self.store.ids(split="val")
        if not self.ids:
            raise SkellabError(f"{root}: split 'train' has no shapes")
        self.max_cloud_points = int(max_cloud_points)

    def config_dict(self) -> dict[str, Any]:
        return {"model": asdict(self.config), "max_cloud_points": self.max_cloud_points}

    def data_fingerprint(self) -> str:
        return dataset_fingerprint(self.root)

    def num_items(self) -> int:
        return len(self.ids)

    def _clouds(self, ids: Sequence[str]) -> torch.Tensor:
        arrays = [self.store.samples(i) for i in ids]
        n0 = min(self.max_cloud_points, *(len(a["surface_points"]) for a in arrays))
        if n0 < self.config.num_points:
            raise SkellabError(f"shapes in {self.root} have {n0} surface points, fewer than num_points={self.config.num_points}")
        return torch.from_numpy(np.stack([np.concatenate([a["surface_points"][:n0], a["surface_normals"][:n0]], axis=1)
                                          for a in arrays])).float()

    def prepare(self, out, device, dist: DistContext, progress: bool) -> None:
        if self.clouds is None:
            self.clouds = self._clouds(self.ids)
            self.val_clouds = self._clouds(self.val_ids) if self.val_ids else None


# ---------------------------------------------------------------------- autoencoder
class AutoencoderTask(TrainingTask):
    """The skeletal latent autoencoder on a MedSDF folder.

    Skeletons are computed once per shape with the method of ``model_config`` (its
    ``skeleton_method`` / ``skeleton_checkpoint``) from a fixed subset of the stored surface
    points, and cached; each step draws a fresh random subset of every shape's surface points
    and SDF queries (``sampling``), encodes, decodes and minimises the truncated-SDF MSE (+ the
    skeleton constraint).

    ``model_config.sphere_noise`` > 0 moves each training shape's spheres by Gaussian noise before decoding
    (:func:`~skellab.autoencoder.perturb_spheres`; σ = u · sphere_noise with u ~ U(0, 1) per shape, in units of each
    sphere channel's spread over the training skeletons) while the target stays the clean SDF. ``finetune`` starts
    from a checkpoint's weights and trains its decoder only: the encoder, and so every latent a diffusion model
    learnt from that checkpoint, stays (``skellab train autoencoder --finetune CKPT``).
    """

    name = "autoencoder"

    def __init__(self, root: str | os.PathLike, model_config: AutoencoderConfig, sampling: Any, *, seed: int = 0,
                 val_batch_size: int = 4, finetune: str | os.PathLike | None = None) -> None:
        self.checkpoint_format = AUTOENCODER_FORMAT
        self.root, self.seed, self.sampling = Path(root), int(seed), sampling
        # fine-tuning: start from these weights and train the decoder only (the encoder, so every latent, stays)
        self.finetune = None if finetune is None else Path(finetune)
        self._finetune_sha = None if self.finetune is None else file_sha256(self.finetune)  # read once
        self._encoder_of: str | None = None  # the file whose encoder this is (set by build_model when fine-tuning)
        self.val_batch_size = max(1, int(val_batch_size))
        self.store = MedSDF.open(root)
        self.classes = self.store.classes
        self.model_config = model_config.replace(num_classes=len(self.classes))
        ck = self.model_config.skeleton_checkpoint
        self.skeleton_checkpoint = None if ck is None else Path(ck)
        if self.model_config.skeleton_method == "learned" and self.skeleton_checkpoint is not None \
                and not self.skeleton_checkpoint.is_file():
            raise SkellabError(f"learned-skeleton checkpoint not found: {self.skeleton_checkpoint} "
                               f"(train it first: skellab train skeleton)")
        self._skeleton_sha = None if self.skeleton_checkpoint is None \
            else file_sha256(self.skeleton_checkpoint)[:16]  # read once: config_dict() runs at every checkpoint
        bc = SDFBatchConfig(num_surface=self.model_config.num_surface, num_queries=sampling.num_queries,
                            near_fraction=sampling.near_fraction)
        self.ds = MedSDFDataset(root, split="train", config=bc, seed=seed)
        try:
            self.val = MedSDFDataset(root, split="val", config=bc, seed=seed + 1)
        except SkellabError:
            self.val = None
        self.skel: dict[str, tuple[np.ndarray, np.ndarray]] | None = None
        self.sphere_spread: torch.Tensor | None = None  # (4,) std of x, y, z, r over the training skeletons

    def config_dict(self) -> dict[str, Any]:
        model = {k: v for k, v in self.model_config.to_dict().items() if k != "skeleton_checkpoint"}  # path-free
        out = {"model": model, "data": asdict(self.sampling), "skeleton_checkpoint_sha256": self._skeleton_sha}
        if self.finetune is not None:
            out["finetune_sha256"] = self._finetune_sha[:16]
        return out

    def data_fingerprint(self) -> str:
        return dataset_fingerprint(self.root)

    def num_items(self) -> int:
        return len(self.ds)

    def prepare(self, out, device, dist: DistContext, progress: bool) -> None:
        if self.skel is not None:
            return
        ids = self.ds.ids + (self.val.ids if self.val is not None else [])
        self.skel = skeletons_for(self.store, ids, k=self.model_config.num_tokens,
                                  num_surface=self.model_config.num_surface,
                                  method=self.model_config.skeleton_method,
                                  cache=None if out is None else out / "skeletons.npz", progress=progress,
                                  skeleton_config=None if self.skeleton_checkpoint is None else str(self.skeleton_checkpoint))
        spheres = np.concatenate([np.concatenate([self.skel[i][0], self.skel[i][1][:, None]], axis=1) for i in self.ds.ids])
        self.sphere_spread = torch.from_numpy(spheres.std(axis=0)).float()

    def build_model(self) -> nn.Module:
        model = SkeletalAutoencoder(config=self.model_config, classes=self.classes)
        if self.finetune is not None:
            ckpt = read_checkpoint(self.finetune, format=AUTOENCODER_FORMAT, kind="autoencoder")
            try:
                model.load_state_dict(ckpt["state_dict"])
            except (KeyError, RuntimeError) as exc:
                raise SkellabError(f"{self.finetune}: its weights do not fit the fine-tuning config") from exc
            model.encoder.requires_grad_(False)
            src = ckpt.get("train") if isinstance(ckpt.get("train"), dict) else {}
            self._encoder_of = src.get("encoder_of_sha256") or self._finetune_sha  # a fine-tune's source's
        return model

    def _batch(self, ds, items: Sequence[tuple[int, int]], device) -> dict[str, Any]:
        rows = []
        for i, e in items:
            ds.set_epoch(e)
            rows.append(ds[i])
        b: dict[str, Any] = {k: torch.stack([r[k] for r in rows]).to(device)
                             for k in ("surface", "normals", "queries", "sdf", "class_index")}
        b["centers"] = torch.from_numpy(np.stack([self.skel[r["shape_id"]][0] for r in rows])).to(device)
        b["radii"] = torch.from_numpy(np.stack([self.skel[r["shape_id"]][1] for r in rows])).to(device)
        return b

    def make_batch(self, items, positions, step, device):
        b = self._batch(self.ds, items, device)
        if self.model_config.sphere_noise > 0:  # per sample: the spheres' noise and its scale u ~ U(0, 1)
            gens = [_gen(self.seed, "sphere-noise", step, p) for p in positions]
            K = self.model_config.num_tokens
            b["sphere_noise"] = torch.stack([torch.randn(K, 4, generator=g) for g in gens]).to(device)
            b["sphere_scale"] = torch.cat([torch.rand(1, generator=g) for g in gens]).to(device)
        return b

    def compute_loss(self, model, batch):
        with torch.set_grad_enabled(torch.is_grad_enabled() and self.finetune is None):  # a frozen encoder: no graph
            lat = model.encode(batch["surface"], batch["normals"], batch["centers"], batch["radii"], batch["class_index"])
        if "sphere_noise" in batch:  # validation batches come without: the clean reconstruction
            lat = perturb_spheres(lat, batch["sphere_noise"], batch["sphere_scale"] * self.model_config.sphere_noise,
                                  self.sphere_spread)
        return model.loss(lat, batch["queries"], batch["sdf"])

    @torch.no_grad()
    def validate(self, model, device):
        if self.val is None:
            return {}
        model.eval()
        bs = self.val_batch_size
        losses, weights = [], []
        for s in range(0, len(self.val), bs):
            items = [(i, 0) for i in range(s, min(s + bs, len(self.val)))]
            losses.append(float(self.compute_loss(model, self._batch(self.val, items, device))["sdf"]))
            weights.append(len(items))
        return {"sdf": float(np.average(losses, weights=weights))}

    def payload(self, model, *, step, metrics):
        train: dict[str, Any] = {"sampling": asdict(self.sampling)}
        if self.model_config.sphere_noise > 0 and self.sphere_spread is not None:
            train["sphere_spread"] = [float(v) for v in self.sphere_spread]
        if self.finetune is not None:  # the encoder is the source's, and so is every latent: a diffusion model of it pairs
            train["finetuned_from_sha256"] = self._finetune_sha
            train["encoder_of_sha256"] = self._encoder_of
        return autoencoder_payload(model, train_config=train, step=step, metrics=metrics)


# ---------------------------------------------------------------------- denoising
class DenoisingTask(TrainingTask):
    """Diffusion training of a token denoiser on a tensor of samples (S, K, D), already on any device.

    scheduler     : its parameterisation is what the network learns (EDM, DDPM, …)
    build         : ``() -> nn.Module`` (called after the engine seeds the RNG), or a ready module
    class_dropout : P(class → null) per sample, for classifier-free guidance
    payload_fn    : ``(model, step, metrics) -> checkpoint dict`` (default: the weights, format
                    ``skellab.denoiser_weights/1``)
    """

    name = "diffusion"

    def __init__(self, data: torch.Tensor, class_index: torch.Tensor | None, scheduler: Any,
                 build: Callable[[], nn.Module] | nn.Module, *, class_dropout: float = 0.0, seed: int = 0,
                 val_data: torch.Tensor | None = None, val_class_index: torch.Tensor | None = None,
                 config: dict[str, Any] | None = None, fingerprint: str | None = None,
                 payload_fn: Callable[..., dict[str, Any]] | None = None,
                 checkpoint_format: str = "skellab.denoiser_weights/1",
                 name: str = "diffusion") -> None:
        self.data, self.class_index, self.scheduler = data, class_index, scheduler
        self._build, self.class_dropout, self.seed = build, float(class_dropout), int(seed)
        self.val_data, self.val_class_index = val_data, val_class_index
        self._config = dict(config or {})
        self._fingerprint = fingerprint
        self._payload_fn = payload_fn
        self.checkpoint_format = checkpoint_format
        self.name = name

    def config_dict(self) -> dict[str, Any]:
        return {**self._config, "scheduler": dict(getattr(self.scheduler, "config", {})),
                "class_dropout": self.class_dropout}

    def data_fingerprint(self) -> str:
        if self._fingerprint is None:
            h = hashlib.sha256(self.data.detach().cpu().contiguous().numpy().tobytes())
            if self.class_index is not None:
                h.update(self.class_index.detach().cpu().numpy().tobytes())
            self._fingerprint = h.hexdigest()[:16]
        return self._fingerprint

    def num_items(self) -> int:
        return int(self.data.shape[0])

    def build_model(self) -> nn.Module:
        return self._build if isinstance(self._build, nn.Module) else self._build()

    def _noise(self, x0: torch.Tensor, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, bool]:
        t = self.scheduler.sample_training_timesteps(1, g, device=torch.device("cpu"))
        noise = torch.randn(tuple(x0.shape), generator=g)
        drop = bool(torch.rand((), generator=g) < self.class_dropout)
        return t, noise, drop

    def _make(self, data, classes, items, keys, device):
        idx = torch.tensor([i for i, _ in items], device=data.device)
        x0 = data[idx].to(device)
        draws = [self._noise(x0[j], _gen(*keys[j])) for j in range(len(items))]
        t = torch.cat([d[0] for d in draws]).to(device)
        noise = torch.stack([d[1] for d in draws]).to(device, x0.dtype)
        c = None
        if classes is not None:
            c = classes[idx].to(device)
            if self.class_dropout > 0:
                drop = torch.tensor([d[2] for d in draws], device=device)
                c = torch.where(drop, torch.full_like(c, -1), c)
        # self-conditioning's coin per sample (read only by a self-conditioned denoiser): its own generator, so the
        # other draws, and every run without self-conditioning, stay what they were
        sc = torch.tensor([bool(torch.rand((), generator=_gen(*keys[j], "self-cond")) < SELF_COND_RATE)
                           for j in range(len(items))], device=device)
        return {"x0": x0, "t": t, "noise": noise, "class_index": c, "self_cond": sc}

    def make_batch(self, items, positions, step, device):
        keys = [(self.seed, "noise", step, p) for p in positions]
        return self._make(self.data, self.class_index, items, keys, device)

    def compute_loss(self, model, batch):
        sch = self.scheduler
        x0, t, noise = batch["x0"], batch["t"], batch["noise"]
        cfg = getattr(getattr(model, "module", model), "config", None)  # DDP wraps the denoiser
        channels = getattr(cfg, "channels", "all")
        # a stage of a two-stage model learns some channels of the whole tokens (the feature stage: given the spheres)
        x0, noise, context = split_channels(channels, x0, noise)
        x_t = sch.add_noise(x0, noise, t)
        x_in, cond = sch.scale_model_input(x_t, t)
        kw = {} if context is None else {"context": context}
        if getattr(cfg, "self_condition", False):
            kw["self_cond"] = self_condition_input(model, sch, x_t, x_in, cond, t, batch, kw)
        out = model(x_in, cond, batch["class_index"], **kw)
        target = sch.training_target(x0, noise, t)
        w = sch.training_weight(t).to(x0.device, out.dtype).reshape(-1, *([1] * (out.ndim - 1)))
        err = (out.float() - target) ** 2
        cw = cfg.channel_weights() if hasattr(cfg, "channel_weights") else None
        if cw is not None:  # DenoiserConfig.sphere_weight: spheres vs features (mean weight 1)
            err = err * cw.to(err.device)
        return {"total": (w * err).mean()}

    @torch.no_grad()
    def validate(self, model, device):
        if self.val_data is None or self.val_data.shape[0] == 0:
            return {}
        model.eval()
        total, n = 0.0, 0
        for s in range(0, self.val_data.shape[0], 64):  # fixed noise per validation sample
            items = [(i, 0) for i in range(s, min(s + 64, self.val_data.shape[0]))]
            keys = [(self.seed, "val-noise", i) for i, _ in items]
            b = self._make(self.val_data, self.val_class_index, items, keys, device)
            b["class_index"] = None if self.val_class_index is None else self.val_class_index[
                torch.tensor([i for i, _ in items])].to(device)
            total += float(self.compute_loss(model, b)["total"]) * len(items)
            n += len(items)
        return {"loss": total / n}

    def payload(self, model, *, step, metrics):
        if self._payload_fn is not None:
            return self._payload_fn(model, step=step, metrics=metrics)
        cfg = getattr(model, "config", None)  # a bare denoiser: weights, its config if it has one
        return {"format": self.checkpoint_format, "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
                "config": cfg.to_dict() if hasattr(cfg, "to_dict") else None, "step": int(step), "metrics": dict(metrics)}
