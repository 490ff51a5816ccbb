"""Device and randomness: resolved explicitly, never at import time."""

from __future__ import annotations

import os
import tempfile
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import ContextManager, Iterator

import numpy as np
import torch

from .errors import SkellabError


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``"auto"`` → CUDA when available, else CPU; anything else is checked and returned."""
    if isinstance(device, torch.device):
        return device
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError as exc:
        raise SkellabError(f"unknown device {device!r}: use auto, cpu or cuda") from exc
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise SkellabError(f"device {device!r} requested but CUDA is not available on this machine")
    return dev


def make_generator(seed: int, device: str | torch.device = "cpu") -> torch.Generator:
    """A ``torch.Generator`` seeded with ``seed`` on ``device``."""
    gen = torch.Generator(device=resolve_device(device))
    gen.manual_seed(int(seed))
    return gen


def numpy_rng(seed: int) -> np.random.Generator:
    """A numpy ``Generator`` seeded with ``seed``."""
    return np.random.default_rng(int(seed))


def _fsync(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # e.g. directories on some platforms
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` only on success.

    Nothing half-written is ever left under the final name: on any exception the
    temporary file is removed and the original file (if any) is untouched.
    """
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{final.name}.", suffix=".tmp" + final.suffix, dir=final.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp_path, 0o666 & ~umask)  # mkstemp makes 0600 files; give the usual permissions
    try:
        yield tmp_path
        _fsync(tmp_path)  # the bytes are on disk before the name points at them
        os.replace(tmp_path, final)
        _fsync(final.parent)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


PRECISIONS = ("auto", "fp32", "bf16")


def cpu_has_fast_bf16() -> bool:
    """True when this CPU multiplies bf16 matrices natively (AMX tiles or AVX512-BF16).

    There, bf16 autocast roughly halves the decoder's cost; elsewhere (e.g. AVX2-only CPUs)
    it emulates bf16 and is several times *slower*, so ``precision="auto"`` stays fp32.
    """
    try:
        return bool(torch.cpu._is_amx_tile_supported() or torch.cpu._is_avx512_bf16_supported())
    except AttributeError:  # older torch: no way to ask, stay exact
        return False


def inference_autocast(device: torch.device | str, precision: str = "auto") -> ContextManager:
    """Autocast context for inference: ``"fp32"`` (exact), ``"bf16"``, or ``"auto"`` (bf16 on CUDA and
    on CPUs with native bf16 — :func:`cpu_has_fast_bf16` — fp32 elsewhere)."""
    if precision not in PRECISIONS:
        raise SkellabError(f"unknown precision {precision!r}: use {', '.join(PRECISIONS)}")
    dev = torch.device(device)
    if precision == "auto":
        precision = "bf16" if dev.type == "cuda" or (dev.type == "cpu" and cpu_has_fast_bf16()) else "fp32"
    if precision == "fp32":
        return nullcontext()
    return torch.autocast(device_type=dev.type, dtype=torch.bfloat16)

