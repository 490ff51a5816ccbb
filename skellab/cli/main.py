"""The ``skellab`` command line: a thin layer over the library.

Every command reports an expected failure (bad input, a missing, corrupt or foreign file, a full
disk) as one line ``skellab: error: …`` on stderr and exits with status 2 (argparse usage errors
too); an unexpected exception (a bug) is one line ``skellab: internal error: …``, exit status 1.
``--debug`` (before or after the command name) shows the Python traceback instead.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from pathlib import Path
from typing import Sequence

from .. import __version__
from ..data.build import build_dataset, import_files, merge_shards
from ..data.checks import check_dataset
from ..data.medsdf import MedSDF
from ..demo import DemoConfig, run_demo
from ..diffusion import DEFAULT_GUIDANCE, attach_guide, join_stages, load_diffusion, save_diffusion
from ..errors import SkellabError
from ..evaluation import (
    FRESH_METHODS,
    FRESH_SEED0,
    TABLE_METHODS,
    GalleryRow,
    evaluate_fresh,
    evaluate_generation,
    fresh_table,
    generation_table,
)
from ..generation import (
    CONNECT_OVERLAP,
    GENERATED_NAME,
    iter_generated,
    list_organs,
    load_generation_models,
    load_keep,
    write_generated,
)
from ..meshing import check_mesh_path, export_mesh
from ..pipeline import (
    RECONSTRUCT_REFINE_STEPS,
    RECONSTRUCT_SPHERE_LR,
    RECONSTRUCT_WEIGHTS,
    STEP_NAME,
    export_reconstruction,
    interpolate_files,
    reconstruct_file,
)
from ..runtime import (
    PRECISIONS,
    atomic_path,
    check_folder_output,
    check_output_not_input,
    limit_heap_growth,
    replace_folder,
)
from ..skeleton.io import skeletonize_file
from ..skeleton.types import check_skeleton_path
from ..views.training import figure_png, nearest_reference_gallery
from .common import (Parser, add_debug_flag, class_weight, connect_arg, nonnegative_int, positive_int, run_command,
                     seed_arg)
from .train import add_train_arguments, run_train

__all__ = ["build_parser", "main"]


# ---------------------------------------------------------------- data
def _cmd_data_build(args: argparse.Namespace) -> int:

    t0 = time.perf_counter()
    path = build_dataset(
        args.out, preset_name=args.preset, workers=args.workers, shard=args.shard,
        overwrite=args.overwrite, grid_resolution=args.grid, progress=not args.quiet, resume=args.resume,
    )
    manifest = json.loads(Path(path).read_text())
    print(
        f"wrote {len(manifest['shapes'])} shapes in {len(manifest['classes'])} classes to {path} "
        f"({time.perf_counter() - t0:.1f} s; {len(manifest.get('skipped', []))} skipped)"
    )
    return 0


def _cmd_data_merge(args: argparse.Namespace) -> int:

    print(f"wrote {merge_shards(args.dir)}")
    return 0


def _cmd_data_info(args: argparse.Namespace) -> int:

    ds = MedSDF.open(args.dir)
    summary = ds.summary()
    if args.verify:
        summary["verified_files"] = ds.verify_all()
    if args.json:
        print(json.dumps(summary, indent=1))
        return 0
    print(f"{summary['name']}  ({summary['root']}, MedSDF v{summary['format_version']}, SDF {summary['sign_convention']})")
    print(f"  shapes: {summary['shapes']}   folds: {summary['folds']}")
    print(f"  classes ({len(summary['classes'])}): " + ", ".join(f"{k} {v}" for k, v in summary["classes"].items()))
    print("  sources: " + ", ".join(f"{k} {v}" for k, v in summary["sources"].items()))
    for lic, n in summary["licenses"].items():
        print(f"  licence: {lic} ({n} shapes)")
    if args.verify:
        print(f"  checksums: {summary['verified_files']} files OK")
    return 0


def _cmd_data_check(args: argparse.Namespace) -> int:

    report = check_dataset(args.dir, samples_per_shape=args.samples, progress=not args.quiet)
    print(json.dumps(report, indent=1))
    ok = report["watertight"] == report["shapes"] and report["sign_agreement"] >= 0.999
    return 0 if ok else 1


def _cmd_data_import(args: argparse.Namespace) -> int:

    ids = import_files(args.files, organ=args.organ, out=args.out, label=args.label,
                       license=args.license, workers=args.workers, progress=not args.quiet)
    print(f"imported {len(ids)} shape(s) into {args.out}: {', '.join(ids)}")
    return 0


# ---------------------------------------------------------------- skeletonize
def _cmd_skeletonize(args: argparse.Namespace) -> int:

    check_skeleton_path(args.out)  # before the work: a skeleton is an .npz
    check_output_not_input(args.out, [args.input])
    skel = skeletonize_file(args.input, method=args.method, k=args.points, seed=args.seed, device=args.device)
    skel.save(args.out)
    print(f"wrote {skel.num_spheres} spheres and {len(skel.edges)} edges ({skel.method}) to {args.out}")
    return 0


# ---------------------------------------------------------------- autoencoder
def _cmd_reconstruct(args: argparse.Namespace) -> int:

    t0 = time.perf_counter()
    check_mesh_path(args.out)
    check_output_not_input(args.out, [args.input, args.checkpoint])
    rec = reconstruct_file(args.input, checkpoint=args.checkpoint, resolution=args.resolution,
                           organ=args.organ, seed=args.seed, device=args.device, refine=args.refine,
                           sphere_lr=0.0 if args.fixed_spheres else RECONSTRUCT_SPHERE_LR)
    export_reconstruction(rec, args.out)
    bodies = f", {rec.bodies} separate bodies" if rec.bodies > 1 else ""
    what = "features" if args.fixed_spheres else "features and spheres"
    refined = f", {what} refined {args.refine} steps" if args.refine else ""
    print(f"wrote {args.out}: {len(rec.vertices)} vertices, {len(rec.faces)} faces{bodies} "
          f"(input units{refined}, {time.perf_counter() - t0:.1f} s)")
    return 0


def _cmd_interpolate(args: argparse.Namespace) -> int:

    out = Path(args.out)
    check_output_not_input(out, [args.a, args.b, args.checkpoint], folder=True)
    check_folder_output(out, overwrite=args.overwrite, owned=STEP_NAME.match)  # before the work
    with replace_folder(out, overwrite=args.overwrite, owned=STEP_NAME.match) as tmp:
        steps = interpolate_files(args.a, args.b, steps=args.steps, checkpoint=args.checkpoint,
                                  resolution=args.resolution, seed=args.seed, device=args.device)
        lines = []
        for i, (mesh, norm) in enumerate(steps):
            export_mesh(tmp / f"step_{i:02d}.ply", mesh.vertices, mesh.faces, normalization=norm)
            flags = "watertight" if mesh.watertight else "NOT watertight"
            lines.append(f"{out / f'step_{i:02d}.ply'}  t={mesh.t:.2f}  {flags}, {mesh.components} component(s)")
    print("\n".join(lines))
    return 0


# ---------------------------------------------------------------- demo
def _cmd_demo(args: argparse.Namespace) -> int:

    run_demo(args.out, config=DemoConfig(resolution=args.resolution, seed=args.seed, snapshots=not args.no_snapshots))
    return 0


# ---------------------------------------------------------------- generation and evaluation
def _indices(text: str) -> list[int]:
    """``"0-40,50"`` → [0, 1, …, 40, 50]."""
    out: list[int] = []
    try:
        for part in text.split(","):
            a, _, b = part.strip().partition("-")
            out += list(range(int(a), int(b) + 1)) if b else [int(a)]
    except ValueError:
        raise SkellabError(f"--keep-tokens expects indices like 0-40,50, got {text!r}") from None
    return out


def _cmd_generate(args: argparse.Namespace) -> int:

    if args.list_organs:
        print("\n".join(list_organs(args.checkpoint)))
        return 0
    if args.organ is None or args.out is None:
        raise SkellabError("generate needs --organ NAME and --out DIR (or --list-organs)")
    t0 = time.perf_counter()
    out = Path(args.out)
    check_output_not_input(out, [args.keep, args.checkpoint, args.autoencoder], folder=True)
    check_folder_output(out, overwrite=args.overwrite, owned=GENERATED_NAME.match)  # before the work
    limit_heap_growth()  # else the heap fragments organ after organ and memory grows with --n
    diffusion, autoencoder = load_generation_models(args.checkpoint, args.autoencoder, device=args.device)
    keep = None
    if args.keep is not None:
        keep = load_keep(args.keep, diffusion.num_tokens, diffusion.token_dim,
                         indices=_indices(args.keep_tokens) if args.keep_tokens else None)
    elif args.keep_tokens:
        raise SkellabError("--keep-tokens needs --keep FILE")
    organs = iter_generated(diffusion, autoencoder, args.organ, args.n, steps=args.steps, guidance=args.guidance,
                            seed=args.seed, scheduler=args.scheduler, resolution=args.resolution, keep=keep,
                            connect=args.connect, autoguidance=args.autoguidance, precision=args.precision,
                            max_genus=args.max_genus, max_attempts=args.max_attempts)
    count = 0
    with replace_folder(out, overwrite=args.overwrite, owned=GENERATED_NAME.match) as tmp:
        for g in organs:  # written and dropped one by one: memory does not grow with --n
            write_generated([g], tmp)
            flags = "watertight" if g.watertight else "NOT watertight"
            if args.max_genus is not None:
                flags += (f", genus {g.info['genus']} (draw {g.info['attempts']})" if g.info["genus_met"] else
                          f", genus {g.info['genus']}: above --max-genus after {args.max_attempts} draws")
            print(f"{out / f'organ_{g.index:02d}.ply'}  {len(g.vertices)} vertices, {len(g.faces)} faces, {flags}, "
                  f"{g.skeleton.num_spheres} spheres / {len(g.skeleton.edges)} edges", flush=True)
            count += 1
    auto = diffusion.guiding(args.autoguidance, args.organ)[1]
    print(f"generated {count} {args.organ} in {time.perf_counter() - t0:.1f} s "
          f"({args.scheduler}, {args.steps} steps, guidance {args.guidance:g}, autoguidance {auto:g}, seed {args.seed}; "
          "normalised frame)")
    return 0


def _cmd_join_stages(args: argparse.Namespace) -> int:
    out = Path(args.out)
    check_output_not_input(out, [args.spheres, args.features, args.guide])
    if out.exists() and not args.overwrite:
        raise SkellabError(f"{out} exists (pass --overwrite to replace it)")
    if (args.guide is None) != (args.autoguidance is None):
        raise SkellabError("--guide and --autoguidance go together")
    if args.guide_interval is not None and args.guide is None:
        raise SkellabError("--guide-interval needs --guide")
    if args.class_autoguidance and args.guide is None:
        raise SkellabError("--class-autoguidance needs --guide")
    class_weights = dict(args.class_autoguidance or [])
    diffusion = join_stages(load_diffusion(args.spheres), load_diffusion(args.features),
                            feature_steps=args.feature_steps)
    if args.guide is not None:
        diffusion = attach_guide(diffusion, load_diffusion(args.guide), args.autoguidance,
                                 {"source": Path(args.guide).name}, interval=args.guide_interval,
                                 class_weights=class_weights)
    save_diffusion(out, diffusion, storage=args.storage)  # atomic: a temporary file, then a rename
    print(f"{out}: two-stage diffusion model (spheres {args.spheres}, features {args.features}"
          + (f", autoguidance {args.autoguidance:g} with {args.guide}" if args.guide else "")
          + (" at noise levels {:g} < σ ≤ {:g}".format(*args.guide_interval) if args.guide_interval else "")
          + "".join(f", {name} at {a:g}" for name, a in class_weights.items())
          + (f", features in {args.feature_steps} steps" if args.feature_steps else "") + ")")
    return 0


#: the names ``skellab evaluate --gallery DIR`` writes (what its --overwrite may replace)
GALLERY_NAME = re.compile(r"^[A-Za-z0-9_.-]+\.png$")


def _cmd_evaluate(args: argparse.Namespace) -> int:

    say = None if args.quiet else (lambda msg: print(msg, file=sys.stderr))
    if args.fresh is not None:
        return _evaluate_fresh(args, say)
    if args.data is None:
        raise SkellabError("evaluate needs --data DIR (test-fold references) or --fresh N (fresh procedural ones)")
    for flag, value in (("--gallery", args.gallery), ("--bootstrap", args.bootstrap), ("--overwrite", args.overwrite),
                        ("--ref-seed", args.ref_seed is not None)):
        if value:
            raise SkellabError(f"{flag} needs --fresh N")
    points = args.points
    results = evaluate_generation(
        args.data, split=args.split, n=2 if args.n is None else args.n, num_points=points,
        emd_points=min(args.emd_points or 512, points), resolution=96 if args.resolution is None else args.resolution,
        steps=args.steps, guidance=args.guidance, seed=args.seed, classes=args.classes, connect=args.connect,
        autoguidance=args.autoguidance, precision=args.precision, diffusion_checkpoint=args.checkpoint,
        autoencoder_checkpoint=args.autoencoder,
        baseline_checkpoint=args.baseline_checkpoint, baseline_seconds=args.baseline_seconds,
        methods=args.methods or TABLE_METHODS, log=say)
    with atomic_path(args.out) as tmp:
        Path(tmp).write_text(json.dumps(results, indent=1))
    print(generation_table(results))
    print(f"wrote {args.out}")
    return 0


def _evaluate_fresh(args: argparse.Namespace, say) -> int:
    """``evaluate --fresh N``: fresh procedural references (+ the held-out real classes of --data)."""
    if args.n is not None:
        raise SkellabError("--n counts test-fold shapes; with --fresh N the references per family are N")
    gallery = Path(args.gallery) if args.gallery else None
    if gallery is not None:
        check_output_not_input(gallery, [args.data, args.checkpoint, args.autoencoder, args.baseline_checkpoint],
                               folder=True)
        check_folder_output(gallery, overwrite=args.overwrite, owned=GALLERY_NAME.match,
                            what="gallery folder")  # before the work
    elif args.overwrite:
        raise SkellabError("--overwrite applies to --gallery DIR only")
    check_output_not_input(args.out, [args.checkpoint, args.autoencoder, args.baseline_checkpoint])
    pictures: dict[str, bytes] = {}

    def picture(row: GalleryRow) -> None:  # rendered as each class is done: a missing matplotlib shows early
        if row.method == "skellab":
            fig = nearest_reference_gallery(row.generated, row.references, chamfer=row.chamfer,
                                            title=f"{row.organ}: generated / nearest reference")
            pictures[row.organ] = figure_png(fig)

    results = evaluate_fresh(
        args.fresh, classes=args.classes, data=args.data, split=args.split, num_points=args.points,
        seed0=FRESH_SEED0 if args.ref_seed is None else args.ref_seed,
        emd_points=min(args.emd_points or 256, args.points), steps=args.steps, guidance=args.guidance,
        resolution=64 if args.resolution is None else args.resolution, seed=args.seed, reps=args.bootstrap or 200,
        connect=args.connect, autoguidance=args.autoguidance, precision=args.precision,
        max_genus=args.max_genus, max_attempts=args.max_attempts,
        diffusion_checkpoint=args.checkpoint, autoencoder_checkpoint=args.autoencoder,
        baseline_checkpoint=args.baseline_checkpoint, baseline_seconds=args.baseline_seconds,
        gallery=picture if gallery else None, methods=args.methods or FRESH_METHODS, log=say)
    with atomic_path(args.out) as tmp:
        Path(tmp).write_text(json.dumps(results, indent=1))
    print(fresh_table(results))
    print(f"wrote {args.out}")
    if gallery is not None:
        with replace_folder(gallery, overwrite=args.overwrite, owned=GALLERY_NAME.match, what="gallery folder") as tmp:
            for organ, png in pictures.items():
                (tmp / f"{organ}.png").write_bytes(png)
        print(f"wrote {len(pictures)} gallery image(s) to {gallery}")
    return 0


FOLDER_RULE = ("replace a non-empty output folder. The folder is always written as a whole: into a temporary "
               "folder beside it, swapped in only when every file is written, so it never mixes old and new "
               "files and an interrupted run leaves the previous folder intact. Without --overwrite a non-empty "
               "folder is refused; with it, only a folder that holds nothing but {names} is replaced. A folder "
               "that holds an input is refused")


CONNECT_HELP = ("overlap margin in [0, 1) to which stray islands of sampled spheres are moved onto the organ's "
                "main body before decoding (default 0.1), or 'off' for the raw sampler output")
MAX_GENUS_HELP = ("redraw an organ whose mesh has more than G handles (loops), up to --max-attempts draws, keeping "
                  "the one with the fewest if none has at most G (rejection sampling; e.g. 0 for vessel and airway "
                  "trees). Default: every draw is kept, the model's own distribution")
PRECISION_HELP = ("arithmetic of the denoiser and the decoder: auto (default: bf16 where the CPU or GPU multiplies "
                  "bf16 natively, else fp32), fp32 (the same numbers on every machine) or bf16")


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="skellab", description="Skeletal latent diffusion for 3D medical shapes.")
    parser.add_argument("--version", action="version", version=f"skellab {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    sub.required = True

    data = sub.add_parser("data", help="build, inspect and extend MedSDF datasets")
    dsub = data.add_subparsers(dest="data_command", metavar="ACTION", parser_class=Parser)
    dsub.required = True
    b = dsub.add_parser("build", help="build a MedSDF dataset from a preset (tiny, mini)")
    b.add_argument("--preset", default="mini",
                   help="tiny (seconds, for tests), mini (MedSDF-mini) or fidelity (mini + detailed and thin-walled "
                        "families + augmentation)")
    b.add_argument("--out", required=True, help="output folder")
    b.add_argument("--workers", type=positive_int, default=1, help="worker processes")
    b.add_argument("--shard", default=None, help="i/n: build only shard i of n (then `skellab data merge`)")
    b.add_argument("--grid", type=int, default=0, help="also store an R^3 SDF grid (0: none)")
    b.add_argument("--overwrite", action="store_true", help="rebuild over an existing dataset")
    b.add_argument("--resume", action="store_true",
                   help="continue an interrupted build of the same preset: reuse the shape files it left complete")
    b.add_argument("--quiet", action="store_true", help="no progress bar")
    b.set_defaults(func=_cmd_data_build)
    m = dsub.add_parser("merge", help="merge shard manifests into manifest.json")
    m.add_argument("dir")
    m.set_defaults(func=_cmd_data_merge)
    i = dsub.add_parser("info", help="summarise a MedSDF dataset")
    i.add_argument("dir")
    i.add_argument("--verify", action="store_true", help="check every file's sha256")
    i.add_argument("--json", action="store_true", help="print the summary as JSON")
    i.set_defaults(func=_cmd_data_info)
    c = dsub.add_parser("check", help="re-verify meshes and SDF signs (exact winding number)")
    c.add_argument("dir")
    c.add_argument("--samples", type=positive_int, default=2000, help="SDF samples checked per shape")
    c.add_argument("--quiet", action="store_true")
    c.set_defaults(func=_cmd_data_check)
    im = dsub.add_parser("import", help="add your own meshes or label volumes to a dataset")
    im.add_argument("files", nargs="+", help="mesh files (STL, PLY, OBJ, OFF, GIFTI) or NIfTI label volumes")
    im.add_argument("--class", dest="organ", required=True, help="organ class name")
    im.add_argument("--out", required=True, help="dataset folder (created if absent)")
    im.add_argument("--label", type=int, default=None, help="label value to extract from label volumes")
    im.add_argument("--license", default="user-provided", help="licence of the imported data")
    im.add_argument("--workers", type=positive_int, default=1)
    im.add_argument("--quiet", action="store_true")
    im.set_defaults(func=_cmd_data_import)

    s = sub.add_parser("skeletonize", help="skeletal spheres + stick-figure graph of a mesh or point cloud")
    s.add_argument("input", help="mesh file, or point cloud (.npy (N,3) / (N,6) with normals, .ply points)")
    s.add_argument("--out", required=True,
                   help="output .npz (centers, radii, edges, method), input's coordinates; another suffix or the "
                        "input itself is refused; an existing file is replaced atomically")
    s.add_argument("--method", default="medial", help="medial (default), contraction, learned or thinning")
    s.add_argument("--points", type=positive_int, default=256, help="number of skeletal spheres K")
    s.add_argument("--seed", type=seed_arg, default=0)
    s.add_argument("--device", default="auto", help="auto, cpu or cuda")
    s.set_defaults(func=_cmd_skeletonize)

    r = sub.add_parser("reconstruct", help="encode a mesh to its skeletal latent and decode it back")
    r.add_argument("input", help="mesh file (STL, PLY, OBJ, OFF, GIFTI), or an oriented surface point cloud (.npy of "
                                 "(N, 6) points and outward normals, PLY points with nx, ny, nz)")
    r.add_argument("--out", required=True,
                   help="output mesh (.ply, .stl, .obj), in the input's units; the input itself is refused, an "
                        "existing file is replaced atomically (never half-written)")
    r.add_argument("--resolution", type=int, default=128, help="marching-cubes grid (8 < R <= 512)")
    r.add_argument("--checkpoint", default=None,
                   help=f"autoencoder checkpoint (default: the shipped {RECONSTRUCT_WEIGHTS}.pt, the most faithful)")
    r.add_argument("--organ", default=None, help="organ class for class-conditioned models")
    r.add_argument("--seed", type=seed_arg, default=0)
    r.add_argument("--device", default="cpu", help="cpu, cuda or auto")
    r.add_argument("--refine", type=nonnegative_int, default=RECONSTRUCT_REFINE_STEPS, metavar="STEPS",
                   help="after encoding, fit the tokens (features and spheres) to the input's exact SDF (a point "
                        f"cloud: the SDF its points and normals imply) for STEPS Adam steps (default "
                        f"{RECONSTRUCT_REFINE_STEPS}: ~8 s on one CPU thread, much more detail on anatomy "
                        "unlike the training data; 0: the encoder's latent alone)")
    r.add_argument("--fixed-spheres", action="store_true",
                   help="refine the token features only, keeping the encoder's skeletal spheres (by default the "
                        "spheres are fitted too)")
    r.set_defaults(func=_cmd_reconstruct)

    it = sub.add_parser("interpolate", help="meshes along a path between two organs' skeletal latents")
    it.add_argument("a", help="first mesh file")
    it.add_argument("b", help="second mesh file")
    it.add_argument("--steps", type=int, default=5, help="number of meshes, endpoints included (>= 2)")
    it.add_argument("--out", required=True, help="output folder (step_XX.ply); see --overwrite")
    it.add_argument("--overwrite", action="store_true", help=FOLDER_RULE.format(names="step_XX.ply"))
    it.add_argument("--resolution", type=int, default=96, help="marching-cubes grid (8 < R <= 512)")
    it.add_argument("--checkpoint", default=None)
    it.add_argument("--seed", type=seed_arg, default=0)
    it.add_argument("--device", default="cpu")
    it.set_defaults(func=_cmd_interpolate)

    d = sub.add_parser("demo", help="the whole pipeline on the shipped weights, written as an offline gallery")
    d.add_argument("--out", default="skellab-demo", help="output folder (index.html, meshes, renders)")
    d.add_argument("--resolution", type=int, default=96, help="marching-cubes grid")
    d.add_argument("--seed", type=seed_arg, default=0)
    d.add_argument("--no-snapshots", action="store_true", help="skip the interactive k3d HTML files")
    d.set_defaults(func=_cmd_demo)

    gen = sub.add_parser("generate", help="generate new organs (meshes + skeletons) with the latent diffusion model")
    gen.add_argument("--organ", default=None, help="organ class (see --list-organs)")
    gen.add_argument("--n", type=int, default=1, help="number of organs")
    gen.add_argument("--out", default=None,
                     help="output folder (organ_XX.ply + organ_XX_skeleton.npz + organ_XX_latent.npz, normalised "
                          "frame); see --overwrite")
    gen.add_argument("--overwrite", action="store_true",
                     help=FOLDER_RULE.format(names="organ_XX.ply, organ_XX_skeleton.npz, organ_XX_latent.npz"))
    gen.add_argument("--steps", type=int, default=20, help="sampler steps (EDM Heun: 2*steps-1 network calls)")
    gen.add_argument("--guidance", type=float, default=DEFAULT_GUIDANCE,
                     help=f"classifier-free guidance weight (>= 0; default {DEFAULT_GUIDANCE:g}, the paper 2)")
    gen.add_argument("--autoguidance", type=float, default=None, metavar="A",
                     help="weight of the checkpoint's guide network (autoguidance; default: the checkpoint's own, "
                          "1.5 for the shipped model; 1: off)")
    gen.add_argument("--precision", choices=PRECISIONS, default="auto", help=PRECISION_HELP)
    gen.add_argument("--seed", type=seed_arg, default=0)
    gen.add_argument("--scheduler", default="edm", help="edm (Heun), ddim (deterministic Euler) or ddpm")
    gen.add_argument("--resolution", type=int, default=128, help="marching-cubes grid (8 < R <= 512)")
    gen.add_argument("--checkpoint", default=None, help="diffusion checkpoint (default: shipped weights)")
    gen.add_argument("--autoencoder", default=None, help="autoencoder checkpoint (default: shipped weights)")
    gen.add_argument("--device", default="cpu", help="cpu, cuda or auto")
    gen.add_argument("--connect", type=connect_arg, default=CONNECT_OVERLAP, metavar="MARGIN|off", help=CONNECT_HELP)
    gen.add_argument("--max-genus", type=nonnegative_int, default=None, metavar="G", help=MAX_GENUS_HELP)
    gen.add_argument("--max-attempts", type=positive_int, default=3, metavar="N",
                     help="draws per organ at most (redraws of a sample with no surface, or above --max-genus)")
    gen.add_argument("--list-organs", action="store_true", help="print the organ classes, one per line, and exit")
    gen.add_argument("--keep", default=None, metavar="FILE",
                     help="complete an edited organ: keep the tokens of FILE (organ_XX_latent.npz: tokens; "
                          "organ_XX_skeleton.npz or an edited skeleton: only xyz + r) and let diffusion finish the rest")
    gen.add_argument("--keep-tokens", default=None, metavar="I-J,K",
                     help="with --keep: keep only these token indices (e.g. a branch: 0-40)")
    gen.set_defaults(func=_cmd_generate)

    ev = sub.add_parser("evaluate", help="MMD / COV / 1-NNA / Betti table: skellab vs point diffusion vs ablation")
    ev.add_argument("--data", default=None,
                    help="MedSDF dataset folder (e.g. MedSDF-mini): its --split shapes are the references; with "
                         "--fresh optional: its held-out real classes join the fresh references, and the baseline "
                         "is trained on its training split")
    ev.add_argument("--out", required=True, help="output JSON")
    ev.add_argument("--fresh", type=positive_int, default=None, metavar="N",
                    help="compare with N fresh procedural shapes per family (seeds from 1,000,000, never in a "
                         "dataset) instead of the test fold; bootstrap intervals and plausibility statistics")
    ev.add_argument("--gallery", default=None, metavar="DIR",
                    help="with --fresh: one PNG per class, generated organs on top, nearest references below")
    ev.add_argument("--overwrite", action="store_true", help=FOLDER_RULE.format(names="CLASS.png") + " (--gallery)")
    ev.add_argument("--methods", nargs="+", choices=FRESH_METHODS, default=None,
                    help="only these methods (default: all; the test fold has skellab, point_diffusion and "
                         "surface_latent_ablation; --fresh adds reference_draw and autoencoder_reconstruction, which "
                         "score a second fresh draw: a perfect generator, a perfect sampler of the latents)")
    ev.add_argument("--bootstrap", type=positive_int, default=None, metavar="REPS",
                    help="with --fresh: bootstrap resamples for the intervals (default 200)")
    ev.add_argument("--split", default="test", help="reference split: test (default), val, train or all")
    ev.add_argument("--n", type=positive_int, default=None, help="at most N reference shapes per class (default 2)")
    ev.add_argument("--points", type=positive_int, default=2048, help="surface points per shape (CD)")
    ev.add_argument("--emd-points", type=positive_int, default=None,
                    help="points per shape for EMD (default 512; with --fresh 256)")
    ev.add_argument("--resolution", type=int, default=None,
                    help="marching-cubes grid of generated meshes (default 96; with --fresh 64)")
    ev.add_argument("--steps", type=int, default=20, help="sampler steps (both models)")
    ev.add_argument("--guidance", type=float, default=DEFAULT_GUIDANCE,
                    help=f"classifier-free guidance weight (both models; default {DEFAULT_GUIDANCE:g})")
    ev.add_argument("--autoguidance", type=float, default=None, metavar="A",
                    help="weight of skellab's guide network (autoguidance; default: the checkpoint's own; 1: off)")
    ev.add_argument("--precision", choices=PRECISIONS, default="auto", help=PRECISION_HELP + " (every method)")
    ev.add_argument("--seed", type=seed_arg, default=0)
    ev.add_argument("--ref-seed", type=seed_arg, default=None, metavar="SEED",
                    help="with --fresh: first reference seed (default 1,000,000; must be >= 1,000,000). A second "
                         "range, e.g. 3,000,000, is a validation set for choosing sampler settings, so that the "
                         "default range stays an untouched test set")
    ev.add_argument("--classes", nargs="+", default=None, help="only these organ classes")
    ev.add_argument("--connect", type=connect_arg, default=CONNECT_OVERLAP, metavar="MARGIN|off",
                    help=CONNECT_HELP + " (skellab only)")
    ev.add_argument("--max-genus", type=nonnegative_int, default=None, metavar="G", help=MAX_GENUS_HELP + " (skellab only)")
    ev.add_argument("--max-attempts", type=positive_int, default=3, metavar="N", help="with --max-genus: draws per organ at most")
    ev.add_argument("--baseline-seconds", type=float, default=None,
                    help="baseline training budget in CPU seconds (default: the diffusion model's, i.e. matched)")
    ev.add_argument("--baseline-checkpoint", default=None, help="reuse this baseline if it exists, else save it here")
    ev.add_argument("--checkpoint", default=None, help="diffusion checkpoint (default: shipped weights)")
    ev.add_argument("--autoencoder", default=None, help="autoencoder checkpoint (default: shipped weights)")
    ev.add_argument("--quiet", action="store_true", help="no progress messages")
    ev.set_defaults(func=_cmd_evaluate)


    js = sub.add_parser("join-stages", help="one two-stage diffusion checkpoint from its sphere and feature stages")
    js.add_argument("spheres", help="the sphere stage (trained with `skellab train diffusion --set channels=spheres`)")
    js.add_argument("features", help="the feature stage (trained with --set channels=features)")
    js.add_argument("--out", required=True, help="the joined checkpoint to write")
    js.add_argument("--guide", default=None, help="a weaker sphere stage for autoguidance (e.g. an earlier export)")
    js.add_argument("--autoguidance", type=float, default=None, help="the guide's weight a (with --guide)")
    js.add_argument("--guide-interval", type=float, nargs=2, default=None, metavar=("LO", "HI"),
                    help="apply the guide only at noise levels LO < σ ≤ HI (default: every step)")
    js.add_argument("--class-autoguidance", type=class_weight, nargs="+", default=None, metavar="CLASS=A",
                    help="these classes sample with their own guide weight (e.g. vessel_tree=2; with --guide)")
    js.add_argument("--storage", choices=["fp32", "bf16"], default="fp32", help="weight storage (bf16: half the bytes)")
    js.add_argument("--feature-steps", type=positive_int, default=None, metavar="N",
                    help="sampler steps of the feature stage, whatever the sphere stage's (default: as many)")
    js.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    js.set_defaults(func=_cmd_join_stages)

    tr = sub.add_parser("train", help="train a stage (skeleton, autoencoder, diffusion) or all; resumable, torchrun-ready")
    add_train_arguments(tr)
    tr.set_defaults(func=run_train)
    add_debug_flag(parser)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    return run_command(args.func, args)
