"""Views: k3d 3D widgets and matplotlib figures. Nothing here calls ``display()``.

Optional viewer packages (k3d, matplotlib) are imported inside the functions that
need them; a missing one raises :class:`~skellab.SkellabError` saying what to install.
``views`` depends on the rest of skellab and nothing depends on ``views``.
"""

from .completion import CompletionWidget, completion_widget
from .k3d_views import mesh_view, points_view, skeleton_view, snapshot_html
from .plots import sdf_slices_figure
from .training import mesh_gallery, training_curves

__all__ = ["mesh_view", "points_view", "skeleton_view", "snapshot_html", "sdf_slices_figure", "training_curves",
           "mesh_gallery", "CompletionWidget", "completion_widget"]
