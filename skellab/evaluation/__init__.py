"""Measuring the models: reconstruction (autoencoder vs its sphere-union prior) and generation tables.

* :func:`evaluate_autoencoder` — per-shape / per-class reconstruction metrics of an autoencoder
  and of the union of its skeletal spheres (what the network adds), :mod:`.autoencoder`;
* :func:`evaluate_fidelity` — network vs the prior of the same spheres on any shapes (unseen classes
  included) at ≥ 20k points, :mod:`.fidelity`;
* :func:`evaluate_generation` — skellab vs the point-diffusion baseline vs the surface-token
  ablation (MMD / COV / 1-NNA, Betti error), the library behind ``skellab evaluate``, :mod:`.generation`.
"""

from .autoencoder import evaluate_autoencoder
from .fidelity import FIDELITY_KEYS, evaluate_fidelity, fidelity_of_shape
from .generation import (
           METRIC_KEYS,
           evaluate_generation,
           generation_table,
           shipped_results,
           train_baseline,
)

__all__ = ["evaluate_autoencoder", "evaluate_fidelity", "fidelity_of_shape", "FIDELITY_KEYS", "METRIC_KEYS", "evaluate_generation", "generation_table", "shipped_results",
           "train_baseline"]
