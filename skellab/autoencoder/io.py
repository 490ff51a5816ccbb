"""Checkpoints of the skeletal latent autoencoder (format ``skellab.autoencoder/1``).

A plain dict, loadable with ``torch.load(weights_only=True)``::

    {"format": "skellab.autoencoder/1", "config": asdict(AutoencoderConfig),
     "state_dict": ..., "classes": [...], "train": {...} | None, "step": int, "metrics": {...}}

The config says how the tokens were made (``skeleton_method``, ``skeleton_checkpoint``).
Checkpoints written before those fields existed recorded them in ``train``; the loader
moves them into the config, so such a model still encodes with the skeleton it was trained on.
A run checkpoint (``checkpoint.pt`` of a training run) is the same dict plus ``"train_state"``.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, fields, is_dataclass
from pathlib import Path
from typing import Any

import torch

from ..checkpoint import build_with_weights, read_checkpoint, write_checkpoint
from ..errors import SkellabError
from ..runtime import resolve_device
from ..schema import SIZE_RANGE, validate_config
from ..weights import weights_path
from .model import AutoencoderConfig, SkeletalAutoencoder

__all__ = ["CHECKPOINT_FORMAT", "CONFIG_RANGES", "autoencoder_payload", "save_autoencoder", "load_autoencoder"]

CHECKPOINT_FORMAT = "skellab.autoencoder/1"

#: sane ranges of the :class:`AutoencoderConfig` fields that size tensors, checked when a checkpoint is
#: loaded and when ``skellab train --set`` changes them (:func:`skellab.schema.validate_config`)
CONFIG_RANGES: dict[str, tuple[Any, Any]] = {
    **{name: SIZE_RANGE for name in ("feature_dim", "num_surface", "encoder_width", "encoder_blocks", "group_k",
                                     "decoder_width", "decoder_heads", "decoder_blocks", "decoder_neighbors", "kernel_width",
                                     "mlp_ratio")},
    "num_tokens": (1, 4096),  # attention over K tokens: K = 4096 is already 16× the paper's 256
    "num_frequencies": (0, 32),
    "token_self_attention": (0, 64),
    "num_classes": (0, 65536),
}


@dataclass(frozen=True)
class _Entries:
    """The checkpoint entries besides config and weights, as they must be typed."""

    classes: tuple[str, ...] | None = None
    step: int = 0
    metrics: dict | None = None
    train: dict | None = None


def autoencoder_payload(model: SkeletalAutoencoder, *, train_config: Any = None, step: int = 0,
                        metrics: dict[str, Any] | None = None) -> dict[str, Any]:
    """The ``skellab.autoencoder/1`` checkpoint dict of ``model`` (config and classes embedded).

    ``train_config`` (a dataclass or dict, optional) is stored as the training record.
    """
    train = asdict(train_config) if is_dataclass(train_config) else train_config
    return {
        "format": CHECKPOINT_FORMAT,
        "config": model.config.to_dict(),
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "classes": list(model.classes),
        "train": None if train is None else dict(train),
        "step": int(step),
        "metrics": dict(metrics or {}),
    }


def save_autoencoder(path: str | os.PathLike, model: SkeletalAutoencoder, *, train_config: Any = None,
                     step: int = 0, metrics: dict[str, Any] | None = None) -> Path:
    """Write a ``skellab.autoencoder/1`` checkpoint atomically (config embedded); return its path."""
    write_checkpoint(path, autoencoder_payload(model, train_config=train_config, step=step, metrics=metrics))
    return Path(path)


def _config_of(ckpt: dict[str, Any], path: Path) -> AutoencoderConfig:
    raw = ckpt.get("config")
    if not isinstance(raw, dict):
        raise SkellabError(f"{path}: checkpoint config is missing or malformed")
    raw = dict(raw)
    train = ckpt.get("train") if isinstance(ckpt.get("train"), dict) else {}
    if "skeleton_method" not in raw:  # written before the config knew its skeleton: the training record says
        raw["skeleton_method"] = train.get("skeleton_method") or "medial"
        ck = train.get("skeleton_checkpoint")
        raw["skeleton_checkpoint"] = None if ck is None else str(ck)
    return validate_config(AutoencoderConfig, raw, where=f"{path}: config", ranges=CONFIG_RANGES)


def load_autoencoder(path: str | os.PathLike | None = None, *, device: str | torch.device = "cpu",
                     expect: AutoencoderConfig | None = None) -> SkeletalAutoencoder:
    """Rebuild a model from its checkpoint alone (default: the shipped ``weights_path("autoencoder")``).

    Returns the model in eval mode with ``.classes`` and ``.info`` (``step``, ``metrics``,
    ``train``). A missing or corrupt file, another format, a config the weights do not fit, or
    (with ``expect``) a different config → :class:`SkellabError`.
    """
    p = Path(path) if path is not None else weights_path("autoencoder")
    ckpt = read_checkpoint(p, format=CHECKPOINT_FORMAT, kind="autoencoder")
    entries = validate_config(_Entries, {k: ckpt[k] for k in ("classes", "step", "metrics", "train") if k in ckpt},
                              where=str(p))
    cfg = _config_of(ckpt, p)
    if expect is not None and expect != cfg:
        diff = [f.name for f in fields(cfg) if getattr(cfg, f.name) != getattr(expect, f.name)]
        raise SkellabError(f"{p}: checkpoint config differs from the expected one in {', '.join(diff)}")
    classes = list(entries.classes) if entries.classes else None
    model = build_with_weights(lambda: SkeletalAutoencoder(config=cfg, classes=classes), ckpt.get("state_dict"),
                               path=p)
    model.info = {k: ckpt.get(k) for k in ("step", "metrics", "train")}
    return model.to(resolve_device(device)).eval()
