"""Every performance figure of skellab in one run, each against a baseline timed in the same run.

    python benchmarks/run_all.py --out bench.json [--quick] [--dataset DIR] [--threads N] [--only NAME ...]

Sections (``--only`` picks some; default all, in this order):

* ``skeletonization`` — the default ``medial`` skeleton vs the classical voxel ``thinning``
  (one shape, graph edges included in both), and one batched medial call (B = 16) vs a
  Python loop of 16 single calls; the torus sample of ``bench_skeleton.py``.
* ``sdf``             — skellab's libigl signed distance vs trimesh's exact
  ``trimesh.proximity.signed_distance`` (fewer queries): queries/s, ratio, sign agreement.
* ``decoding``        — dense vs skeleton-guided SDF grid decoding of one encoded shape
  (as ``bench_decoding.py``): seconds, decoder queries, Chamfer between the two meshes.
* ``generation``      — per organ: latent sampling + guided decoding + marching cubes vs
  the same latents decoded densely; the point-diffusion baseline of ``bench_generation.py``
  is reported beside it (seconds per cloud, same sampler, steps and guidance).
* ``training``        — seconds per step of the training engine (:func:`skellab.train.fit`) vs a
  bare loop doing the same batches, forward, backward and optimizer step, per stage
  (``benchmarks/bench_training.py``); ``overhead`` = engine / bare − 1 (aim ≤ 0.20).

Every figure has ``baseline_seconds``, ``candidate_seconds`` and ``ratio`` =
baseline / candidate (a speedup: > 1 means the candidate is faster; for ``sdf`` it is the
ratio of queries/s, because the two backends answer different numbers of queries).
Baseline and candidate runs are interleaved after a warm-up; full mode reports medians
over repeats, ``--quick`` one repeat at small sizes (well under a minute, for tests/CI).
A section that fails is recorded as ``{"name", "error"}`` and the others still run;
the exit status is 1 when any section failed, 2 for a bad command line.
Everything runs on the CPU; the JSON is written atomically.
"""

from __future__ import annotations

import argparse
import datetime
import importlib.util
import json
import math
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from types import ModuleType
from typing import Any, NoReturn

import numpy as np
import torch

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
if importlib.util.find_spec("skellab") is None:  # a checkout that is not installed: use its sources
    sys.path.insert(0, str(REPO))

RATIO_SPEEDUP = "baseline_seconds / candidate_seconds (> 1: the candidate is faster)"


# ---------------------------------------------------------------------- helpers
@dataclass
class Context:
    """What every section sees: the mode, thread count and (lazily built) dataset."""

    quick: bool
    threads: int
    dataset: str | None
    built_dataset: Path | None = None
    _tmp: list[Path] = field(default_factory=list)

    @property
    def repeats(self) -> int:
        """Timed runs per measurement for the heavy sections (the median is reported)."""
        return 1 if self.quick else 3

    def dataset_root(self) -> Path:
        """``--dataset``, or a ``tiny`` MedSDF built once into a temporary folder (removed at the end)."""
        if self.dataset is not None:
            return Path(self.dataset)
        if self.built_dataset is None:
            from skellab.data.build import build_dataset

            tmp = Path(tempfile.mkdtemp(prefix="skellab-bench-"))
            self._tmp.append(tmp)
            build_dataset(tmp / "tiny", preset_name="tiny", workers=1, progress=False)
            self.built_dataset = tmp / "tiny"
        return self.built_dataset

    def cleanup(self) -> None:
        for tmp in self._tmp:
            shutil.rmtree(tmp, ignore_errors=True)


_MODULES: dict[str, ModuleType] = {}


def bench_module(name: str) -> ModuleType:
    """Import ``benchmarks/<name>.py`` by path (the folder is not a package); ImportError if it is missing."""
    if name not in _MODULES:
        path = BENCH_DIR / f"{name}.py"
        if not path.is_file():
            raise ImportError(f"no {path}")
        spec = importlib.util.spec_from_file_location(f"skellab_benchmarks_{name}", path)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module  # dataclasses and pickling look the module up there
        try:
            spec.loader.exec_module(module)
        except BaseException:
            sys.modules.pop(spec.name, None)
            raise
        _MODULES[name] = module
    return _MODULES[name]


