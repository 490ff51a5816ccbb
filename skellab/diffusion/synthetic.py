"""Synthetic token sets for developing and testing diffusion code without an autoencoder."""

from __future__ import annotations

import torch

from ..errors import SkellabError
from .schedulers import _randn

__all__ = ["make_synthetic_latents"]


def make_synthetic_latents(num_per_class: int = 64, *, num_classes: int = 2, num_tokens: int = 32,
                           token_dim: int = 16, noise: float = 0.1, separation: float = 2.0,
                           generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Synthetic token sets for development: class prototypes, randomly permuted and jittered.

    Each class c has a prototype token set P_c (K, D) = N(0, 0.5²) + an offset o_c with
    ‖o_c‖ = ``separation`` (so class means differ); a sample is P_c with its K tokens in
    random order plus N(0, noise²). Returns (latents (S, K, D), class_index (S,),
    prototypes (C, K, D)), S = num_per_class · num_classes, classes interleaved.
    """
    if num_per_class < 1 or num_classes < 1 or num_tokens < 1 or token_dim < 1:
        raise SkellabError("make_synthetic_latents: all sizes must be >= 1")
    offsets = _randn((num_classes, token_dim), generator, device="cpu")
    offsets = separation * offsets / offsets.norm(dim=-1, keepdim=True)
    protos = 0.5 * _randn((num_classes, num_tokens, token_dim), generator, device="cpu") + offsets[:, None]
    cls = torch.arange(num_classes).repeat(num_per_class)  # (S,)
    gdev = generator.device if generator is not None else "cpu"
    keys = torch.rand((cls.shape[0], num_tokens), generator=generator, device=gdev).cpu()
    perm = keys.argsort(dim=1)  # a random order of the K tokens per sample
    lat = torch.gather(protos[cls], 1, perm[..., None].expand(-1, -1, token_dim))
    lat = lat + noise * _randn(tuple(lat.shape), generator, device="cpu")
    return lat, cls, protos
