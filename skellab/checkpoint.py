"""Checkpoint files shared by every model: atomic writes, safe reads, one-line errors.

A checkpoint is a plain dict saved with ``torch.save`` that ``torch.load(weights_only=True)``
can read back (tensors, numbers, strings, lists, dicts), always with a ``"format"`` tag
such as ``"skellab.autoencoder/1"`` and the ``"config"`` the model was built from.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping

import torch

from .errors import SkellabError
from .runtime import atomic_path, check_regular_file
from .schema import validate_config


def write_checkpoint(path: str | os.PathLike, payload: dict[str, Any]) -> Path:
    """Save ``payload`` (which must carry a ``"format"`` tag) to ``path`` atomically (temp file + rename)."""
    if "format" not in payload:
        raise SkellabError("a checkpoint payload needs a 'format' tag")
    with atomic_path(path) as tmp:
        save_bytes(payload, tmp)
    return Path(path)


def save_bytes(obj: Any, path: str | os.PathLike) -> None:
    """``torch.save`` through an open file: the same object gives the same bytes (saving to a
    path would record the (random) temporary file name inside the archive)."""
    with open(path, "wb") as fh:
        torch.save(obj, fh)


def read_checkpoint(path: str | os.PathLike, *, format: str, kind: str, config_class: type | None = None,
                    config_ranges: Mapping[str, tuple[Any, Any]] | None = None) -> dict[str, Any]:
    """Load a checkpoint written by :func:`write_checkpoint` and check its format tag.

    ``kind`` names the model in error messages ("autoencoder", "diffusion", …). A missing
    file, a FIFO or device, unreadable bytes, or another format → :class:`SkellabError` (one
    line). With ``config_class`` (a dataclass) ``payload["config"]`` is checked too (types and
    ranges, see :func:`checkpoint_config`); the payload is returned unchanged.
    """
    p = Path(path)
    if not p.exists():
        raise SkellabError(f"{kind} checkpoint not found: {p}")
    if not p.is_file():  # a FIFO, device or folder: refused before anything opens it
        check_regular_file(p, what=f"{kind} checkpoint")
    try:
        payload = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001  (pickle, zip, EOF, OS errors: all mean "unreadable")
        raise SkellabError(f"{p}: corrupt or unreadable checkpoint ({exc.__class__.__name__})") from exc
    if not isinstance(payload, dict) or payload.get("format") != format:
        found = payload.get("format") if isinstance(payload, dict) else type(payload).__name__
        raise SkellabError(f"{p}: not a {format} checkpoint (format {found!r})")
    if config_class is not None:
        checkpoint_config(payload, config_class, path=p, ranges=config_ranges)
    return payload


def checkpoint_config(payload: dict[str, Any], config_class: type, *, path: str | os.PathLike = "checkpoint",
                      key: str = "config", ranges: Mapping[str, tuple[Any, Any]] | None = None,
                      allow_unknown: bool = False) -> Any:
    """``payload[key]`` checked against dataclass ``config_class`` and built: types from its
    annotations, ranges from ``ranges`` / field metadata / defaults (:mod:`skellab.schema`).
    A missing or wrong config → one-line SkellabError naming the file and the field."""
    if key not in payload:
        raise SkellabError(f"{path}: checkpoint has no {key!r} entry")
    return validate_config(config_class, payload[key], where=f"{path}: {key}", ranges=ranges,
                           allow_unknown=allow_unknown)