def time_pair(baseline: Callable[[], Any], candidate: Callable[[], Any], repeats: int, *,
              warmup: tuple[Callable[[], Any], Callable[[], Any]] | None = None) -> dict[str, Any]:
    """Warm both up, then time them interleaved ``repeats`` times: medians, all times, last outputs."""
    for fn in warmup or (baseline, candidate):
        fn()
    tb, tc, out_b, out_c = [], [], None, None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out_b = baseline()
        tb.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        out_c = candidate()
        tc.append(time.perf_counter() - t0)
    return {"baseline_seconds": statistics.median(tb), "candidate_seconds": statistics.median(tc),
            "baseline_times": tb, "candidate_times": tc, "baseline_out": out_b, "candidate_out": out_c}


def figure(name: str, section: str, baseline: str, candidate: str, baseline_seconds: float,
           candidate_seconds: float, **extra: Any) -> dict[str, Any]:
    """One reported figure: both timings and their ratio (baseline / candidate)."""
    if not (baseline_seconds > 0 and candidate_seconds > 0):
        raise RuntimeError(f"{name}: non-positive timing ({baseline_seconds}, {candidate_seconds})")
    return {"name": name, "section": section, "baseline": baseline, "candidate": candidate,
            "baseline_seconds": baseline_seconds, "candidate_seconds": candidate_seconds,
            "ratio": baseline_seconds / candidate_seconds, "ratio_meaning": RATIO_SPEEDUP, **extra}


def one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or repr(exc)
    return f"{type(exc).__name__}: {text}"[:400]


def _times(ts: Sequence[float]) -> list[float]:
    return [round(t, 6) for t in ts]


# ---------------------------------------------------------------------- sections
def bench_skeletonization(ctx: Context) -> list[dict[str, Any]]:
    """medial vs thinning (batch 1, edges in both) and batched medial vs a loop of single calls."""
    from skellab.skeleton import skeletonize

    points, k, batch = 2560, 256, 16
    repeats = 1 if ctx.quick else 5
    mesh, pts, nrm = bench_module("bench_skeleton")._torus_sample(points, seed=0)

    def thinning() -> Any:
        return skeletonize(pts, method="thinning", k=k, mesh=mesh, device="cpu")

    def medial() -> Any:
        return skeletonize(pts, nrm, method="medial", k=k, device="cpu")

    t = time_pair(thinning, medial, repeats)
    shape = {"shape": "torus R=0.7 r=0.2 (bench_skeleton.py)", "points": points, "k": k, "repeats": repeats}
    rows = [figure("skeletonization", "skeletonization", "voxel thinning (method='thinning', default config)",
                   "medial (default method, normals given)", t["baseline_seconds"], t["candidate_seconds"],
                   baseline_ms=1e3 * t["baseline_seconds"], candidate_ms=1e3 * t["candidate_seconds"], batch=1,
                   edges=True, baseline_spheres=len(t["baseline_out"].radii),
                   candidate_spheres=len(t["candidate_out"].radii), baseline_times=_times(t["baseline_times"]),
                   candidate_times=_times(t["candidate_times"]), **shape)]

    xb = torch.from_numpy(np.repeat(pts[None], batch, 0))
    nb = torch.from_numpy(np.repeat(nrm[None], batch, 0))

    def loop() -> Any:
        return [skeletonize(pts, nrm, k=k, device="cpu", edges=False) for _ in range(batch)]

    def batched() -> Any:
        return skeletonize(xb, nb, k=k, device="cpu", edges=False)

    t = time_pair(loop, batched, repeats)
    rows.append(figure("skeletonization_batched", "skeletonization", f"Python loop of {batch} single medial calls",
                       f"one batched medial call (B={batch})", t["baseline_seconds"], t["candidate_seconds"],
                       baseline_ms=1e3 * t["baseline_seconds"], candidate_ms=1e3 * t["candidate_seconds"],
                       batch=batch, edges=False, baseline_times=_times(t["baseline_times"]),
                       candidate_times=_times(t["candidate_times"]), **shape))
    return rows


