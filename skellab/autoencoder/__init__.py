"""The skeletal latent autoencoder: surface + skeleton → K skeletal tokens → truncated SDF."""

from .evaluate import evaluate_autoencoder, sphere_union_mesh
from .model import AutoencoderConfig, Latent, SkeletalAutoencoder, fourier_features, sphere_union_sdf
from .train import (
    CHECKPOINT_FORMAT,
    DEFAULT_WEIGHTS,
    TrainConfig,
    default_config,
    encode_points,
    encode_shapes,
    skeletons_for,
    load_autoencoder,
    save_autoencoder,
    tiny_config,
    train_autoencoder,
)

__all__ = [
    "AutoencoderConfig",
    "Latent",
    "SkeletalAutoencoder",
    "fourier_features",
    "sphere_union_sdf",
    "CHECKPOINT_FORMAT",
    "DEFAULT_WEIGHTS",
    "TrainConfig",
    "default_config",
    "tiny_config",
    "train_autoencoder",
    "save_autoencoder",
    "load_autoencoder",
    "encode_points",
    "encode_shapes",
    "skeletons_for",
    "evaluate_autoencoder",
    "sphere_union_mesh",
]
