"""Shapes and datasets: loaders, packaged and atlas anatomy, procedural families, SDF sampling, MedSDF.

Importing the package registers the detailed and thin-walled families of :mod:`.detail` with
:func:`skellab.data.procedural.make_shape`.
"""

from . import detail  # noqa: F401  (registers its families)
