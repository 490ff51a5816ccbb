"""Measuring the models: reconstruction (autoencoder vs its sphere-union prior) and generation tables.

* :func:`evaluate_autoencoder` — per-shape / per-class reconstruction metrics of an autoencoder
  and of the union of its skeletal spheres (what the network adds), :mod:`.autoencoder`;
* :func:`evaluate_fidelity` — network vs the prior of the same spheres on any shapes (unseen classes
  included) at ≥ 20k points, :mod:`.fidelity`;
* :func:`evaluate_generation` — skellab vs the point-diffusion baseline vs the surface-token
  ablation (MMD / COV / 1-NNA, Betti error), the library behind ``skellab evaluate``, :mod:`.generation`;
* :func:`evaluate_fresh` — the same methods against ``n`` fresh procedural shapes per family (seeds
  no dataset uses) with bootstrap intervals and plausibility statistics (components, genus, volume,
  solidity, skeleton junctions / leaves / depth), ``skellab evaluate --fresh N``, :mod:`.fresh`.
"""

from .autoencoder import evaluate_autoencoder
from .fidelity import FIDELITY_KEYS, evaluate_fidelity, fidelity_of_shape
from .fresh import METHODS as FRESH_METHODS
from .fresh import (
    FRESH_SEED0,
    TREE_FAMILIES,
    GalleryRow,
    bootstrap_metrics,
    evaluate_fresh,
    fresh_references,
    fresh_table,
    shape_statistics,
    skeleton_graph_measures,
)
from .generation import (
           METRIC_KEYS,
           TABLE_METHODS,
           evaluate_generation,
           generation_table,
           shipped_results,
           train_baseline,
)

__all__ = ["FRESH_METHODS", "evaluate_autoencoder", "evaluate_fidelity", "fidelity_of_shape", "FIDELITY_KEYS", "METRIC_KEYS", "TABLE_METHODS", "evaluate_generation", "generation_table", "shipped_results",
           "train_baseline", "FRESH_SEED0", "TREE_FAMILIES", "GalleryRow", "bootstrap_metrics", "evaluate_fresh",
           "fresh_references", "fresh_table", "shape_statistics", "skeleton_graph_measures"]
