"""Finishing a given skeleton: how close are the organs diffusion draws around a fixed set of spheres to the
shape those spheres came from? (issue 13, part 3: edit a skeleton, then let diffusion finish the organ.)

    python benchmarks/finish_skeleton.py --diffusion skellab/weights/diffusion.pt TWO_STAGE.pt --out finish.json

For each family, ``--n`` fresh procedural shapes (seeds from 2,000,000: never in a dataset, nor among
``skellab evaluate --fresh``'s reference ranges) are encoded by the autoencoder. Each shape's spheres (xyz, r) are
kept exactly and each diffusion model draws ``--draws`` sets of features around them
(:meth:`skellab.diffusion.LatentDiffusion.finish_skeleton`: a two-stage model's feature stage given the spheres;
a joint model completes the feature channels by RePaint inpainting). Each organ is decoded and meshed at 64³
(:func:`skellab.generation.decode_organ`) and compared with the shape the spheres came from: Chamfer distance
(PointFlow convention, ×10³, 4,096 points, each mesh in its own normalised frame as ``skellab evaluate`` measures)
and the fraction that are one piece. Baselines in the same run, on the same spheres: the encoded features (the
autoencoder's own reconstruction: the best any feature sampler can hope for), every token's features at the
training mean (what the decoder makes of the spheres alone), the union of the spheres, and the floor: the source
shape against a second sample of its own points (what point sampling alone measures). ``draws`` diversity
is the mean pairwise Chamfer distance between a shape's draws; seconds are per organ, sampling only, 1 thread.
"""

from __future__ import annotations

import argparse
import json
import time
from itertools import combinations
from pathlib import Path

import numpy as np
import torch
import trimesh

from skellab.autoencoder import Latent, load_autoencoder
from skellab.data.procedural import make_shape
from skellab.data.shape import Normalization
from skellab.diffusion import load_diffusion
from skellab.errors import SkellabError
from skellab.generation import decode_organ
from skellab.meshing import sphere_union_mesh
from skellab.metrics import chamfer_distance, sample_points
from skellab.pipeline import encode_shape
from skellab.runtime import make_generator

FIRST_SEED = 2_000_000
RESOLUTION = 64


def _cloud(vertices, faces, points: int, seed: int) -> np.ndarray:
    """Surface points of a mesh in its own frame (bbox centre 0, max |coordinate| 1)."""
    v = np.asarray(vertices, np.float64)
    return sample_points((Normalization.fit(v).apply(v), np.asarray(faces)), points, seed=seed)


def _decoded(ae, tokens: torch.Tensor, organ: str, points: int, seed: int) -> tuple[np.ndarray | None, bool]:
    """(cloud of the decoded organ, one piece?) for one token set (K, D); (None, False) when it has no surface."""
    try:
        org = decode_organ(ae, Latent(tokens[None]), organ=organ, index=0, resolution=RESOLUTION,
                           largest_component=False, seed=seed)
    except SkellabError:
        return None, False
    mesh = trimesh.Trimesh(org.vertices, org.faces, process=False)
    return _cloud(org.vertices, org.faces, points, seed), len(mesh.split(only_watertight=False)) == 1


def _cd(cloud: np.ndarray | None, ref: np.ndarray) -> float:
    return float("nan") if cloud is None else 1e3 * chamfer_distance(cloud, ref)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--diffusion", nargs="+", required=True, help="diffusion checkpoints (same autoencoder)")
    ap.add_argument("--autoencoder", default=None, help="default: the shipped autoencoder.pt")
    ap.add_argument("--families", nargs="+", default=["kidney", "liver", "vessel_tree", "colon"])
    ap.add_argument("--n", type=int, default=8, help="fresh shapes per family")
    ap.add_argument("--draws", type=int, default=3, help="feature draws per skeleton and model")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--resample", type=int, default=4, help="RePaint jumps per step (joint models)")
    ap.add_argument("--points", type=int, default=4096)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default="finish_skeleton.json")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    ae = load_autoencoder(args.autoencoder)
    models = {path: load_diffusion(path) for path in args.diffusion}
    report: dict = {"command": "python benchmarks/finish_skeleton.py --diffusion " + " ".join(args.diffusion),
                    "n": args.n, "draws": args.draws, "steps": args.steps, "resample": args.resample,
                    "first_seed": FIRST_SEED, "resolution": RESOLUTION, "points": args.points,
                    "cd": "PointFlow Chamfer x1e3 to the source shape, own frames", "families": {}}
    mean_features = next(iter(models.values())).normalizer.mean[4:]
    for fam in args.families:
        rows: dict[str, dict[str, list[float]]] = {}

        def add(name: str, key: str, value: float) -> None:
            rows.setdefault(name, {}).setdefault(key, []).append(value)

        for i in range(args.n):
            shape = make_shape(fam, FIRST_SEED + i)
            ref = _cloud(shape.vertices, shape.faces, args.points, seed=10_000 + i)
            add("floor", "cd", _cd(_cloud(shape.vertices, shape.faces, args.points, seed=20_000 + i), ref))
            tokens = encode_shape(ae, shape, seed=i).tokens[0]  # (K, D)
            cloud, one = _decoded(ae, tokens, fam, args.points, i)
            add("encoded", "cd", _cd(cloud, ref))
            add("encoded", "one_piece", float(one))
            blind = tokens.clone()
            blind[:, 4:] = mean_features
            cloud, one = _decoded(ae, blind, fam, args.points, i)
            add("mean_features", "cd", _cd(cloud, ref))
            add("mean_features", "one_piece", float(one))
            v, f = sphere_union_mesh(tokens[:, :3], tokens[:, 3], resolution=RESOLUTION)
            add("sphere_union", "cd", _cd(_cloud(v, f, args.points, i), ref))
            for path, model in models.items():
                t1 = time.perf_counter()
                drawn = model.finish_skeleton(tokens[:, :4], args.draws, class_index=fam, steps=args.steps,
                                              resample=args.resample, generator=make_generator(i))
                add(path, "seconds", (time.perf_counter() - t1) / args.draws)
                add(path, "sphere_max_move", float((drawn[..., :4] - tokens[:, :4]).abs().max()))
                clouds = []
                for j in range(args.draws):
                    cloud, one = _decoded(ae, drawn[j], fam, args.points, i)
                    add(path, "cd", _cd(cloud, ref))
                    add(path, "one_piece", float(one))
                    clouds.append(cloud)
                pairs = [1e3 * chamfer_distance(a, b) for a, b in combinations(clouds, 2)
                         if a is not None and b is not None]
                if pairs:
                    add(path, "diversity", float(np.mean(pairs)))
        fam_report = {name: {k: round(float(np.nanmean(v)), 4) if k != "sphere_max_move" else float(np.max(v))
                             for k, v in cols.items()} for name, cols in rows.items()}
        for name, cols in fam_report.items():
            cds = rows[name]["cd"]
            cols["cd_median"] = round(float(np.nanmedian(cds)), 4)
            cols["no_surface"] = int(np.isnan(cds).sum())
        report["families"][fam] = fam_report
        print(f"{fam}: {json.dumps(fam_report)}", flush=True)
    report["seconds"] = round(time.perf_counter() - t0, 1)
    Path(args.out).write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
