"""Generating new organs: sample skeletal latents, decode them to meshes and skeletons (METHOD §6–§7).

The library behind ``skellab generate``::

    organs = generate_organs("kidney", 4, steps=20, seed=0)   # list[GeneratedOrgan]
    write_generated(organs, "out/")     # out/organ_00.ply, out/organ_00_skeleton.npz, ...

Each organ goes through the whole pipeline:

1. the diffusion model (``skellab/weights/diffusion.pt``) samples ``n`` token sets
   (n, K, 4 + F) for the organ's class with classifier-free guidance, from one seeded
   generator (so the result depends only on ``seed``, ``steps``, ``guidance``, ``scheduler``);
2. each token set is a :class:`~skellab.autoencoder.Latent`: its first four numbers per
   token are a skeletal sphere (centre xyz, radius), which gives the :class:`Skeleton`
   (edges from :func:`skellab.skeleton.graph.skeleton_edges`, with points sampled on the
   generated surface as the recovery prior);
3. the autoencoder's decoder evaluates the SDF on an R³ grid, only near the skeleton
   (:func:`skellab.meshing.decode_grid_guided`), and marching cubes gives the mesh.

Everything is in the **normalised frame** (bbox centre at 0, max |coordinate| = 1, the
frame of the training shapes); generated organs have no original units. SDF sign:
negative inside.

Schedulers. The shipped model is trained with EDM (Karras et al. 2022), and the sampler
must match the training parameterisation:

* ``"edm"``  — EDM's deterministic Heun sampler (2·steps − 1 network calls), the paper's choice;
* ``"ddim"`` — deterministic DDIM (η = 0) is Euler's method on the same probability-flow
  ODE (Karras et al. 2022, §3 and eq. (4); Song et al. 2021, eq. (14)), so on an EDM
  checkpoint it is run as :class:`~skellab.diffusion.EDMScheduler` with ``solver="euler"``
  on EDM's σ schedule: ``steps`` network calls, first-order;
* ``"ddpm"`` — DDPM's ancestral sampler needs a network trained on the DDPM chain
  (ᾱ_t, integer timesteps); for an EDM checkpoint this is refused with a clear error.
  (A DDPM-trained checkpoint accepts ``ddpm`` and ``ddim``, and refuses ``edm``.)
"""

from __future__ import annotations

import hashlib
import os
import re
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import torch
import trimesh

from .autoencoder import Latent, SkeletalAutoencoder, load_autoencoder
from .diffusion import (
    DEFAULT_GUIDANCE,
    LatentDiffusion,
    load_diffusion,
    make_scheduler,
)
from .errors import SkellabError
from .metrics.generation import betti_numbers
from .meshing import (
    check_resolution,
    count_components,
    decode_grid_guided,
    export_mesh,
    extract_mesh,
)
from .runtime import atomic_path, make_generator, resolve_precision
from .skeleton.connect import DEFAULT_OVERLAP, connect_sphere_sets
from .skeleton.graph import skeleton_edges
from .skeleton.types import Skeleton
from .weights import weights_path

__all__ = ["SAMPLERS", "GENERATION_BATCH", "CONNECT_OVERLAP", "connect_latents", "load_keep", "GeneratedOrgan", "generate_organs", "generate_from_models", "organ_genus", "check_max_genus",
           "iter_generated",
           "decode_organ", "load_generation_models", "check_autoencoder_pair", "GENERATED_NAME", "sampling_scheduler", "list_organs", "write_generated"]

SAMPLERS = ("edm", "ddpm", "ddim")
GENERATION_BATCH = 16  # organs sampled (then decoded one by one) at a time: memory does not grow with n
#: overlap margin of :func:`connect_latents` (None switches it off): the default of every generator
CONNECT_OVERLAP = DEFAULT_OVERLAP


