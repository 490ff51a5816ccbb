"""The generation comparison table (METHOD §9): skellab vs a point-cloud diffusion baseline vs an ablation.

The library behind ``skellab evaluate``::

    results = evaluate_generation("/tmp/medsdf-mini", split="test", n=2)
    print(generation_table(results))

What is compared, per organ class of the reference split (MedSDF's test fold by default):

* **reference**: up to ``n`` test shapes of the class (first ids in sorted order), ``num_points``
  area-uniform surface samples of each stored mesh (normalised frame);
* **skellab**: as many organs of the class as there are references, generated with the
  shipped diffusion model + autoencoder (:mod:`skellab.generation`), meshed at
  ``resolution``³, then sampled like the references;
* **point_diffusion**: the PVD-like baseline (:mod:`skellab.baselines.point_diffusion`),
  trained on the *same training split's* surface points with the *same compute budget* as
  the latent diffusion model (CPU seconds of the training process, ``budget``), sampled with
  the same EDM sampler, steps and guidance; it produces point clouds only, so it has no
  Betti numbers;
* **surface_latent_ablation** (the paper's SPSDF: tokens at FPS surface points instead of
  skeletal points): evaluated like skellab when an autoencoder with ``token_source="surface"``
  and a diffusion model trained on its latents are given; otherwise the table says it is
  not available — nothing is faked.

Metrics (PointFlow conventions, :mod:`skellab.metrics.generation`), computed **per class**
(generated vs reference of the same organ, |gen| = |ref|) and averaged over classes
(macro mean; per-class values are kept): MMD-CD ×10³ (squared-summed Chamfer), COV-CD,
1-NNA-CD (not folded; ideal 0.5), the EMD versions on the first ``emd_points`` of every
cloud (exact EMD costs ~0.5 s per pair at 2048 points), MMD-EMD ×10², and the Betti error
(each generated mesh vs the reference of closest Betti vector). With few shapes per class
the numbers are noisy: 1-NNA on 2 + 2 shapes can only be 0, 0.25, 0.5, 0.75 or 1.
"""

from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

from ..baselines.point_diffusion import (
    PointDenoiser,
    PointDenoiserConfig,
    PointDiffusion,
    load_point_diffusion,
    save_point_diffusion,
)
from ..data.medsdf import MedSDF
from ..diffusion import DEFAULT_GUIDANCE, make_scheduler
from ..errors import SkellabError
from ..generation import CONNECT_OVERLAP, decode_organ, generate_from_models, load_generation_models
from ..metrics import betti_error, generation_metrics, sample_points
from ..runtime import make_generator, resolve_precision
from ..tables import format_table
from ..train.engine import EngineConfig, StopTraining
from ..train.recipes import fit_denoiser
from ..weights import weights_info, weights_path

__all__ = ["METRIC_KEYS", "TABLE_METHODS", "train_baseline", "evaluate_generation", "generation_table", "shipped_results"]

METRIC_KEYS = ("mmd_cd_x1e3", "cov_cd", "1nna_cd", "mmd_emd_x1e2", "cov_emd", "1nna_emd", "betti_error")
#: the rows of the test-fold table, in order
TABLE_METHODS = ("skellab", "point_diffusion", "surface_latent_ablation")


# ---------------------------------------------------------------------- the baseline
def _surface_clouds(store: MedSDF, ids: Sequence[str], num_points: int) -> torch.Tensor:
    """(S, num_points, 3): the first ``num_points`` stored surface samples of each shape (area-uniform)."""
    clouds = []
    for sid in ids:
        pts = store.samples(sid)["surface_points"]
        if len(pts) < num_points:
            raise SkellabError(f"shape {sid} has only {len(pts)} stored surface points, need {num_points}")
        clouds.append(torch.from_numpy(np.asarray(pts[:num_points], dtype=np.float32)))
    return torch.stack(clouds)


