"""Metrics: reconstruction (Chamfer, EMD, F-score, Hausdorff), with explicit conventions."""

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
    "CHAMFER_CONVENTIONS",
    "chamfer_distance",
    "emd",
    "f_score",
    "hausdorff",
    "precision_recall",
    "reconstruction_metrics",
    "sample_points",
]
