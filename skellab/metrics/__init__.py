"""Metrics with explicit conventions: reconstruction (Chamfer, EMD, F-score, Hausdorff) and
generation (MMD, COV, 1-NNA after PointFlow; Betti numbers)."""

from .generation import betti_error, betti_numbers, coverage, generation_metrics, mmd, one_nna, pairwise_distances

from .reconstruction import (
    CHAMFER_CONVENTIONS,
    chamfer_distance,
    emd,
    f_score,
    hausdorff,
    precision_recall,
    reconstruction_metrics,
    sample_points,
)

__all__ = [
    "betti_error",
    "betti_numbers",
    "coverage",
    "generation_metrics",
    "mmd",
    "one_nna",
    "pairwise_distances",
    "CHAMFER_CONVENTIONS",
    "chamfer_distance",
    "emd",
    "f_score",
    "hausdorff",
    "precision_recall",
    "reconstruction_metrics",
    "sample_points",
]