def bench_sdf(ctx: Context) -> list[dict[str, Any]]:
    """skellab's libigl signed distance vs trimesh's exact one (as ``bench_sdf.py``, queries/s)."""
    import trimesh

    from skellab.data.procedural import make_shape
    from skellab.data.sampling import signed_distance, winding_number_inside

    n_cand, n_base = (20_000, 300) if ctx.quick else (100_000, 2_000)
    shape = make_shape("kidney", 0)
    mesh = shape.to_trimesh()
    q = np.random.default_rng(0).uniform(-1.1, 1.1, (n_cand, 3))
    qb = q[:n_base]
    warm_q = q[:16]
    t = time_pair(lambda: trimesh.proximity.signed_distance(mesh, qb), lambda: signed_distance(q, mesh),
                  ctx.repeats, warmup=(lambda: trimesh.proximity.signed_distance(mesh, warm_q),  # builds its tree
                                       lambda: signed_distance(q, mesh)))
    sd, st = t["candidate_out"], t["baseline_out"]  # skellab: negative inside; trimesh: positive inside
    qps_b, qps_c = n_base / t["baseline_seconds"], n_cand / t["candidate_seconds"]
    row = figure("sdf_backend", "sdf", "trimesh.proximity.signed_distance (exact)",
                 "skellab.data.sampling.signed_distance (libigl, pseudonormal sign)",
                 t["baseline_seconds"], t["candidate_seconds"],
                 baseline_queries=n_base, candidate_queries=n_cand,
                 baseline_queries_per_second=qps_b, candidate_queries_per_second=qps_c,
                 sign_agreement=float(np.mean((sd[:n_base] < 0) == (st > 0))),
                 max_abs_distance_difference=float(np.abs(sd[:n_base] + st).max()),
                 sign_agreement_with_winding_number=float(np.mean((sd < 0) == winding_number_inside(q, mesh))),
                 mesh={"shape": shape.shape_id, "faces": len(mesh.faces)}, repeats=ctx.repeats,
                 note="libigl spreads its queries over all cores itself (--threads does not limit it); "
                      "trimesh's exact query runs on one",
                 baseline_times=_times(t["baseline_times"]), candidate_times=_times(t["candidate_times"]))
    row["ratio"] = qps_c / qps_b  # the backends answer different numbers of queries: compare per query
    row["ratio_meaning"] = "candidate queries/s / baseline queries/s (> 1: the candidate is faster per query)"
    return [row]


def _encoded_shape(ctx: Context, model: Any) -> tuple[Any, dict[str, Any]]:
    """One latent (batch 1): the first test shape of the dataset, or in quick mode without
    ``--dataset`` a procedural kidney encoded from its surface (no dataset build)."""
    if ctx.quick and ctx.dataset is None:
        from skellab.autoencoder import encode_points
        from skellab.data.procedural import make_shape
        from skellab.data.sampling import sample_surface

        shape = make_shape("kidney", 0)
        p, n = sample_surface(shape, model.config.num_surface, seed=0)
        ci = model.classes.index(shape.organ) if model.classes and shape.organ in model.classes else None
        lat = encode_points(model, torch.from_numpy(p), torch.from_numpy(n), class_index=ci)
        return lat[0], {"shape": shape.shape_id, "latent_source": "procedural shape, encode_points (quick mode)"}
    from skellab.autoencoder import encode_shapes
    from skellab.data.medsdf import MedSDF

    root = ctx.dataset_root()
    store = MedSDF.open(root)
    sid = store.ids(split="test")[0]
    latents, _ = encode_shapes(model, store, [sid])
    source = "--dataset" if ctx.dataset is not None else "tiny MedSDF built for this run"
    return latents[0], {"shape": sid, "latent_source": f"first test shape, encode_shapes ({source})"}


def bench_decoding(ctx: Context) -> list[dict[str, Any]]:
    """Dense vs skeleton-guided grid decoding of one encoded shape (as ``bench_decoding.py``)."""
    from skellab.autoencoder import load_autoencoder
    from skellab.meshing import decode_grid_dense, decode_grid_guided, extract_mesh
    from skellab.metrics import chamfer_distance

    res = 64 if ctx.quick else 128
    model = load_autoencoder(None, device="cpu")
    lat, info = _encoded_shape(ctx, model)
    t = time_pair(lambda: decode_grid_dense(model, lat, res), lambda: decode_grid_guided(model, lat, res),
                  ctx.repeats, warmup=(lambda: decode_grid_dense(model, lat, 24),
                                       lambda: decode_grid_guided(model, lat, 24)))
    dense, guided = t["baseline_out"], t["candidate_out"]
    vd, fd = extract_mesh(dense)
    vg, fg = extract_mesh(guided)
    same = vd.shape == vg.shape and np.array_equal(fd, fg)
    return [figure("decoding", "decoding", "dense grid decoding", "skeleton-guided decoding",
                   t["baseline_seconds"], t["candidate_seconds"], resolution=res,
                   dense_queries=int(dense.num_queries), guided_queries=int(guided.num_queries),
                   query_ratio=guided.num_queries / dense.num_queries,
                   chamfer_pointflow=chamfer_distance(vd, vg, convention="pointflow"),
                   identical_faces=bool(same), max_vertex_diff=float(np.abs(vd - vg).max()) if same else None,
                   sign_mismatches=int(((dense.values < 0) != (guided.values < 0)).sum()), faces=len(fd),
                   guided_settings=_guided_settings(), repeats=ctx.repeats,
                   baseline_times=_times(t["baseline_times"]), candidate_times=_times(t["candidate_times"]), **info)]