def train_baseline(store: MedSDF | str | os.PathLike, classes: Sequence[str], *, cpu_seconds: float,
                   split: str = "train", num_points: int = 2048, config: PointDenoiserConfig | None = None,
                   batch_size: int = 16, lr: float = 1e-3, ema_decay: float = 0.999, seed: int = 0,
                   max_steps: int = 10**7, progress: bool = False) -> PointDiffusion:
    """Train the point-cloud baseline on a split's surface points until ``cpu_seconds`` of compute are spent.

    The budget is measured in CPU seconds of this process (``time.process_time``), not wall
    time, so that two models trained at different moments on a shared machine get the same
    compute. Scheduler: EDM (as the latent model). Classes are indexed as in ``classes``;
    shapes of other classes are skipped. Returns a :class:`PointDiffusion` (the EMA weights)
    whose ``info["train"]`` records steps, CPU and wall seconds, threads.
    """
    if not cpu_seconds > 0:
        raise SkellabError(f"the baseline's compute budget must be > 0 seconds, got {cpu_seconds}")
    store = store if isinstance(store, MedSDF) else MedSDF.open(store)
    ids = [i for i in store.ids(split=split) if store.record(i)["class"] in classes]
    if not ids:
        raise SkellabError(f"no {split} shapes of the classes {', '.join(classes)} in {store.root}")
    clouds = _surface_clouds(store, ids, num_points)  # (S, N, 3)
    ci = torch.tensor([list(classes).index(store.record(i)["class"]) for i in ids])
    cfg = config or PointDenoiserConfig.tiny(num_classes=len(classes))
    model = PointDenoiser(config=cfg)
    sched = make_scheduler("edm")
    losses: list[float] = []
    c0, w0 = time.process_time(), time.perf_counter()

    def _budget(step: int, loss: float) -> None:
        losses.append(loss)
        if time.process_time() - c0 >= cpu_seconds:
            raise StopTraining

    engine = EngineConfig(steps=max_steps, batch_size=batch_size, lr=lr, warmup=100, schedule="constant",
                          ema_decay=ema_decay)
    ema, _ = fit_denoiser(model, clouds, ci, sched, engine, class_dropout=cfg.class_dropout,
                          generator=make_generator(seed), progress=progress, desc="point diffusion", callback=_budget)
    train = {"steps": len(losses), "batch_size": batch_size, "lr": lr, "ema_decay": ema_decay,
             "cpu_seconds": time.process_time() - c0, "wall_seconds": time.perf_counter() - w0,
             "cpu_budget_seconds": float(cpu_seconds), "torch_threads": torch.get_num_threads(),
             "num_clouds": len(ids), "num_points": num_points, "split": split, "scheduler": "edm",
             "final_loss": float(np.mean(losses[-100:])) if losses else None}
    return PointDiffusion(ema, sched, list(classes), num_points, {"step": len(losses), "train": train})


def load_or_train_baseline(store: MedSDF, classes: Sequence[str], path: str | os.PathLike | None,
                           seconds: float | None, train_info: dict[str, Any], *, num_points: int, seed: int,
                           say: Callable[[str], None]) -> tuple[PointDiffusion, float | None]:
    """The point-cloud baseline at ``path`` if that file exists; else trained for ``seconds`` CPU seconds (default:
    the diffusion model's own, ``train_info["cpu_seconds"]``: the same compute) and saved to ``path`` when given.
    Returns (baseline, wall seconds spent training it or None when loaded)."""
    bpath = Path(path) if path is not None else None
    if bpath is not None and bpath.is_file():
        say(f"baseline: loaded {bpath}")
        return load_point_diffusion(bpath), None
    budget = seconds if seconds is not None else train_info.get("cpu_seconds")
    if budget is None:
        raise SkellabError("the diffusion checkpoint records no training time: pass baseline_seconds")
    say(f"baseline: training for {budget:.0f} CPU seconds")
    t = time.perf_counter()
    base = train_baseline(store, classes, cpu_seconds=float(budget), num_points=num_points, seed=seed)
    trained = time.perf_counter() - t
    if bpath is not None:
        save_point_diffusion(bpath, base)
    return base, trained


