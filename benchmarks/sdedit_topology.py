"""At which noise level does a sampled tree get its loops? (issue 13: trees come out with cycles and too many
junctions.)

    python benchmarks/sdedit_topology.py --diffusion skellab/weights/diffusion.pt OTHER.pt --out sdedit.json

For each tree family, ``--n`` fresh procedural shapes (seeds from 2,000,000: never in a dataset, nor among
``skellab evaluate --fresh``'s reference ranges) are encoded by the autoencoder, noised to σ (standardised latent
units; σ_data = 0.5) and denoised from there by each diffusion model with its own sampler settings (SDEdit,
:meth:`skellab.diffusion.LatentDiffusion.vary`; σ = 80 is a fresh sample). Each result is joined as generated
organs are (:func:`skellab.generation.connect_latents`), decoded and meshed whole at 64³
(:func:`skellab.generation.decode_organ`) and measured by :func:`skellab.evaluation.fresh.shape_statistics`:
how many are genus 0 (the references' genus), the skeleton's junctions, the number of pieces — for the decoded
mesh and for the union of its spheres (the decoder's prior), so a loop can be told to come from the spheres or
from the decoder. σ = 0 is the encoded shape itself (the autoencoder's share). A model that denoises well keeps
the references' topology up to a larger σ; the σ where it is lost is where the sampler's errors make loops.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
import trimesh

from skellab.autoencoder import Latent, load_autoencoder
from skellab.data.procedural import make_shape
from skellab.data.shape import Normalization
from skellab.diffusion import load_diffusion
from skellab.evaluation.fresh import shape_statistics
from skellab.generation import connect_latents, decode_organ
from skellab.meshing import sphere_union_mesh
from skellab.pipeline import encode_shape
from skellab.runtime import make_generator

FIRST_SEED = 2_000_000
RESOLUTION = 64


def _normalised(mesh: trimesh.Trimesh) -> trimesh.Trimesh:
    """The mesh in its own frame (bbox centre 0, max |coordinate| 1), as ``skellab evaluate --fresh`` measures."""
    v = np.asarray(mesh.vertices, np.float64)
    return trimesh.Trimesh(Normalization.fit(v).apply(v), np.asarray(mesh.faces), process=False)


def _stats(tokens: torch.Tensor, ae, organ: str) -> tuple[list[dict], list[dict]]:
    """(decoded-mesh statistics, sphere-union statistics) of each token set (N, K, D), joined as generated organs."""
    joined, _ = connect_latents(Latent(tokens))
    decoded, prior = [], []
    for i in range(tokens.shape[0]):
        org = decode_organ(ae, joined[i], organ=organ, index=i, resolution=RESOLUTION, largest_component=False, seed=i)
        decoded.append(shape_statistics(_normalised(org.to_trimesh()), seed=i))
        v, f = sphere_union_mesh(joined.tokens[i, :, :3], joined.tokens[i, :, 3], resolution=RESOLUTION)
        prior.append(shape_statistics(_normalised(trimesh.Trimesh(v, f, process=False)), seed=i))
    return decoded, prior


def _summary(stats: list[dict]) -> dict:
    return {"genus0": sum(s["genus"] == 0 for s in stats), "n": len(stats),
            "junctions": round(float(np.mean([s["junctions"] or 0 for s in stats])), 2),
            "several_pieces": sum(s["components"] > 1 for s in stats)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--diffusion", nargs="+", required=True, help="diffusion checkpoints (same autoencoder)")
    ap.add_argument("--autoencoder", default=None, help="default: the shipped autoencoder.pt")
    ap.add_argument("--families", nargs="+", default=["vessel_tree", "airway_tree"])
    ap.add_argument("--n", type=int, default=24, help="fresh shapes per family")
    ap.add_argument("--sigma", type=float, nargs="+", default=[0.2, 0.5, 1.0, 80.0])
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default="sdedit_topology.json")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    ae = load_autoencoder(args.autoencoder)
    report: dict = {"command": "python benchmarks/sdedit_topology.py --diffusion " + " ".join(args.diffusion),
                    "n": args.n, "sigma": args.sigma, "first_seed": FIRST_SEED, "resolution": RESOLUTION,
                    "families": {}}
    models = {path: load_diffusion(path) for path in args.diffusion}
    for fam in args.families:
        shapes = [make_shape(fam, FIRST_SEED + i) for i in range(args.n)]
        tokens = torch.cat([encode_shape(ae, s, seed=i).tokens for i, s in enumerate(shapes)])
        refs = [shape_statistics(_normalised(s.to_trimesh()), seed=i) for i, s in enumerate(shapes)]
        enc, enc_prior = _stats(tokens, ae, fam)
        row = {"references": _summary(refs), "encoded": {"decoded": _summary(enc), "spheres": _summary(enc_prior)}}
        print(f"{fam}: references {row['references']}; encoded {row['encoded']}", flush=True)
        for path, model in models.items():
            row[path] = {}
            for sigma in args.sigma:
                varied = model.vary(tokens, sigma, class_index=fam, steps=args.steps,
                                    generator=make_generator(int(1000 * sigma)))
                moved = float((varied[..., :4] - tokens[..., :4]).abs().mean())
                dec, pri = _stats(varied, ae, fam)
                row[path][str(sigma)] = {"decoded": _summary(dec), "spheres": _summary(pri),
                                         "sphere_channels_moved": round(moved, 4)}
                print(f"{fam} {path} sigma {sigma:g}: {json.dumps(row[path][str(sigma)])}", flush=True)
        report["families"][fam] = row
    report["seconds"] = round(time.perf_counter() - t0, 1)
    Path(args.out).write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