@dataclass
class GeneratedOrgan:
    """One generated organ.

    organ      : class name
    index      : position in its batch (file ``organ_{index:02d}.ply``)
    vertices   : (V, 3) float64 mesh vertices, normalised frame
    faces      : (F, 3) int64 triangles, oriented outward
    skeleton   : :class:`Skeleton` — the latent's K spheres (radii clamped at 0) and graph edges
    latent     : :class:`Latent` (1, K, 4 + F), the sampled tokens
    watertight : every edge of the mesh is shared by exactly two faces
    components : connected components of the mesh
    seconds    : wall time per stage: ``sample`` (this organ's share of the batched sampling),
                 ``decode`` (guided SDF grid), ``mesh`` (marching cubes), ``skeleton`` (graph)
    info       : sampler settings (``steps``, ``guidance``, ``autoguidance``, ``scheduler``, ``seed``, ``resolution``,
                 ``query_fraction`` of the grid decoded, ``connect``: the margin and the islands moved)
    """

    organ: str
    index: int
    vertices: np.ndarray
    faces: np.ndarray
    skeleton: Skeleton
    latent: Latent
    watertight: bool
    components: int
    seconds: dict[str, float] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)

    def to_trimesh(self) -> trimesh.Trimesh:
        return trimesh.Trimesh(self.vertices, self.faces, process=False)


# ---------------------------------------------------------------------- models
def load_generation_models(diffusion_checkpoint: str | os.PathLike | None = None,
                           autoencoder_checkpoint: str | os.PathLike | None = None, *,
                           device: str | torch.device = "cpu") -> tuple[LatentDiffusion, SkeletalAutoencoder]:
    """The diffusion model and the autoencoder whose latents it was trained on (default: the shipped ones).

    Missing or corrupt files, a pair whose token shapes disagree, or an autoencoder file other than
    the one the diffusion checkpoint records (:func:`check_autoencoder_pair`) → :class:`SkellabError`.
    """
    diff = load_diffusion(diffusion_checkpoint, device=device)
    ae_path = Path(autoencoder_checkpoint) if autoencoder_checkpoint is not None else weights_path("autoencoder")
    ae = load_autoencoder(ae_path, device=device)
    check_autoencoder_pair(diff, ae_path, autoencoder=ae)
    if diff.token_dim != ae.config.token_dim:
        raise SkellabError(f"the diffusion model makes {diff.token_dim}-number tokens but the "
                           f"autoencoder reads {ae.config.token_dim}: they were not trained together")
    if not diff.classes:
        raise SkellabError("the diffusion checkpoint has no class names: it cannot generate a named organ")
    return diff, ae


