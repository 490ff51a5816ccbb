"""Measuring the models: reconstruction (autoencoder vs its sphere-union prior) and generation tables.

* :func:`evaluate_autoencoder` — per-shape / per-class reconstruction metrics of an autoencoder
  and of the union of its skeletal spheres (what the network adds), :mod:`.autoencoder`;
* :func:`evaluate_generation` — skellab vs the point-diffusion baseline vs the surface-token
  ablation (MMD / COV / 1-NNA, Betti error), the library behind ``skellab evaluate``, :mod:`.generation`.
"""

from .autoencoder import evaluate_autoencoder
from .generation import (
           METRIC_KEYS,
           evaluate_generation,
           generation_table,
           shipped_results,
           train_baseline,
)

__all__ = ["evaluate_autoencoder", "METRIC_KEYS", "evaluate_generation", "generation_table", "shipped_results",
           "train_baseline"]
