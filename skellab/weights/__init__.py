"""The shipped weights: one registry (name → file, config, metrics, sha256), offline.

Each model lives here as ``<name>.pt`` (a ``torch.load(weights_only=True)``-safe dict) beside
its index ``<name>.json`` (format, sha256, bytes, parameters, config, classes, training record,
measured metrics), written by :func:`skellab.train.release_weights`. Every loader takes
``path=None`` to mean "the shipped weights", through :func:`weights_path`::

    from skellab.weights import weights_path, weights_info, NAMES
    weights_path("autoencoder")              # .../skellab/weights/autoencoder.pt
    weights_info("diffusion")["metrics"]     # the measured generation table
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..errors import SkellabError

__all__ = ["WEIGHTS_DIR", "NAMES", "weights_path", "weights_info", "registry"]

WEIGHTS_DIR = Path(__file__).resolve().parent

#: name → what it is; the files are ``<name>.pt`` + ``<name>.json`` in :data:`WEIGHTS_DIR`.
NAMES = {
    "autoencoder": "skeletal latent autoencoder (medial skeleton tokens + sphere-union prior)",
    "diffusion": "latent diffusion model over the autoencoder's token sets",
    "skeleton_learned": "learned (Point2Skeleton-style) skeleton network",
    "autoencoder_surface": "ablation: surface-point tokens, no sphere prior (SPSDF-like)",
    "diffusion_surface": "ablation: diffusion over the surface-point autoencoder's latents",
    "autoencoder_kernel": "the reconstruction model (skellab reconstruct's default): kernel decoder (k nearest "
                          "spheres, no attention), trained on MedSDF-fidelity; not for generation (a diffusion model "
                          "on its latents generated no better than the shipped pair, so none ships)",
}


def _check(name: str) -> str:
    if name not in NAMES:
        raise SkellabError(f"unknown shipped weights {name!r}; known: {', '.join(NAMES)}")
    return name


def weights_path(name: str) -> Path:
    """Path of the shipped checkpoint ``name`` (one of :data:`NAMES`)."""
    return WEIGHTS_DIR / f"{_check(name)}.pt"


def weights_info(name: str) -> dict[str, Any]:
    """The index of the shipped checkpoint ``name``: format, sha256, config, classes, training, metrics."""
    path = WEIGHTS_DIR / f"{_check(name)}.json"
    try:
        return json.loads(path.read_text())
    except FileNotFoundError as exc:
        raise SkellabError(f"{path}: index of the shipped weights {name!r} is missing") from exc
    except json.JSONDecodeError as exc:
        raise SkellabError(f"{path}: corrupt weights index ({exc.msg})") from exc


def registry() -> dict[str, dict[str, Any]]:
    """Every shipped checkpoint present: ``{name: {"path", "sha256", "bytes", "description"}}``."""
    out = {}
    for name, what in NAMES.items():
        p = weights_path(name)
        if p.is_file():
            info = weights_info(name)
            out[name] = {"path": p, "sha256": info.get("sha256"), "bytes": info.get("bytes"), "description": what}
    return out