def _guided_settings() -> dict[str, Any]:
    """The defaults of ``decode_grid_guided`` that shape its refinement (recorded with each figure)."""
    from skellab.meshing import decode_grid_guided

    return {k: decode_grid_guided.__kwdefaults__[k] for k in ("coarse", "safety", "band", "narrow")}


def _organ_mesh(grid: Any, tau: float) -> tuple[np.ndarray, np.ndarray]:
    """Marching cubes as :func:`skellab.generation.decode_organ` does it: box faces capped (a no-op on a grid
    already decoded with ``cap``), largest part."""
    from skellab.meshing import cap_at_box, extract_mesh

    values, _ = cap_at_box(grid, tau)
    return extract_mesh(values, grid.box, largest_component=True)


def bench_generation(ctx: Context) -> list[dict[str, Any]]:
    """Per organ: sampling + guided decoding + marching cubes vs the same latents decoded densely."""
    from skellab.baselines import PointDenoiser, PointDenoiserConfig, PointDiffusion
    from skellab.diffusion import DEFAULT_GUIDANCE, make_scheduler
    from skellab.errors import SkellabError
    from skellab.generation import generate_from_models, load_generation_models
    from skellab.meshing import decode_grid_dense, decode_grid_guided
    from skellab.metrics import chamfer_distance
    from skellab.runtime import make_generator

    organ, guidance, seed, points = "kidney", DEFAULT_GUIDANCE, 0, 2048
    steps, res, n = (4, 64, 1) if ctx.quick else (20, 128, 3)
    diff, ae = load_generation_models(device="cpu")
    tau = float(ae.config.truncation)
    warm = generate_from_models(diff, ae, organ, 1, steps=2, guidance=guidance, seed=seed, decode=False)
    for decode in (decode_grid_dense, partial(decode_grid_guided, cap=tau)):  # warm-up; a tiny grid may hold no surface
        grid = decode(ae, warm[0], 24)
        try:
            _organ_mesh(grid, tau)
        except SkellabError:
            pass

    t0 = time.perf_counter()
    latents = generate_from_models(diff, ae, organ, n, steps=steps, guidance=guidance, seed=seed, decode=False,
                                   batch_size=max(n, 1))  # one sampling batch, as the recorded numbers were made
    t_sample = (time.perf_counter() - t0) / n
    per: dict[str, list[float]] = {k: [] for k in ("dense", "guided", "mesh_dense", "mesh_guided")}
    chamfers, fractions, failed = [], [], 0
    for i in range(n):
        lat = latents[i]
        try:
            t0 = time.perf_counter()
            dense = decode_grid_dense(ae, lat, res)
            t1 = time.perf_counter()
            vd, _ = _organ_mesh(dense, tau)
            t2 = time.perf_counter()
            guided = decode_grid_guided(ae, lat, res, cap=tau)  # capped inside, as decode_organ does
            t3 = time.perf_counter()
            vg, _ = _organ_mesh(guided, tau)
            t4 = time.perf_counter()
        except SkellabError:  # a sample whose SDF has no surface (generate_organs would redraw it)
            failed += 1
            continue
        for key, val in zip(per, (t1 - t0, t3 - t2, t2 - t1, t4 - t3)):
            per[key].append(val)
        chamfers.append(chamfer_distance(vd, vg, convention="pointflow"))
        fractions.append(guided.query_fraction)
    if not chamfers:
        raise RuntimeError(f"none of the {n} sampled {organ} latents decoded to a surface")
    base_total = [t_sample + d + m for d, m in zip(per["dense"], per["mesh_dense"])]
    cand_total = [t_sample + g + m for g, m in zip(per["guided"], per["mesh_guided"])]

    cfg = PointDenoiserConfig.tiny(num_classes=len(diff.classes))  # bench_generation.py's baseline network
    pdiff = PointDiffusion(PointDenoiser(config=cfg).eval(), make_scheduler("edm"), list(diff.classes), points)
    ci = list(diff.classes).index(organ)

    def point_cloud(num_steps: int) -> Any:
        return pdiff.sample(1, class_index=ci, guidance=guidance, steps=num_steps, num_points=points,
                            generator=make_generator(seed))

    point_cloud(2)
    t_pd = []
    for _ in range(ctx.repeats):
        t0 = time.perf_counter()
        point_cloud(steps)
        t_pd.append(time.perf_counter() - t0)

    med = statistics.median
    return [figure("generation", "generation", "sample + dense decoding + marching cubes",
                   "sample + skeleton-guided decoding + marching cubes", med(base_total), med(cand_total),
                   unit="seconds per organ (median over organs)", organ=organ, organs=len(cand_total),
                   organs_without_surface=failed, steps=steps, network_calls=2 * steps - 1, guidance=guidance,
                   resolution=res,
                   stages_per_organ={"sample": t_sample, "decode_dense": med(per["dense"]),
                                     "decode_guided": med(per["guided"]), "mesh_dense": med(per["mesh_dense"]),
                                     "mesh_guided": med(per["mesh_guided"])},
                   query_fraction=med(fractions), chamfer_pointflow_max=max(chamfers),
                   baseline_times=_times(base_total), candidate_times=_times(cand_total),
                   point_diffusion={"what": f"bench_generation.py baseline: {points}-point cloud, same sampler, "
                                            "steps and guidance, untrained tiny PointDenoiser (speed only)",
                                    "seconds_per_cloud": med(t_pd), "times": _times(t_pd)})]