def check_autoencoder_pair(diffusion: LatentDiffusion, autoencoder_path: str | os.PathLike, *,
                           autoencoder: SkeletalAutoencoder | None = None) -> None:
    """Refuse an autoencoder file other than the one ``diffusion`` was trained on.

    A diffusion model trained by ``skellab train`` records the sha256 of its autoencoder's file
    (``info["train"]["autoencoder_sha256"]``, also in the shipped ``diffusion.pt``); another file →
    one-line :class:`SkellabError` (its latents would decode to nonsense). Without a record: a warning.
    A decoder fine-tuned from that file (``skellab train autoencoder --finetune``, which keeps the encoder and so
    every latent; ``autoencoder``, when given, is read for its ``info["train"]["encoder_of_sha256"]``) is accepted.
    """
    train = diffusion.info.get("train") if isinstance(diffusion.info, dict) else None
    recorded = train.get("autoencoder_sha256") if isinstance(train, dict) else None
    p = Path(autoencoder_path)
    if not isinstance(recorded, str) or len(recorded) < 12:
        warnings.warn(f"the diffusion checkpoint does not record the autoencoder it was trained with; "
                      f"cannot check that {p.name} is that one", stacklevel=3)
        return
    ae_train = (getattr(autoencoder, "info", None) or {}).get("train")
    encoder_of = ae_train.get("encoder_of_sha256") if isinstance(ae_train, dict) else None
    if isinstance(encoder_of, str) and encoder_of.startswith(recorded.lower()):
        return  # the same encoder, so the same latents: a decoder fine-tuned from the recorded file
    digest = hashlib.sha256()
    with open(p, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    actual = digest.hexdigest()
    if not actual.startswith(recorded.lower()):
        raise SkellabError(f"{p}: not the autoencoder this diffusion model was trained with (sha256 {actual[:12]}…, "
                           f"the model records {recorded[:12]}…): pass that one as --autoencoder")


def list_organs(checkpoint: str | os.PathLike | None = None) -> list[str]:
    """Organ classes the diffusion model can generate (default: the shipped checkpoint)."""
    diff = load_diffusion(checkpoint)
    return diff.organs


def sampling_scheduler(diffusion: LatentDiffusion, name: str = "edm") -> Any:
    """A sampler for ``diffusion`` by name, compatible with how its network was trained (module docstring).

    EDM checkpoint: ``edm`` → its Heun sampler; ``ddim`` → EDM Euler (= DDIM, η = 0, on the
    probability-flow ODE); ``ddpm`` → :class:`SkellabError`. DDPM checkpoint: ``ddpm`` → itself;
    ``ddim`` → DDIM on the same ᾱ_t chain; ``edm`` → :class:`SkellabError`.
    """
    if name not in SAMPLERS:
        raise SkellabError(f"unknown scheduler {name!r}: use {', '.join(SAMPLERS)}")
    cfg = dict(diffusion.scheduler.config)
    trained = cfg.pop("name")
    if trained == "edm":
        if name == "ddpm":
            raise SkellabError("scheduler 'ddpm' needs a network trained on the DDPM chain, but this checkpoint was "
                               "trained with EDM: use edm (Heun) or ddim (deterministic Euler, the same ODE)")
        return make_scheduler("edm", **{**cfg, "solver": "heun" if name == "edm" else "euler"})
    if name == "edm":
        raise SkellabError(f"scheduler 'edm' needs an EDM-trained network, but this checkpoint was trained with "
                           f"{trained}: use ddpm or ddim")
    keep = {k: v for k, v in cfg.items() if k not in ("eta", "num_steps")}
    return make_scheduler(name, **keep)


# ---------------------------------------------------------------------- generation
def _check_args(n: int, steps: int, guidance: float, scheduler: str, resolution: int) -> None:
    for name, value in (("n", n), ("steps", steps), ("resolution", resolution)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
            raise SkellabError(f"{name} must be an integer, got {value!r}")
    if n <= 0:
        raise SkellabError(f"n must be >= 1, got {n}")
    if steps <= 0:
        raise SkellabError(f"steps must be >= 1, got {steps}")
    if not (isinstance(guidance, (int, float)) and np.isfinite(guidance) and guidance >= 0):
        raise SkellabError(f"guidance must be a number >= 0, got {guidance!r}")
    if scheduler not in SAMPLERS:
        raise SkellabError(f"unknown scheduler {scheduler!r}: use {', '.join(SAMPLERS)}")
    check_resolution(resolution)


def decode_organ(autoencoder: SkeletalAutoencoder, latent: Latent, *, organ: str, index: int, resolution: int = 128,
                 largest_component: bool = True, seed: int = 0,
                 graph_points: int = 2048, precision: str = "auto") -> GeneratedOrgan:
    """One latent (batch size 1) → :class:`GeneratedOrgan` (mesh, skeleton, flags, timings).

    The grid's outermost layer is set to "outside", so a sample that reaches the box
    [-1.1, 1.1]³ is capped there and the mesh stays closed (``info["clipped_at_box"]``
    says it happened). A latent whose decoded SDF has no zero crossing raises
    :class:`SkellabError`.
    """
    t0 = time.perf_counter()
    # a sample that reaches the grid's faces would give an open mesh there: cap it at the box (outside = +τ),
    # inside the guided decoding so the cells that close it are decoded like any other surface cell
    grid = decode_grid_guided(autoencoder, latent, int(resolution), cap=float(autoencoder.config.truncation),
                              precision=precision)
    t1 = time.perf_counter()
    clipped = grid.clipped
    # min_piece_cells=1: specks smaller than one grid cell are marching-cubes artefacts, not organ parts
    v, f = extract_mesh(grid, largest_component=largest_component, min_piece_cells=1.0)
    mesh = trimesh.Trimesh(v, f, process=False)
    t2 = time.perf_counter()
    centers = latent.centers[0].detach().float().cpu()
    radii = latent.radii[0].detach().float().cpu().clamp_min(0.0)
    surface, _ = trimesh.sample.sample_surface(mesh, graph_points, seed=seed)  # recovery prior of the graph
    edges = skeleton_edges(centers, np.asarray(surface))
    skel = Skeleton(centers, radii, edges, method="diffusion", meta={"organ": organ})
    t3 = time.perf_counter()
    pieces = 1 if largest_component else count_components(v, f)  # the largest piece is one piece
    return GeneratedOrgan(organ, index, v, f, skel, latent.detach().to("cpu"), bool(mesh.is_watertight),
                          pieces, {"decode": t1 - t0, "mesh": t2 - t1, "skeleton": t3 - t2},
                          {"resolution": int(resolution), "query_fraction": grid.query_fraction,
                           "clipped_at_box": clipped})


def organ_genus(organ: GeneratedOrgan) -> int:
    """Genus of a generated organ's mesh: its number of handles (loops), summed over its closed pieces
    (:func:`skellab.metrics.generation.betti_numbers`: b1 = 2·genus for a closed surface)."""
    return int(betti_numbers((organ.vertices, organ.faces))[1]) // 2


def check_max_genus(max_genus: Any) -> None:
    """``max_genus`` of the generators: None or an integer >= 0, else a one-line :class:`SkellabError`."""
    if max_genus is not None and (isinstance(max_genus, bool) or not isinstance(max_genus, (int, np.integer))
                                  or max_genus < 0):
        raise SkellabError(f"max_genus must be an integer >= 0 or None, got {max_genus!r}")


def generate_from_models(diffusion: LatentDiffusion, autoencoder: SkeletalAutoencoder, organ: str, n: int, *,
                         steps: int = 20, guidance: float = DEFAULT_GUIDANCE, seed: int = 0, scheduler: str = "edm",
                         resolution: int = 128, largest_component: bool = True, decode: bool = True,
                         max_attempts: int = 3, keep: tuple[torch.Tensor, torch.Tensor] | None = None,
                         resample: int = 4, batch_size: int = GENERATION_BATCH,
                         connect: float | None = CONNECT_OVERLAP,
                         autoguidance: float | None = None, precision: str = "auto",
                         max_genus: int | None = None) -> list[GeneratedOrgan] | Latent:
    """:func:`generate_organs` with models already loaded (notebooks, evaluation loops).

    keep : ``(tokens (K, D), mask (K,) or (K, D))`` in latent units (:func:`load_keep`): every organ
           keeps ``tokens[mask]`` and diffusion completes the rest (:func:`skellab.diffusion.inpaint_latents`,
           ``resample`` RePaint jumps per step; EDM only).
    connect : stray islands of spheres in each sampled token set are moved onto the organ's main body
           until they overlap it by this margin (:func:`connect_latents`; kept tokens never move);
           None samples without it (the raw sampler output).
    autoguidance : weight of the diffusion model's guide network (:meth:`LatentDiffusion.guiding`); None: the
           model's own (the shipped model: 1.5, its guide its sphere stage's own step-1,000 export); 1: off.
    precision : arithmetic of the denoiser's passes and of the decoder: ``"auto"`` (bf16 where the device
           multiplies bf16 natively, else fp32), ``"fp32"`` or ``"bf16"`` (:func:`skellab.runtime.inference_autocast`).
    max_genus : a topological constraint, met by rejection: an organ whose mesh has more handles (loops) is drawn
           again, up to ``max_attempts`` draws in all; if none meets it, the draw with the fewest handles is kept
           (``info["genus"]``, ``info["genus_met"]``). E.g. 0 for a vessel or airway tree. None: every draw is kept
           (the sampler's own distribution). It filters the model's samples; it does not teach the model trees.

    Latents are sampled ``batch_size`` (16) at a time from one seeded generator and each batch is
    decoded before the next is sampled (:func:`iter_generated`), so sampling memory does not grow
    with ``n``. A sample whose decoded SDF has no surface is drawn again (up to ``max_attempts``
    times, from the same generator, so results stay a function of the seed; ``info["attempts"]``).
    decode=False returns the sampled :class:`Latent` (n, K, 4 + F) only (sampled in the same batches).
    """
    _check_args(n, steps, guidance, scheduler, resolution)
    if decode:
        return list(iter_generated(diffusion, autoencoder, organ, n, steps=steps, guidance=guidance, seed=seed,
                                   scheduler=scheduler, resolution=resolution, largest_component=largest_component,
                                   max_attempts=max_attempts, keep=keep, resample=resample, batch_size=batch_size,
                                   connect=connect, autoguidance=autoguidance, precision=precision,
                                   max_genus=max_genus))
    if max_genus is not None:
        raise SkellabError("max_genus needs decoded organs (decode=True): the genus is the mesh's")
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise SkellabError(f"batch_size must be an integer >= 1, got {batch_size!r}")
    sample = _sampler(diffusion, organ, steps=steps, guidance=guidance, scheduler=scheduler, keep=keep,
                      resample=resample, generator=make_generator(seed), connect=connect, autoguidance=autoguidance,
                      precision=precision)
    return Latent.cat([sample(min(int(batch_size), n - s))[0] for s in range(0, n, int(batch_size))])


def iter_generated(diffusion: LatentDiffusion, autoencoder: SkeletalAutoencoder, organ: str, n: int, *,
                   steps: int = 20, guidance: float = DEFAULT_GUIDANCE, seed: int = 0, scheduler: str = "edm",
                   resolution: int = 128, largest_component: bool = True, max_attempts: int = 3,
                   keep: tuple[torch.Tensor, torch.Tensor] | None = None, resample: int = 4,
                   batch_size: int = GENERATION_BATCH,
                   connect: float | None = CONNECT_OVERLAP,
                   autoguidance: float | None = None, precision: str = "auto",
                   max_genus: int | None = None) -> Iterator[GeneratedOrgan]:
    """:func:`generate_from_models`, organ by organ (index 0 … n − 1), in memory independent of ``n``.

    Latents are sampled ``batch_size`` at a time from one seeded generator; a batch is decoded
    (organ by organ, failed ones drawn again) and yielded before the next batch is sampled, so a
    caller that writes each organ and drops it (``skellab generate``) needs as much memory for
    ``n = 2000`` as for 16 (on glibc, also call :func:`skellab.runtime.limit_heap_growth` once: the
    default allocator otherwise fragments its heap organ after organ). Deterministic in the seed; organ i does not depend on ``n`` (unless an
    earlier batch needed redraws; up to float rounding when it falls in a smaller last batch; for a two-stage model
    only its spheres: the features are drawn after the whole batch's spheres, so an organ in a smaller last batch gets
    other features), and
    for ``n <= batch_size`` the result is exactly that of the former one-batch sampling.
    """
    _check_args(n, steps, guidance, scheduler, resolution)
    for name, value in (("batch_size", batch_size), ("max_attempts", max_attempts)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise SkellabError(f"{name} must be an integer >= 1, got {value!r}")
    check_max_genus(max_genus)
    sample = _sampler(diffusion, organ, steps=steps, guidance=guidance, scheduler=scheduler, keep=keep,
                      resample=resample, generator=make_generator(seed), connect=connect, autoguidance=autoguidance,
                      precision=precision)
    used_autoguidance = diffusion.guiding(autoguidance, organ)[1]
    used_precision = resolve_precision(next(diffusion.denoiser.parameters()).device, precision)
    for start in range(0, n, int(batch_size)):
        todo = list(range(start, min(n, start + int(batch_size))))
        latents, t_sample, joins = sample(len(todo))
        out: dict[int, GeneratedOrgan] = {}
        fallback: dict[int, GeneratedOrgan] = {}  # max_genus: the draw with the fewest handles so far
        for attempt in range(1, max_attempts + 1):
            failed = []
            for j, i in enumerate(todo):
                try:
                    g = decode_organ(autoencoder, latents[j], organ=organ, index=i, resolution=resolution,
                                     largest_component=largest_component, seed=(seed + i) % 2**32,
                                     precision=precision)
                except SkellabError:  # the decoded SDF has no surface: draw this organ again
                    failed.append(i)
                    continue
                g.seconds = {"sample": t_sample, **g.seconds}
                g.info.update(steps=int(steps), guidance=float(guidance), autoguidance=used_autoguidance,
                              scheduler=scheduler, seed=int(seed), precision=used_precision,
                              attempts=attempt, connect={"overlap": connect, **joins[j]},
                              **({"guide_interval": list(diffusion.guide_interval)}
                                 if diffusion.guide_interval is not None and used_autoguidance != 1 else {}),
                              **({"feature_steps": int(diffusion.feature_steps)}
                                 if diffusion.two_stage and diffusion.feature_steps is not None else {}))
                if max_genus is not None:
                    g.info.update(genus=organ_genus(g), max_genus=int(max_genus))
                    g.info["genus_met"] = g.info["genus"] <= max_genus
                    if not g.info["genus_met"]:  # too many loops: draw again, keep the best draw so far
                        if i not in fallback or g.info["genus"] < fallback[i].info["genus"]:
                            fallback[i] = g
                        failed.append(i)
                        continue
                out[i] = g
            todo = failed
            if not todo:
                break
            if attempt < max_attempts:  # fresh samples from the same generator: still a function of the seed
                latents, t_sample, joins = sample(len(todo))
        for i in [i for i in todo if i in fallback]:  # the constraint unmet in max_attempts draws: the best one
            out[i] = fallback.pop(i)
        todo = [i for i in todo if i not in out]
        if todo:
            raise SkellabError(f"{len(todo)} sampled {organ} latent(s) decoded to no surface in {max_attempts} "
                               "attempts (is the autoencoder the one the diffusion model was trained with?)")
        del latents
        for i in sorted(out):
            yield out.pop(i)


def connect_latents(latents: Latent, overlap: float | None = CONNECT_OVERLAP,
                    anchored: torch.Tensor | None = None) -> tuple[Latent, list[dict[str, Any]]]:
    """Attach each sampled token set's stray islands of spheres to its main body (:func:`~skellab.skeleton.connect.connect_spheres`).

    Encoded training shapes are one piece and so is the union of their skeletal spheres; sampled
    token sets leave small groups of spheres floating beside the organ, each decoded as a separate
    bead. Each island is moved rigidly (features unchanged) until it overlaps the body by
    ``overlap`` × (r_i + r_j). ``anchored`` (K,) bool marks tokens that must not move (kept tokens
    of an inpainting). ``overlap=None`` returns the latents unchanged.
    returns : (connected :class:`Latent`, one info dict per token set: islands and spheres moved, shifts)
    """
    if overlap is None:
        return latents, [{} for _ in range(latents.tokens.shape[0])]
    tokens = latents.tokens.clone()
    tokens[..., :3], infos = connect_sphere_sets(tokens[..., :3], tokens[..., 3], overlap=float(overlap),
                                                 anchored=anchored)
    return Latent(tokens, latents.class_index), infos


def _sampler(diffusion: LatentDiffusion, organ: str, *, steps: int, guidance: float, scheduler: str,
             keep: tuple[torch.Tensor, torch.Tensor] | None, resample: int, generator: torch.Generator,
             connect: float | None = CONNECT_OVERLAP, autoguidance: float | None = None, precision: str = "auto"):
    """``sample(num) → (Latent (num, K, D), seconds per organ, connect infos)``, every draw from ``generator``."""
    if organ not in diffusion.organs:
        raise SkellabError(f"unknown organ {organ!r}; known: {', '.join(diffusion.organs)}")
    ci = diffusion.class_id(organ)
    sampler = sampling_scheduler(diffusion, scheduler)
    a = diffusion.guiding(autoguidance, organ)[1]  # checked before any work (None: the organ's own weight)
    if keep is not None and scheduler != "edm":
        raise SkellabError("completing kept tokens (keep=) needs the edm scheduler")

    if connect is not None and (isinstance(connect, bool) or not isinstance(connect, (int, float))
                                or not 0.0 <= float(connect) < 1.0):
        raise SkellabError(f"connect must be an overlap margin in [0, 1) or None, got {connect!r}")
    anchored = None
    if keep is not None:
        mask = torch.as_tensor(keep[1]).bool()
        anchored = mask if mask.ndim == 1 else mask.any(-1)

    def sample(num: int) -> tuple[Latent, float, list[dict[str, Any]]]:
        t0 = time.perf_counter()
        # the model's own methods: a two-stage model draws the spheres, then the features given them
        if keep is None:
            tokens = diffusion.sample(num, class_index=ci, guidance=float(guidance), steps=int(steps),
                                      generator=generator, autoguidance=a, precision=precision,
                                      scheduler=sampler)  # (num, K, D), CPU, latent units
        else:
            tokens = diffusion.complete(keep[0], keep[1], num, class_index=ci, guidance=float(guidance),
                                        steps=int(steps), resample=int(resample), generator=generator,
                                        autoguidance=a, precision=precision, scheduler=sampler)
        latents, infos = connect_latents(Latent(tokens, torch.full((num,), ci, dtype=torch.long)), connect, anchored)
        return latents, (time.perf_counter() - t0) / num, infos

    return sample


def load_keep(path: str | os.PathLike, num_tokens: int, token_dim: int, *,
              indices: Sequence[int] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """What to keep when completing organs, from a file: ``(tokens (K, D), mask (K, D))``, latent units.

    * a latent (``tokens`` (K, D), e.g. ``organ_XX_latent.npz`` of :func:`write_generated`, optional
      ``mask`` (K,) or (K, D) bool): those tokens are kept (``indices``: only these tokens);
    * a skeleton (``centers`` (K, 3) + ``radii`` (K,), e.g. ``organ_XX_skeleton.npz``, possibly
      edited): only each token's xyz and r are kept; diffusion chooses the features.
    """
    p = Path(path)
    if not p.is_file():
        raise SkellabError(f"keep file not found: {p}")
    try:
        with np.load(p, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except (OSError, ValueError) as exc:
        raise SkellabError(f"{p}: not a readable .npz file ({exc.__class__.__name__})") from exc
    if "tokens" in arrays:
        tokens = torch.as_tensor(np.asarray(arrays["tokens"], dtype=np.float32))
        mask = torch.as_tensor(arrays["mask"]).bool() if "mask" in arrays else torch.ones(tokens.shape[0], dtype=torch.bool)
    elif "centers" in arrays and "radii" in arrays:
        c, r = np.asarray(arrays["centers"], np.float32), np.asarray(arrays["radii"], np.float32).reshape(-1, 1)
        if c.ndim != 2 or c.shape[1] != 3 or len(r) != len(c):
            raise SkellabError(f"{p}: centers must be (K, 3) and radii (K,)")
        tokens = torch.zeros(len(c), token_dim)
        tokens[:, :3], tokens[:, 3:4] = torch.from_numpy(c), torch.from_numpy(r)
        mask = torch.zeros(len(c), token_dim, dtype=torch.bool)
        mask[:, :4] = True
    else:
        raise SkellabError(f"{p}: needs 'tokens' (a latent) or 'centers' + 'radii' (a skeleton)")
    if tuple(tokens.shape) != (num_tokens, token_dim):
        raise SkellabError(f"{p}: {tuple(tokens.shape)} tokens, the diffusion model makes ({num_tokens}, {token_dim})")
    if mask.ndim == 1:
        mask = mask[:, None].expand(-1, token_dim).clone()
    if tuple(mask.shape) != (num_tokens, token_dim):
        raise SkellabError(f"{p}: mask must be (K,) or (K, D)")
    if indices is not None:
        sel = torch.zeros(num_tokens, dtype=torch.bool)
        bad = [i for i in indices if not 0 <= int(i) < num_tokens]
        if bad:
            raise SkellabError(f"token indices must be in [0, {num_tokens}), got {bad[0]}")
        sel[list(indices)] = True
        mask &= sel[:, None]
    if not bool(torch.isfinite(tokens[mask]).all()):
        raise SkellabError(f"{p}: kept tokens contain NaN or infinite values")
    if not bool(mask.any()):
        raise SkellabError(f"{p}: nothing to keep (empty mask)")
    return tokens, mask


def generate_organs(
    organ: str,
    n: int,
    *,
    steps: int = 20,
    guidance: float = DEFAULT_GUIDANCE,
    seed: int = 0,
    scheduler: str = "edm",
    resolution: int = 128,
    diffusion_checkpoint: str | os.PathLike | None = None,
    autoencoder_checkpoint: str | os.PathLike | None = None,
    largest_component: bool = True,
    device: str | torch.device = "cpu",
    keep: tuple[torch.Tensor, torch.Tensor] | None = None,
    batch_size: int = GENERATION_BATCH,
    connect: float | None = CONNECT_OVERLAP,
    autoguidance: float | None = None,
    precision: str = "auto",
    max_genus: int | None = None,
    max_attempts: int = 3,
) -> list[GeneratedOrgan]:
    """Generate ``n`` new organs of class ``organ``: meshes + skeletons in the normalised frame.

    organ      : a class name of the diffusion model (:func:`list_organs`)
    n          : organs to generate (>= 1), sampled ``batch_size`` (16) at a time (:func:`iter_generated`)
    steps      : sampler steps (EDM Heun: 2·steps − 1 network calls; paper: 20)
    guidance   : classifier-free guidance weight w >= 0 (0: unconditional, 1: conditional, paper: 2.0;
                 default :data:`~skellab.diffusion.DEFAULT_GUIDANCE`)
    autoguidance : weight a of the diffusion model's guide network (a weaker denoiser shipped with it;
                 Karras et al. 2024): None uses the model's own weight, 1 turns it off
    seed       : the result is a deterministic function of the seed (on a given machine and torch build)
    scheduler  : ``"edm"`` | ``"ddim"`` | ``"ddpm"`` — see the module docstring for what each does
    resolution : marching-cubes grid R (R³ over [-1.1, 1.1]³, decoded only near the skeleton)
    largest_component : keep only the largest connected piece of each mesh
    keep       : tokens to keep and a mask (:func:`load_keep`): diffusion completes the rest of each organ
    connect    : move stray islands of sampled spheres onto the main body, to this overlap margin
                 (:func:`connect_latents`; default 0.1, None: the raw sampler output)
    precision  : ``"auto"`` (bf16 sampling and decoding where the device multiplies bf16 natively, else fp32),
                 ``"fp32"`` or ``"bf16"``
    max_genus  : redraw an organ whose mesh has more handles, up to ``max_attempts`` draws (rejection sampling;
                 e.g. 0 for trees; :func:`generate_from_models`); None: every draw is kept
    returns    : list of :class:`GeneratedOrgan`, ``index`` 0 … n − 1.
    Bad arguments, an unknown organ, or a missing/corrupt checkpoint → :class:`SkellabError`.
    Not differentiable.
    """
    _check_args(n, steps, guidance, scheduler, resolution)
    diff, ae = load_generation_models(diffusion_checkpoint, autoencoder_checkpoint, device=device)
    return generate_from_models(diff, ae, organ, n, steps=steps, guidance=guidance, seed=seed, scheduler=scheduler,
                                resolution=resolution, largest_component=largest_component, keep=keep,
                                batch_size=batch_size, connect=connect, autoguidance=autoguidance, precision=precision,
                                max_genus=max_genus, max_attempts=max_attempts)


#: the names :func:`write_generated` writes (what ``skellab generate --overwrite`` may replace)
GENERATED_NAME = re.compile(r"^organ_\d+(\.ply|_skeleton\.npz|_latent\.npz)$")


def write_generated(organs: Sequence[GeneratedOrgan], out_dir: str | os.PathLike) -> list[Path]:
    """Write ``organ_XX.ply`` (mesh), ``organ_XX_skeleton.npz`` (:meth:`Skeleton.save`) and
    ``organ_XX_latent.npz`` (``tokens`` (K, D), the organ's latent: edit it and pass it back to
    ``skellab generate --keep``) per organ, atomically.

    Coordinates are in the normalised frame. Returns the written mesh and skeleton paths (mesh, skeleton, mesh, …).
    """
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise SkellabError(f"{out} exists and is not a folder")
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for g in organs:
        mesh_path = export_mesh(out / f"organ_{g.index:02d}.ply", g.vertices, g.faces)
        skel_path = out / f"organ_{g.index:02d}_skeleton.npz"
        g.skeleton.save(skel_path)
        with atomic_path(out / f"organ_{g.index:02d}_latent.npz") as tmp, open(tmp, "wb") as fh:
            np.savez(fh, tokens=g.latent.tokens[0].detach().cpu().numpy().astype(np.float32), organ=g.organ)
        paths += [mesh_path, skel_path]
    return paths
