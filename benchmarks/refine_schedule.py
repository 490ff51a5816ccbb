"""Steps × learning rate × schedule (× sphere learning rate) of test-time refinement, screened on a few unseen shapes.

    python benchmarks/refine_schedule.py [--shapes frog_heart frog_liver ...] [--configs 500:0.03:constant ...] \\
        [--checkpoint skellab/weights/autoencoder_kernel.pt] [--out refine_schedule.json]

Each shape is encoded as ``benchmarks/fidelity.py`` encodes it (2,560 surface points, seed 0), then refined from the
encoder's latent with :func:`skellab.autoencoder.refine_on_shape` (exact SDF samples, seed 0) for each
``STEPS:LR:SCHEDULE[:SPHERE_LR]`` config (``SPHERE_LR`` > 0: the spheres move too; default 0), decoded on a guided 128³ grid and scored by F1@0.02 / F1@0.05 on 20,000 points — the
numbers ``fidelity.py --refine`` reports, at a fraction of its cost, to choose the defaults it then measures on the
whole split. One thread; the refinement's seconds are recorded, and the fraction of the (refined) spheres' centres
inside the shape and the farthest any centre moved (normalised frame).
"""

from __future__ import annotations

import argparse
import json
import time
import warnings

import numpy as np
import torch

from skellab.autoencoder import encode_points, load_autoencoder, refine_on_shape
from skellab.data.atlases import unseen_shapes
from skellab.data.sampling import sample_surface
from skellab.evaluation.fidelity import centres_inside
from skellab.meshing import decode_grid_guided, extract_mesh
from skellab.metrics.reconstruction import reconstruction_metrics
from skellab.weights import weights_path

SHAPES = ["frog_heart", "frog_liver", "frog_stomach", "perforated_shell_0000", "perforated_shell_0001"]
CONFIGS = ["500:0.03:constant", "1000:0.03:constant", "100:0.3:cosine", "150:0.1:cosine", "150:0.3:cosine",
           "150:0.5:cosine", "300:0.3:cosine", "500:0.3:cosine"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", default=str(weights_path("autoencoder_kernel")))
    ap.add_argument("--shapes", nargs="+", default=SHAPES, help="unseen-split shape ids")
    ap.add_argument("--configs", nargs="+", default=CONFIGS, metavar="STEPS:LR:SCHEDULE[:SPHERE_LR]")
    ap.add_argument("--out", default="refine_schedule.json")
    args = ap.parse_args()
    torch.set_num_threads(1)
    model = load_autoencoder(args.checkpoint).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        shapes = [s for s in unseen_shapes() if s.shape_id in args.shapes]
    configs = [(int(p[0]), float(p[1]), p[2], float(p[3]) if len(p) > 3 else 0.0)
               for p in (x.split(":") for x in args.configs)]
    rows = []
    for shape in shapes:
        points, normals = sample_surface(shape, model.config.num_surface, seed=0)
        with torch.no_grad():
            latent = encode_points(model, torch.from_numpy(points), torch.from_numpy(normals)).to("cpu")
        for steps, lr, schedule, sphere_lr in configs:
            t0 = time.perf_counter()
            fitted, _ = refine_on_shape(model, latent, shape, steps=steps, lr=lr, schedule=schedule,
                                        sphere_lr=sphere_lr, seed=0)
            seconds = time.perf_counter() - t0
            m = reconstruction_metrics(extract_mesh(decode_grid_guided(model, fitted, 128)), shape, n=20000, seed=0,
                                       taus=(0.02, 0.05), with_emd=False)
            rows.append({"shape": shape.shape_id, "steps": steps, "lr": lr, "schedule": schedule,
                         "sphere_lr": sphere_lr, "f1@0.02": m["f1@0.02"], "f1@0.05": m["f1@0.05"],
                         "centres_inside": centres_inside(shape, fitted),
                         "largest_centre_move": float((fitted.centers - latent.centers).norm(dim=-1).max()),
                         "seconds": seconds})
            print(json.dumps(rows[-1]), flush=True)
    summary = {}
    for steps, lr, schedule, sphere_lr in configs:
        mine = [r for r in rows if (r["steps"], r["lr"], r["schedule"], r["sphere_lr"]) == (steps, lr, schedule,
                                                                                             sphere_lr)]
        summary[f"{steps}:{lr}:{schedule}:{sphere_lr}"] = {
            "f1@0.02": float(np.mean([r["f1@0.02"] for r in mine])),
            "centres_inside": float(np.min([r["centres_inside"] for r in mine])),
            "seconds": float(np.median([r["seconds"] for r in mine]))}
    print(json.dumps(summary, indent=1))
    with open(args.out, "w") as fh:
        json.dump({"checkpoint": args.checkpoint, "shapes": args.shapes, "rows": rows, "summary": summary}, fh, indent=1)


if __name__ == "__main__":
    main()