def _training_row(row: dict[str, Any], default_name: str) -> dict[str, Any]:
    """Give a bench_training result the common fields (baseline/candidate seconds, ratio)."""
    out = {"name": default_name, **row, "section": "training"}
    b, c = row.get("baseline_seconds_per_step"), row.get("candidate_seconds_per_step")
    if isinstance(b, (int, float)) and isinstance(c, (int, float)) and b > 0 and c > 0:
        out.setdefault("baseline", "bare forward + backward")
        out.setdefault("candidate", "full training step")
        out["baseline_seconds"], out["candidate_seconds"], out["ratio"] = float(b), float(c), b / c
        out.setdefault("overhead", c / b - 1)
        out["ratio_meaning"] = ("baseline / candidate seconds per step (< 1: the training step costs more than "
                                "bare forward + backward; overhead = candidate / baseline - 1)")
    return out


def bench_training(ctx: Context) -> list[dict[str, Any]]:
    """Training-step overhead of the engine vs a bare loop, per stage (``benchmarks/bench_training.py``)."""
    measure = bench_module("bench_training").measure
    dataset = ctx.dataset if ctx.dataset is not None else (str(ctx.built_dataset) if ctx.built_dataset else None)
    result = measure(quick=ctx.quick, threads=ctx.threads or None, dataset=dataset)
    return [_training_row(s, f"training_overhead_{s.get('stage', i)}") for i, s in enumerate(result["stages"])]


SECTIONS: dict[str, Callable[[Context], list[dict[str, Any]]]] = {
    "skeletonization": bench_skeletonization,
    "sdf": bench_sdf,
    "decoding": bench_decoding,
    "generation": bench_generation,
    "training": bench_training,
}


# ---------------------------------------------------------------------- report
def git_commit() -> str | None:
    try:
        p = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True, timeout=10,
                           check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return (p.stdout.strip() or None) if p.returncode == 0 else None


def jsonable(x: Any) -> Any:
    """Plain JSON values: numpy scalars → Python, paths → str, NaN/inf → None."""
    if isinstance(x, dict):
        return {str(k): jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [jsonable(v) for v in x]
    if isinstance(x, np.ndarray):
        return jsonable(x.tolist())
    if isinstance(x, np.generic):
        return jsonable(x.item())
    if isinstance(x, float):
        return x if math.isfinite(x) else None
    if isinstance(x, (str, int, bool)) or x is None:
        return x
    return str(x)


def write_json(path: str | os.PathLike, report: dict[str, Any]) -> None:
    """Write atomically: a temporary file beside ``path``, then ``os.replace``."""
    from skellab.runtime import atomic_path

    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(jsonable(report), indent=1, allow_nan=False) + "\n")


def _secs(x: float) -> str:
    return f"{1e3 * x:.1f} ms" if x < 1 else f"{x:.2f} s"


