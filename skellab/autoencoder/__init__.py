"""The skeletal latent autoencoder: surface + skeleton → K skeletal tokens → truncated SDF.

Model and config (:mod:`.model`), checkpoints (:mod:`.io`) and inference-time encoding
(:mod:`.encode`). Training is :mod:`skellab.train` (``skellab train autoencoder``,
:func:`skellab.train.train_autoencoder`); evaluation is :func:`skellab.evaluation.evaluate_autoencoder`.
"""

from .encode import (
    encode_points,
    encode_shapes,
    skeletonize_batch,
    skeletons_for,
    trained_skeleton,
)
from .io import (
    CHECKPOINT_FORMAT,
    autoencoder_payload,
    load_autoencoder,
    save_autoencoder,
)
from .model import (
    AutoencoderConfig,
    Latent,
    SkeletalAutoencoder,
    fourier_features,
    perturb_spheres,
    sphere_union_sdf,
)
from .refine import (
    REFINE_SAMPLES,
    REFINE_SCHEDULES,
    refine_features,
    refine_on_points,
    refine_on_shape,
)

__all__ = [
    "AutoencoderConfig",
    "Latent",
    "SkeletalAutoencoder",
    "fourier_features",
    "perturb_spheres",
    "sphere_union_sdf",
    "CHECKPOINT_FORMAT",
    "autoencoder_payload",
    "save_autoencoder",
    "load_autoencoder",
    "encode_points",
    "encode_shapes",
    "skeletonize_batch",
    "skeletons_for",
    "trained_skeleton",
    "REFINE_SAMPLES",
    "REFINE_SCHEDULES",
    "refine_features",
    "refine_on_points",
    "refine_on_shape",
]
