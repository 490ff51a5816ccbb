"""Test-time refinement: fit a latent's token features to one shape's exact SDF, spheres fixed.

The encoder maps surface points to token features in one pass; on anatomy unlike its training data those
features miss detail the decoder could represent. :func:`refine_features` keeps the skeletal spheres
(centres, radii) and the network fixed and runs a few hundred Adam steps on the ``K × F`` features
alone, minimising the autoencoder's own training loss — the MSE of the truncated SDF in units of τ —
on exact signed-distance samples of the shape (near-surface band + uniform, as a MedSDF sample file
holds; :func:`skellab.data.sampling.sample_sdf`). This is DeepSDF-style inference by optimisation,
started from the encoder's guess instead of from zero. Because the spheres do not move, the union of
the same spheres stays the prior the network is compared with, and the gain over it is what the
features carry. It needs the shape's SDF, so it serves reconstruction (``skellab reconstruct
--refine``), not generation. :func:`refine_on_points` needs only an oriented surface point cloud — what the
encoder itself reads — and fits the features to the SDF approximated from it
(:func:`skellab.data.sampling.point_cloud_sdf`).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from ..data.sampling import SampleConfig, check_point_cloud, point_cloud_queries, point_cloud_sdf, sample_sdf
from ..data.shape import Shape
from ..errors import SkellabError
from .model import Latent, SkeletalAutoencoder

__all__ = ["REFINE_SCHEDULES", "REFINE_SAMPLES", "refine_features", "refine_on_points", "refine_on_shape"]

#: the SDF samples :func:`refine_on_shape` fits: 20,000 in the near-surface band (σ 0.005, 0.02, 0.06, as the
#: training samples) and 2,000 uniform in the box (surface points are not used)
REFINE_SAMPLES = SampleConfig(surface_points=1, near_samples=20000, uniform_samples=2000)


#: learning-rate schedules of :func:`refine_features`: cosine decay from ``lr`` to 0 over the steps, or constant
REFINE_SCHEDULES = ("cosine", "constant")


def refine_features(model: SkeletalAutoencoder, latent: Latent, queries: Any, sdf: Any, *, steps: int = 500,
                    lr: float = 0.3, schedule: str = "cosine", sphere_lr: float = 0.0, batch: int = 4096,
                    seed: int = 0) -> tuple[Latent, dict[str, Any]]:
    """``steps`` Adam steps on ``latent``'s token features against SDF samples; the network fixed, the spheres too
    unless ``sphere_lr`` > 0.

    latent  : batch-1 :class:`Latent` (e.g. from :func:`~.encode.encode_points`)
    queries : (N, 3) points in the latent's normalised frame; sdf : (N,) signed distance there (negative
              inside): exact (:func:`refine_on_shape`) or implied by a point cloud (:func:`refine_on_points`)
    lr, schedule : Adam's learning rate, decayed to 0 along a cosine over the ``steps`` (``"cosine"``,
              torch's ``CosineAnnealingLR``) or held (``"constant"``). The defaults (0.3, cosine) were chosen on five
              hard unseen shapes: at 500 steps they beat lr 0.03 held constant at 500 and at 1,000 steps
              (``benchmarks/README.md``, "test-time refinement")
    sphere_lr : 0 (default) keeps the spheres fixed, so their union stays the prior the network is compared
              with; > 0 also fits the spheres, the log-radii at this learning rate and the centres at a tenth of
              it (same schedule): the skeleton adapts to the shape, which helps most where the encoder's skeleton
              misses it (thin walls)
    batch   : queries per step, drawn with replacement from a generator seeded by ``seed``
    returns : (refined batch-1 :class:`Latent` on the model's device, detached; ``{"steps", "lr", "schedule",
              "sphere_lr", "batch", "loss_first", "loss_last"}``: the loss (MSE of the truncated SDF / τ) of the first
              and the last step's batch). Deterministic given ``seed`` on a given machine; the model's weights and
              gradients are not touched; runs in fp32.
    """
    if not isinstance(latent, Latent) or latent.batch_size != 1:
        raise SkellabError("refine one shape at a time: pass a Latent with batch size 1 (e.g. latents[i])")
    for name, value, low in (("steps", steps, 0), ("batch", batch, 1)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
            raise SkellabError(f"{name} must be an integer >= {low}, got {value!r}")
    if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not np.isfinite(lr) or lr <= 0:
        raise SkellabError(f"lr must be a number > 0, got {lr!r}")
    if schedule not in REFINE_SCHEDULES:
        raise SkellabError(f"schedule must be one of {', '.join(REFINE_SCHEDULES)}, got {schedule!r}")
    if (isinstance(sphere_lr, bool) or not isinstance(sphere_lr, (int, float)) or not np.isfinite(sphere_lr)
            or sphere_lr < 0):
        raise SkellabError(f"sphere_lr must be a number >= 0, got {sphere_lr!r}")
    dev = next(model.parameters()).device
    q = torch.as_tensor(np.asarray(queries, dtype=np.float32), device=dev)
    s = torch.as_tensor(np.asarray(sdf, dtype=np.float32), device=dev)
    if q.ndim != 2 or q.shape[-1] != 3 or q.shape[0] == 0:
        raise SkellabError(f"queries must be a non-empty (N, 3) array, got {tuple(q.shape)}")
    if tuple(s.shape) != (q.shape[0],):
        raise SkellabError(f"sdf must have shape ({q.shape[0]},) to match the queries, got {tuple(s.shape)}")
    if not (bool(torch.isfinite(q).all()) and bool(torch.isfinite(s).all())):
        raise SkellabError("queries or sdf contain NaN or infinite values")
    tau = float(model.config.truncation)
    target = (s / tau).clamp(-1.0, 1.0)
    tokens = latent.tokens.detach().to(dev).float()
    features = tokens[..., 4:].clone().requires_grad_(True)
    centers = tokens[..., :3].clone().requires_grad_(sphere_lr > 0)
    log_radii = tokens[..., 3:4].clamp_min(1e-6).log().requires_grad_(sphere_lr > 0)  # radii stay positive
    groups = [{"params": [features], "lr": float(lr)}]
    if sphere_lr > 0:
        groups += [{"params": [log_radii], "lr": float(sphere_lr)}, {"params": [centers], "lr": 0.1 * float(sphere_lr)}]
    params = [p for group in groups for p in group["params"]]
    optimizer = torch.optim.Adam(groups)
    scheduler = (torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(int(steps), 1))
                 if schedule == "cosine" else None)

    def current_spheres() -> torch.Tensor:
        return tokens[..., :4] if sphere_lr == 0 else torch.cat([centers, log_radii.exp()], dim=-1)

    generator = torch.Generator(device="cpu").manual_seed(int(seed))
    was_training = model.training
    model.eval()
    first = last = float("nan")
    try:
        for step in range(int(steps)):
            idx = torch.randint(q.shape[0], (int(batch),), generator=generator).to(dev)
            current = Latent(torch.cat([current_spheres(), features], dim=-1), latent.class_index)
            loss = torch.nn.functional.mse_loss(model.decode_raw(current, q[idx][None]), target[idx][None])
            for p, grad in zip(params, torch.autograd.grad(loss, params)):  # no gradient reaches the network's weights
                p.grad = grad
            optimizer.step()
            if scheduler is not None:
                scheduler.step()
            last = float(loss.detach())
            if step == 0:
                first = last
    finally:
        model.train(was_training)
    refined = Latent(torch.cat([current_spheres().detach(), features.detach()], dim=-1), latent.class_index)
    return refined, {"steps": int(steps), "lr": float(lr), "schedule": schedule, "sphere_lr": float(sphere_lr),
                     "batch": int(batch), "loss_first": first, "loss_last": last}


def refine_on_shape(model: SkeletalAutoencoder, latent: Latent, shape: Shape, *, steps: int = 500, lr: float = 0.3,
                    schedule: str = "cosine", sphere_lr: float = 0.0, seed: int = 0) -> tuple[Latent, dict[str, Any]]:
    """:func:`refine_features` on :data:`REFINE_SAMPLES` exact SDF samples of ``shape`` (its normalised frame, the
    frame ``latent`` was encoded in; drawn with ``seed``)."""
    samples = sample_sdf(shape, config=REFINE_SAMPLES, seed=seed)
    return refine_features(model, latent, samples["sdf_points"], samples["sdf_values"], steps=steps, lr=lr,
                           schedule=schedule, sphere_lr=sphere_lr, seed=seed)


def refine_on_points(model: SkeletalAutoencoder, latent: Latent, points: Any, normals: Any, *, steps: int = 500,
                     lr: float = 0.3, schedule: str = "cosine", sphere_lr: float = 0.0,
                     seed: int = 0) -> tuple[Latent, dict[str, Any]]:
    """:func:`refine_features` on the SDF an oriented surface point cloud implies, where no mesh is known.

    points, normals : (P, 3) surface samples and outward normals in the latent's normalised frame (e.g. the
                      points the latent was encoded from, or a denser scan of the same surface)
    The targets are :func:`~skellab.data.sampling.point_cloud_sdf` at
    :func:`~skellab.data.sampling.point_cloud_queries` (as many
    queries as :data:`REFINE_SAMPLES`, drawn with ``seed``): an approximation of the exact SDF that
    :func:`refine_on_shape` fits, made from the encoder's own kind of input.
    """
    points, normals = check_point_cloud(points, normals)
    queries = point_cloud_queries(points, seed=seed, config=REFINE_SAMPLES)
    sdf = point_cloud_sdf(points, normals, queries)
    return refine_features(model, latent, queries, sdf, steps=steps, lr=lr, schedule=schedule, sphere_lr=sphere_lr,
                           seed=seed)