def baseline_budget(base: PointDiffusion, train_info: dict[str, Any]) -> dict[str, Any]:
    """The baseline's training compute next to the diffusion model's (CPU seconds) and whether they match."""
    btrain = (base.info or {}).get("train") or {}
    b_cpu, d_cpu = btrain.get("cpu_seconds"), train_info.get("cpu_seconds")
    return {"cpu_seconds": b_cpu, "skellab_diffusion_cpu_seconds": d_cpu,
            "matched_within_10_percent": None if not (b_cpu and d_cpu) else bool(abs(b_cpu - d_cpu) <= 0.1 * d_cpu)}


# ---------------------------------------------------------------------- metrics
def _class_metrics(gen_pts: list[np.ndarray], ref_pts: list[np.ndarray], emd_points: int,
                   gen_meshes: list | None, ref_meshes: list) -> dict[str, Any]:
    g, r = np.stack(gen_pts), np.stack(ref_pts)
    cd = generation_metrics(g, r, metrics=("cd",))
    emd = generation_metrics(g[:, :emd_points], r[:, :emd_points], metrics=("emd",))
    row = {k: cd[k] for k in ("mmd_cd_x1e3", "cov_cd", "1nna_cd")}
    row.update({k: emd[k] for k in ("mmd_emd_x1e2", "cov_emd", "1nna_emd")})
    row["betti_error"] = betti_error(gen_meshes, ref_meshes)["total"] if gen_meshes else None
    row["num_generated"], row["num_reference"] = len(g), len(r)
    return row