def figures_table(results: Sequence[dict[str, Any]]) -> str:
    """A short human-readable table of the figures."""
    from skellab.tables import format_table

    rows = []
    for r in results:
        if "error" in r or "skipped" in r:
            rows.append([r["name"], "-", "-", "-", f"ERROR {r['error']}" if "error" in r else f"skipped: {r['skipped']}"])
            continue
        if "baseline_seconds" not in r:
            rows.append([r["name"], "-", "-", "-", "no timings"])
            continue
        if "baseline_queries_per_second" in r:
            b, c = f"{r['baseline_queries_per_second']:.0f} q/s", f"{r['candidate_queries_per_second']:.0f} q/s"
        else:
            b, c = _secs(r["baseline_seconds"]), _secs(r["candidate_seconds"])
        notes = []
        for key, fmt in (("resolution", "res {}"), ("query_ratio", "queries {:.3f}"),
                         ("query_fraction", "queries {:.3f}"), ("chamfer_pointflow", "CD {:.1e}"),
                         ("chamfer_pointflow_max", "CD max {:.1e}"), ("sign_agreement", "sign agree {:.4f}"),
                         ("overhead", "overhead {:+.1%}"), ("batch", "batch {}")):
            if isinstance(r.get(key), (int, float)) and not isinstance(r.get(key), bool):
                notes.append(fmt.format(r[key]))
        if r["name"] == "generation":
            notes.append(f"point diffusion {_secs(r['point_diffusion']['seconds_per_cloud'])}/cloud")
        rows.append([r["name"], b, c, f"{r['ratio']:.2f}x", ", ".join(notes)])
    return format_table(rows, ["figure", "baseline", "candidate", "ratio", "notes"])


# ---------------------------------------------------------------------- command line
class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:  # one line, no usage block
        self.exit(2, f"{self.prog}: error: {' '.join(message.split())}\n")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    ap = _Parser(prog="run_all.py", description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True, help="JSON file to write (atomically)")
    ap.add_argument("--quick", action="store_true", help="small sizes, one repeat: well under a minute (tests/CI)")
    ap.add_argument("--dataset", default=None,
                    help="MedSDF folder for decoding/training (default: build the tiny preset when needed)")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1; 0: torch's choice)")
    ap.add_argument("--only", nargs="+", metavar="NAME", default=None,
                    help=f"sections to run (default all): {', '.join(SECTIONS)}")
    args = ap.parse_args(argv)
    unknown = [s for s in args.only or [] if s not in SECTIONS]
    if unknown:
        ap.error(f"unknown section {unknown[0]!r} for --only: choose from {', '.join(SECTIONS)}")
    if args.threads < 0:
        ap.error(f"--threads must be >= 0, got {args.threads}")
    if args.dataset is not None and not Path(args.dataset).is_dir():
        ap.error(f"--dataset {args.dataset}: no such folder")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    start = time.perf_counter()
    if args.threads:
        torch.set_num_threads(args.threads)
    wanted = [name for name in SECTIONS if args.only is None or name in args.only]
    ctx = Context(quick=args.quick, threads=args.threads, dataset=args.dataset)
    report: dict[str, Any] = {
        "benchmark": "skellab benchmarks/run_all.py",
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "git_commit": git_commit(),
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "device": "cpu",
        "quick": bool(args.quick),
        "dataset": args.dataset,
        "sections": {},
        "results": [],
    }
    failed = False
    try:
        for name in wanted:
            if args.threads:
                torch.set_num_threads(args.threads)  # a section may have changed it
            print(f"[{name}] running ...", flush=True)
            t0 = time.perf_counter()
            try:
                rows = SECTIONS[name](ctx)
                status = "skipped" if rows and all("skipped" in r for r in rows) else "ok"
            except Exception as exc:  # noqa: BLE001 — one failing section must not stop the others
                rows, status, failed = [{"name": name, "section": name, "error": one_line(exc),
                                         "traceback": traceback.format_exc(limit=-4)}], "error", True
                print(f"[{name}] error: {one_line(exc)}", file=sys.stderr, flush=True)
            seconds = time.perf_counter() - t0
            report["sections"][name] = {"status": status, "seconds": seconds}
            report["results"].extend(rows)
            print(f"[{name}] {status} in {seconds:.1f} s", flush=True)
    finally:
        ctx.cleanup()
    report["total_seconds"] = time.perf_counter() - start
    write_json(args.out, report)
    print()
    print(figures_table(report["results"]))
    print(f"\n{'quick' if args.quick else 'full'} run, {report['torch_threads']} torch thread(s), "
          f"{report['total_seconds']:.1f} s total; JSON: {args.out}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
