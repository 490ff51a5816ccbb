"""Checkpoint files shared by every model: atomic writes, safe reads, one-line errors.

A checkpoint is a plain dict saved with ``torch.save`` that ``torch.load(weights_only=True)``
can read back (tensors, numbers, strings, lists, dicts), always with a ``"format"`` tag
such as ``"skellab.autoencoder/1"`` and the ``"config"`` the model was built from.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable, Mapping

import torch

from .errors import SkellabError
from .runtime import atomic_path, check_regular_file
from .schema import validate_config


#: how a checkpoint may store its floating-point weights: as trained (fp32), or rounded to bfloat16 (half the
#: bytes; the loader copies them into the model's fp32 parameters, so inference code is unchanged)
WEIGHT_STORAGE = ("fp32", "bf16")


def stored_weights(state_dict: Mapping[str, torch.Tensor], storage: str = "fp32") -> dict[str, torch.Tensor]:
    """A state dict on the CPU, detached, its floating tensors in ``storage``'s dtype (:data:`WEIGHT_STORAGE`)."""
    if storage not in WEIGHT_STORAGE:
        raise SkellabError(f"unknown weight storage {storage!r}: use {' or '.join(WEIGHT_STORAGE)}")
    out = {}
    for k, v in state_dict.items():
        v = v.detach().cpu()
        out[k] = v.to(torch.bfloat16) if storage == "bf16" and v.is_floating_point() else v
    return out


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


def build_with_weights(build: Callable[[], torch.nn.Module], state_dict: Any, *,
                       path: str | os.PathLike = "checkpoint", strict: bool = True) -> torch.nn.Module:
    """``build()`` with ``state_dict`` loaded, checked before any real memory is allocated.

    ``build`` (a function of no arguments that makes the model from an already validated config)
    first runs on PyTorch's ``meta`` device: no storage, so even a config that asks for billions
    of parameters costs nothing. Its parameter names and shapes must match ``state_dict``
    (``strict``: the same names; else the checkpoint's must be a subset); otherwise a one-line
    SkellabError names the first mismatch. Only then is the model built for real and loaded.
    """
    if not isinstance(state_dict, Mapping) or not all(
            isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state_dict.items()):
        raise SkellabError(f"{path}: checkpoint weights are missing or malformed (state_dict)")
    with torch.device("meta"):
        shadow = build()
    want = {k: tuple(v.shape) for k, v in shadow.state_dict().items()}
    got = {k: tuple(v.shape) for k, v in state_dict.items()}
    problem = None
    missing = sorted(set(want) - set(got))
    unexpected = sorted(set(got) - set(want))
    if strict and missing:
        problem = f"missing {missing[0]!r}"
    elif unexpected:
        problem = f"unexpected {unexpected[0]!r}"
    else:
        wrong = [k for k in want if k in got and want[k] != got[k]]
        if wrong:
            problem = f"{wrong[0]!r} is {list(got[wrong[0]])}, the config needs {list(want[wrong[0]])}"
    if problem:
        raise SkellabError(f"{path}: checkpoint weights do not fit its config (other architecture?): {problem}")
    model = build()
    try:
        model.load_state_dict(state_dict, strict=strict)
    except (RuntimeError, TypeError, ValueError) as exc:
        raise SkellabError(f"{path}: checkpoint weights do not fit its config ({str(exc).splitlines()[0]})") from exc
    return model