def _macro(per_class: dict[str, dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k in METRIC_KEYS:
        vals = [row[k] for row in per_class.values() if row.get(k) is not None]
        out[k] = float(np.mean(vals)) if vals else None
    out["num_classes"] = len(per_class)
    out["num_generated"] = int(sum(row["num_generated"] for row in per_class.values()))
    return out


# ---------------------------------------------------------------------- the table
def evaluate_generation(
    dataset_dir: str | os.PathLike,
    *,
    split: str = "test",
    n: int = 2,
    num_points: int = 2048,
    emd_points: int = 512,
    resolution: int = 96,
    connect: float | None = CONNECT_OVERLAP,
    autoguidance: float | None = None,
    precision: str = "auto",
    steps: int = 20,
    guidance: float = DEFAULT_GUIDANCE,
    seed: int = 0,
    classes: Sequence[str] | None = None,
    diffusion_checkpoint: str | os.PathLike | None = None,
    autoencoder_checkpoint: str | os.PathLike | None = None,
    baseline_checkpoint: str | os.PathLike | None = None,
    baseline_seconds: float | None = None,
    ablation_checkpoints: tuple[str | os.PathLike, str | os.PathLike] | None = None,
    methods: Sequence[str] = TABLE_METHODS,
    log: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """The comparison table as a JSON-serialisable dict (see the module docstring).

    n                    : at most this many reference shapes per class (first ids, sorted)
    num_points           : points per cloud for CD (PointFlow: 2048); emd_points: prefix used for EMD
    resolution           : marching-cubes grid for skellab's meshes
    connect              : skellab's island-joining margin (:func:`skellab.generation.connect_latents`; None: off)
    autoguidance         : weight of skellab's guide network (None: the checkpoint's own; 1: off)
    precision            : arithmetic of every network pass (sampling, decoding; all methods): ``"auto"`` (bf16
                           where the device multiplies bf16 natively, else fp32), ``"fp32"`` or ``"bf16"``
    classes              : restrict to these classes (default: every class of the split the model knows)
    baseline_checkpoint  : a ``skellab.point_diffusion/1`` file: loaded if it exists, else trained and saved there
    baseline_seconds     : the baseline's CPU-second budget (default: the diffusion model's recorded training
                           CPU seconds — the same compute)
    ablation_checkpoints : (surface-token autoencoder, diffusion on its latents); default: the shipped
                           ``weights/autoencoder_surface.pt`` + ``weights/diffusion_surface.pt`` if both exist
    methods              : the rows to measure, among :data:`TABLE_METHODS` (e.g. ``("skellab",)`` scores a new
                           denoiser without training a baseline)
    returns              : {"methods": {name: {"macro": {...}, "per_class": {...}, ...}}, "conventions", "setup", …}
    """
    say = log or (lambda msg: None)
    if n <= 0 or num_points <= 0 or not 0 < emd_points <= num_points:
        raise SkellabError("need n >= 1, points >= 1 and 0 < emd_points <= points")
    methods = tuple(methods)
    bad = [m for m in methods if m not in TABLE_METHODS]
    if bad or not methods:
        raise SkellabError(f"unknown test-fold method {bad[0]!r}: use {', '.join(TABLE_METHODS)}" if bad
                           else "methods: name at least one method")
    store = MedSDF.open(dataset_dir)
    diff, ae = load_generation_models(diffusion_checkpoint, autoencoder_checkpoint)
    diff.guiding(autoguidance)  # a bad weight fails here, before any work
    resolve_precision("cpu", precision)  # and so does an unknown precision
    known = diff.organs
    by_class: dict[str, list[str]] = {}
    for sid in sorted(store.ids(split=split)):
        by_class.setdefault(store.record(sid)["class"], []).append(sid)
    wanted = list(classes) if classes is not None else sorted(by_class)
    unknown = [c for c in wanted if c not in known]
    if classes is not None and unknown:
        raise SkellabError(f"unknown organ {unknown[0]!r}; known: {', '.join(known)}")
    refs = {c: by_class[c][:n] for c in wanted if c in known and by_class.get(c)}
    if not refs:
        raise SkellabError(f"no {split} shapes of a class the diffusion model knows in {store.root}")

    # 1. references: stored meshes and their surface samples
    t0 = time.perf_counter()
    ref_meshes = {c: [store.shape(s).to_trimesh() for s in ids] for c, ids in refs.items()}
    ref_pts = {c: [sample_points(m, num_points, seed=seed + i) for i, m in enumerate(ms)]
               for c, ms in ref_meshes.items()}
    say(f"references: {sum(map(len, refs.values()))} shapes in {len(refs)} classes")

    rows: dict[str, Any] = {}
    train_info = diff.info.get("train") or {}
    if "skellab" in methods:  # 2. skellab: generate, mesh, sample
        rows["skellab"] = _evaluate_latent_model(diff, ae, refs, ref_pts, ref_meshes, num_points=num_points,
                                                 emd_points=emd_points, resolution=resolution, steps=steps,
                                                 guidance=guidance, seed=seed, say=say, name="skellab",
                                                 connect=connect, autoguidance=autoguidance, precision=precision)
        rows["skellab"]["training"] = train_info
    if "point_diffusion" in methods:  # 3. the point-cloud baseline, with the same compute budget
        rows["point_diffusion"] = _baseline_row(store, known, refs, ref_pts, ref_meshes, train_info,
                                                baseline_checkpoint, baseline_seconds, num_points=num_points,
                                                emd_points=emd_points, steps=steps, guidance=guidance, seed=seed,
                                                say=say, precision=precision)
    if "surface_latent_ablation" in methods:  # 4. the surface-token ablation, only if its checkpoints exist
        rows["surface_latent_ablation"] = _ablation(ablation_checkpoints, refs, ref_pts, ref_meshes,
                                                    num_points=num_points, emd_points=emd_points,
                                                    resolution=resolution, steps=steps, guidance=guidance,
                                                    seed=seed, say=say, precision=precision)
    return {
        "dataset": str(store.root), "dataset_name": store.manifest.get("name"), "split": split,
        "classes": list(refs), "skipped_classes": sorted(set(by_class) - set(refs)),
        "reference_counts": {c: len(v) for c, v in refs.items()},
        "conventions": {
            "frame": "per-shape normalised: bbox centre at 0, max |coordinate| = 1 (references and samples)",
            "points": f"{num_points} area-uniform surface samples per shape (CD); the first {emd_points} of them "
                      "for EMD (exact assignment, unsquared cost / N)",
            "cd": "PointFlow: mean_x min_y |x-y|^2 + mean_y min_x |x-y|^2 (squared, summed)",
            "mmd": "mean over references of the min distance to a generated shape; CD x1e3, EMD x1e2",
            "cov": "fraction of references that are the nearest reference of some generated shape",
            "1nna": "leave-one-out 1-NN accuracy over gen U ref, not folded, ideal 0.5",
            "betti_error": "sum over (b0, b1, b2) of mean |b(gen) - b(closest-Betti reference)|; meshes only",
            "aggregation": "metrics per class (|gen| = |ref| per class), then the mean over classes",
        },
        "setup": {"n_per_class": n, "num_points": num_points, "emd_points": emd_points, "resolution": resolution,
                  "steps": steps, "guidance": guidance, "autoguidance": diff.guiding(autoguidance)[1],
                  "class_autoguidance": dict(diff.class_autoguidance) if autoguidance is None else {},
                  "guide": diff.guide_info or None, "scheduler": "edm (Heun)", "seed": seed,
                  "precision": resolve_precision(next(diff.denoiser.parameters()).device, precision),
                  "diffusion_checkpoint": str(diffusion_checkpoint or weights_path("diffusion")),
                  "torch_threads": torch.get_num_threads(), "platform": platform.platform(),
                  "reference_seconds": time.perf_counter() - t0},
        "methods": rows,
    }


def _baseline_row(store, known, refs, ref_pts, ref_meshes, train_info, baseline_checkpoint, baseline_seconds, *,
                  num_points, emd_points, steps, guidance, seed, say, precision="auto") -> dict[str, Any]:
    """The point-cloud baseline's row (:func:`load_or_train_baseline`)."""
    base, _ = load_or_train_baseline(store, known, baseline_checkpoint, baseline_seconds, train_info,
                                     num_points=num_points, seed=seed, say=say)
    row = _evaluate_point_model(base, refs, ref_pts, ref_meshes, num_points=num_points, emd_points=emd_points,
                                steps=steps, guidance=guidance, seed=seed, say=say, precision=precision)
    row["training"] = (base.info or {}).get("train") or {}
    row["budget"] = {**baseline_budget(base, train_info),
                     "note": "compute = CPU seconds of the training process (time.process_time); skellab's frozen "
                             "autoencoder is a shared, separately trained component and is not counted"}
    return row


def _evaluate_latent_model(diff, ae, refs, ref_pts, ref_meshes, *, num_points, emd_points, resolution, steps,
                           guidance, seed, say, name, connect=None, autoguidance=1.0, precision="auto") -> dict[str, Any]:
    per_class, failures, t0 = {}, 0, time.perf_counter()
    watertight = total = 0
    for ci, (c, ids) in enumerate(refs.items()):
        organs = generate_from_models(diff, ae, c, len(ids), steps=steps, guidance=guidance, seed=seed + 1000 * ci,
                                      resolution=resolution, decode=False, connect=connect, autoguidance=autoguidance,
                                      precision=precision)
        meshes, pts = [], []
        for i in range(len(ids)):
            try:
                g = decode_organ(ae, organs[i], organ=c, index=i, resolution=resolution, seed=seed + i,
                                 precision=precision)
            except SkellabError:  # the decoded SDF has no surface: counted, and left out of the metrics
                failures += 1
                continue
            m = g.to_trimesh()
            meshes.append(m)
            pts.append(sample_points(m, num_points, seed=seed + i))
            watertight += int(g.watertight)
        total += len(ids)
        if pts:
            per_class[c] = _class_metrics(pts, ref_pts[c], emd_points, meshes, ref_meshes[c])
        say(f"{name}: {c} done ({len(pts)}/{len(ids)} meshes)")
    return {"macro": _macro(per_class), "per_class": per_class, "failed_meshes": failures,
            "watertight_fraction": watertight / max(total - failures, 1), "seconds": time.perf_counter() - t0}


def _evaluate_point_model(base: PointDiffusion, refs, ref_pts, ref_meshes, *, num_points, emd_points, steps,
                          guidance, seed, say, precision="auto") -> dict[str, Any]:
    per_class, t0 = {}, time.perf_counter()
    known = list(base.classes or [])
    for ci, (c, ids) in enumerate(refs.items()):
        if c not in known:
            continue
        clouds = base.sample(len(ids), class_index=known.index(c), guidance=guidance, steps=steps,
                             num_points=num_points, generator=make_generator(seed + 1000 * ci), precision=precision)
        per_class[c] = _class_metrics(list(clouds.double().numpy()), ref_pts[c], emd_points, None, ref_meshes[c])
        say(f"point_diffusion: {c} done")
    return {"macro": _macro(per_class), "per_class": per_class, "seconds": time.perf_counter() - t0,
            "note": "point clouds only: no meshes, so no Betti error"}


def _ablation(paths, refs, ref_pts, ref_meshes, **kw) -> dict[str, Any]:
    ae_path, diff_path = paths if paths is not None else (weights_path("autoencoder_surface"),
                                                          weights_path("diffusion_surface"))
    if not (Path(ae_path).is_file() and Path(diff_path).is_file()):
        return {"available": False,
                "reason": f"no surface-token (SPSDF) ablation checkpoints: expected {ae_path} and {diff_path}; "
                          "train an autoencoder with token_source='surface' and a diffusion model on its latents "
                          "to fill this row"}
    diff, ae = load_generation_models(diff_path, ae_path)
    if ae.config.token_source != "surface":
        raise SkellabError(f"{ae_path}: the ablation autoencoder must have token_source='surface'")
    out = _evaluate_latent_model(diff, ae, refs, ref_pts, ref_meshes, name="ablation", **kw)
    out["available"] = True
    return out


def generation_table(results: dict[str, Any]) -> str:
    """The macro-averaged table of :func:`evaluate_generation` as aligned text (one row per method)."""
    heads = ["method", "MMD-CD x1e3", "COV-CD", "1-NNA-CD", "MMD-EMD x1e2", "COV-EMD", "1-NNA-EMD", "Betti err"]
    rows = []
    for name, m in results["methods"].items():
        if m.get("available") is False:
            rows.append([name] + ["n/a"] * (len(heads) - 1))
        else:
            rows.append([name] + [m["macro"][k] for k in METRIC_KEYS])
    s = results["setup"]
    return format_table(rows, heads) + "\n" + (
        f"{results.get('dataset_name') or results['dataset']} / {results['split']}: "
        f"{sum(results['reference_counts'].values())} references in {len(results['classes'])} classes; "
        f"{s['num_points']} points (EMD: {s['emd_points']}), normalised frame; per-class metrics, mean over classes")


def shipped_results(path: str | os.PathLike | None = None) -> dict[str, Any]:
    """The table measured when the shipped diffusion model was released (``weights/diffusion.json``,
    ``metrics.evaluation``), in the format of :func:`evaluate_generation`."""
    if path is None:
        p, index = weights_path("diffusion").with_suffix(".json"), weights_info("diffusion")
    else:
        p = Path(path)
    try:
        if path is not None:
            index = json.loads(p.read_text())
        return index["metrics"]["evaluation"]
    except FileNotFoundError as exc:
        raise SkellabError(f"{p}: not found") from exc
    except (ValueError, KeyError, TypeError) as exc:
        raise SkellabError(f"{p}: no metrics.evaluation table in it") from exc
