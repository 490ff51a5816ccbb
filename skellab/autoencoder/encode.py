"""Inference-time encoding: skeletons of stored or raw shapes, then tokens.

The skeleton method (and, for ``"learned"``, its checkpoint) comes from the model's own
config (:attr:`AutoencoderConfig.skeleton_method`), so a model trained on learned skeletons
is always encoded with them, whether it was just trained or loaded from a file.
"""

from __future__ import annotations

import hashlib
import os
import warnings
import zipfile
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from ..data.medsdf import MedSDF
from ..errors import SkellabError
from ..runtime import atomic_path, resolve_device
from ..skeleton import skeletonize
from .model import AutoencoderConfig, Latent, SkeletalAutoencoder

__all__ = ["skeletonize_batch", "skeletons_for", "trained_skeleton", "encode_shapes", "encode_points"]


def skeletonize_batch(points: torch.Tensor, normals: torch.Tensor, *, k: int, method: str,
                      config: Any = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, N, 3) oriented points → centers (B, k, 3), radii (B, k) (detached), via :func:`skellab.skeleton.skeletonize`."""
    out = skeletonize(points, normals, method=method, k=k, config=config, generator=None, device=points.device,
                      edges=False)
    return torch.stack([s.centers for s in out]).detach(), torch.stack([s.radii for s in out]).detach()


def trained_skeleton(config: AutoencoderConfig | SkeletalAutoencoder) -> tuple[str, Any]:
    """(skeleton method, its config — a checkpoint path for ``"learned"``) a model's tokens are made with."""
    cfg = config.config if isinstance(config, SkeletalAutoencoder) else config
    return cfg.skeleton_method, cfg.skeleton_checkpoint


def _read_cache(cache: Path) -> dict[str, np.ndarray]:
    """Every array of the skeleton cache ``cache``; an unreadable or corrupt cache counts as empty (with a
    warning): it is only a cache, so the skeletons are recomputed and the file is rewritten whole."""
    if not cache.exists():
        return {}
    try:
        if not cache.is_file():
            raise SkellabError(f"{cache}: not a regular file")
        with np.load(cache, allow_pickle=False) as z:
            return {key: np.asarray(z[key]) for key in z.files}
    except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile, SkellabError) as exc:
        warnings.warn(f"skeleton cache {cache} is unreadable ({exc.__class__.__name__}): recomputing the skeletons",
                      stacklevel=3)
        return {}


def skeletons_for(store: MedSDF, ids: Sequence[str], *, k: int, num_surface: int, method: str = "medial",
                  cache: str | os.PathLike | None = None, batch: int = 8, progress: bool = False,
                  skeleton_config: Any = None) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Skeletal spheres of each shape: ``{id: (centers (k, 3), radii (k,))}``, normalised frame.

    Computed from the first ``num_surface`` stored surface points (a random area-uniform
    subset) and their normals, deterministically (farthest-point sampling of the medial
    balls starts from the first kept ball), so a shape's skeleton never depends on
    which other shapes share its batch. With ``cache`` (an ``.npz`` path), results are read from
    and added to it, so each shape is skeletonized once; a corrupt cache, or entries of the wrong
    shape or with NaNs, are recomputed (with a warning for an unreadable file) and rewritten.
    ``skeleton_config`` is passed to
    :func:`skellab.skeleton.skeletonize` (for ``"learned"``: a checkpoint path, part of the cache key).
    """
    out: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    tag = f"{method}-k{k}-n{num_surface}"
    if skeleton_config is not None:
        ident = Path(skeleton_config).read_bytes() if isinstance(skeleton_config, (str, os.PathLike)) else repr(skeleton_config).encode()
        tag += "-" + hashlib.sha256(ident).hexdigest()[:12]
    cached = _read_cache(Path(cache)) if cache is not None else {}
    for sid in ids:
        c, r = cached.get(f"{tag}/{sid}/c"), cached.get(f"{tag}/{sid}/r")
        if (c is not None and r is not None and c.shape == (k, 3) and r.shape == (k,)
                and c.dtype.kind == r.dtype.kind == "f" and np.isfinite(c).all() and np.isfinite(r).all()):
            out[sid] = (c.astype(np.float32, copy=False), r.astype(np.float32, copy=False))  # else: recomputed
    todo = [sid for sid in ids if sid not in out]
    for s in tqdm(range(0, len(todo), batch), desc="skeletons", disable=not progress or not todo):
        chunk = todo[s : s + batch]
        arrays = [store.samples(sid) for sid in chunk]
        if any(len(a["surface_points"]) < num_surface for a in arrays):
            raise SkellabError(f"a shape in {store.root} has fewer than {num_surface} stored surface points")
        pts = torch.from_numpy(np.stack([a["surface_points"][:num_surface] for a in arrays]))
        nrm = torch.from_numpy(np.stack([a["surface_normals"][:num_surface] for a in arrays]))
        c, r = skeletonize_batch(pts, nrm, k=k, method=method, config=skeleton_config)
        for i, sid in enumerate(chunk):
            out[sid] = (c[i].cpu().numpy().astype(np.float32), r[i].cpu().numpy().astype(np.float32))
    if cache is not None and todo:
        old = dict(cached)
        for sid, (c, r) in out.items():
            old[f"{tag}/{sid}/c"], old[f"{tag}/{sid}/r"] = c, r
        with atomic_path(cache) as tmp:
            with open(tmp, "wb") as fh:
                np.savez(fh, **old)
    return out


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
) -> tuple[Latent, list[str]]:
    """Encode stored shapes: (Latent (len(ids), K, 4 + F), ids). Deterministic.

    Uses the first ``num_surface`` stored surface points of each shape (the same subset
    its skeleton is computed from), the skeleton method of the model's config, and the
    shape's class index in ``model.classes``.
    """
    store = dataset_root if isinstance(dataset_root, MedSDF) else MedSDF.open(dataset_root)
    ids = list(ids) if ids is not None else store.ids(split=split)
    if not ids:
        raise SkellabError("no shapes to encode")
    cfg = model.config
    dev = next(model.parameters()).device if device is None else resolve_device(device)
    method, skel_cfg = trained_skeleton(cfg)
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
        parts.append(model.encode(pts, nrm, c, r, ci))
    return Latent.cat(parts), ids


@torch.no_grad()
def encode_points(
    model: SkeletalAutoencoder,
    points: torch.Tensor,
    normals: torch.Tensor,
    *,
    class_index: torch.Tensor | int | None = None,
) -> Latent:
    """Skeletonize (with the model's own skeleton method) and encode raw oriented surface samples.

    points, normals : (N, 3) or (B, N, 3) in the normalised frame, N ≥ ``model.config.num_surface``
                      (the first ``num_surface`` points are used; pass a random subset)
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
        method, skel_cfg = trained_skeleton(cfg)
        c, r = skeletonize_batch(pts, nrm, k=cfg.num_tokens, method=method, config=skel_cfg)
    ci = None if class_index is None else torch.as_tensor(class_index, device=dev).long().reshape(-1).expand(pts.shape[0])
    return model.encode(pts, nrm, c, r, ci)
