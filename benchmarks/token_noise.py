"""How much does a decoded organ move when its tokens carry a sampler-sized error? (issue 13, "a decoder trained
to tolerate the small token errors a sampler makes": measure the tolerance first.)

    python benchmarks/token_noise.py --pair skellab/weights/autoencoder.pt skellab/weights/diffusion.pt \\
        --pair skellab/weights/autoencoder_kernel.pt RUN/diffusion/model.pt --out token_noise.json

For each autoencoder (paired with the diffusion model trained on its latents, whose per-channel latent
statistics set the noise scale) and each family: draw ``--n`` fresh procedural shapes (seeds from
1,000,000, never in a dataset), encode them, and decode the clean latent and the latent plus Gaussian noise of
``sigma`` × the channel's standard deviation — on the 12 feature channels only (what the decoder alone turns
into surface), or on the 4 sphere channels only (centres and radii: the sphere-union prior moves too). Reported
per family and σ: Chamfer (PointFlow, ×10³, 20,000 points, normalised frame) between the noisy and the clean
decoding, and of each to the shape itself; ``sampling_floor`` is the Chamfer between two independent point samples
of the clean decoding (what an unchanged surface scores). Same shapes, seeds and noise for every autoencoder.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from skellab.autoencoder import Latent, load_autoencoder
from skellab.data.procedural import make_shape
from skellab.diffusion import load_diffusion
from skellab.meshing import decode_mesh
from skellab.metrics import reconstruction_metrics
from skellab.pipeline import encode_shape
from skellab.runtime import make_generator

FIRST_SEED = 1_000_000
POINTS = 20_000  # dense: at 2,048 points the sampling floor (~1.4e-3 on a kidney) hides what the features do
CHANNELS = {"features": slice(4, None), "spheres": slice(0, 4)}  # token = [xyz, r, features…]


def cd(a, b, seed: int) -> float:
    return 1e3 * reconstruction_metrics(a, b, n=POINTS, seed=seed, with_emd=False)["cd_pointflow"]


def noisy(latent: Latent, std: torch.Tensor, sigma: float, channels: slice, g: torch.Generator) -> Latent:
    tokens = latent.tokens.clone()
    part = tokens[..., channels]
    part += sigma * std[channels] * torch.randn(part.shape, generator=g)
    tokens[..., 3] = tokens[..., 3].clamp_min(1e-3)  # a radius stays positive
    return Latent(tokens, latent.class_index)


def run_pair(ae_path: str, diff_path: str, families, n: int, sigmas: dict, resolution: int) -> dict:
    ae = load_autoencoder(ae_path)
    std = load_diffusion(diff_path).normalizer.std.float()
    out: dict = {"latent_std": [round(float(v), 4) for v in std]}  # per channel: xyz, r, features
    for fam in families:
        rows = {f"{kind}@{s}": {"to_clean": [], "to_shape": []} for kind in CHANNELS for s in sigmas[kind]}
        clean_to_shape, floor = [], []
        for i in range(n):
            shape = make_shape(fam, FIRST_SEED + i)
            latent = encode_shape(ae, shape, seed=i)
            clean = decode_mesh(ae, latent, resolution)
            clean_to_shape.append(cd(clean, shape, i))
            floor.append(cd(clean, clean, i))  # two independent point samples of the same mesh
            for kind, channels in CHANNELS.items():
                for s in sigmas[kind]:
                    g = make_generator(1000 * i + int(1000 * s) + (0 if kind == "features" else 7))
                    mesh = decode_mesh(ae, noisy(latent, std, s, channels, g), resolution)
                    rows[f"{kind}@{s}"]["to_clean"].append(cd(mesh, clean, i))
                    rows[f"{kind}@{s}"]["to_shape"].append(cd(mesh, shape, i))
        out[fam] = {"clean_to_shape": float(np.mean(clean_to_shape)), "sampling_floor": float(np.mean(floor)),
                    **{k: {m: float(np.mean(v)) for m, v in r.items()} for k, r in rows.items()}}
        print(ae_path, fam, json.dumps(out[fam]), flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pair", nargs=2, action="append", required=True, metavar=("AUTOENCODER", "DIFFUSION"))
    ap.add_argument("--families", nargs="+", default=["kidney", "long_bone", "liver", "vessel_tree", "airway_tree"])
    ap.add_argument("--n", type=int, default=8, help="fresh shapes per family")
    ap.add_argument("--feature-sigma", type=float, nargs="+", default=[0.3, 1.0])
    ap.add_argument("--sphere-sigma", type=float, nargs="+", default=[0.01, 0.03])
    ap.add_argument("--resolution", type=int, default=64)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default="token_noise.json")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    sigmas = {"features": args.feature_sigma, "spheres": args.sphere_sigma}
    report = {"command": "python benchmarks/token_noise.py " + " ".join(f"--pair {a} {d}" for a, d in args.pair),
              "n": args.n, "sigmas": sigmas, "points": POINTS, "resolution": args.resolution, "first_seed": FIRST_SEED,
              "units": "Chamfer (PointFlow) x1e3 on 20000 points, normalised frame; noise in units of the paired "
                       "diffusion model's per-channel latent std",
              "pairs": {f"{a} + {d}": run_pair(a, d, args.families, args.n, sigmas, args.resolution)
                        for a, d in args.pair}}
    report["seconds"] = round(time.perf_counter() - t0, 1)
    Path(args.out).write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
