"""skellab: skeletal latent diffusion for 3D medical shapes.

Nothing happens at import time: no seeding, no device choice, no downloads.
"""

from .errors import SkellabError

__version__ = "0.1.0"
__all__ = ["SkellabError", "__version__"]
