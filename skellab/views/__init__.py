"""Views: k3d 3D widgets and matplotlib figures. Nothing here calls ``display()``.

Optional viewer packages (k3d, matplotlib) are imported inside the functions that
need them; a missing one raises :class:`~skellab.SkellabError` saying what to install.
``views`` depends on the rest of skellab and nothing depends on ``views``.
"""

from .course import (
    COURSE,
    generation_table_figure,
    held_out_status,
    latent_statistics_figure,
    offline_view,
    per_class_figure,
    pipeline_figure,
    read_generation_table,
    require_dataset,
    schedules_figure,
    solver_figure,
    trajectory_figure,
)
from .completion import CompletionWidget, completion_widget
from .k3d_views import mesh_view, points_view, skeleton_view, snapshot_html
from .plots import sdf_slices_figure
from .training import figure_png, mesh_gallery, nearest_reference_gallery, training_curves

__all__ = ["mesh_view", "points_view", "skeleton_view", "snapshot_html", "sdf_slices_figure", "training_curves",
           "mesh_gallery", "nearest_reference_gallery", "figure_png", "COURSE", "pipeline_figure", "require_dataset", "held_out_status", "offline_view",
           "schedules_figure", "trajectory_figure", "solver_figure", "latent_statistics_figure",
           "generation_table_figure", "per_class_figure", "read_generation_table", "CompletionWidget",
           "completion_widget"]
