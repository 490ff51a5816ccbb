"""Does the autoencoder add what its spheres miss? Network vs sphere-union prior, per class, dense points.

    python benchmarks/fidelity.py --checkpoint skellab/weights/autoencoder.pt --data medsdf-mini \
        --out fidelity.json [--unseen] [--points 20000] [--resolution 128] [--max-per-class 8] [--refine 500]

Two splits, reported separately:

* ``test_fold`` — MedSDF's fold 5 (classes the model was trained on, shapes it never saw);
* ``unseen`` (``--unseen``) — shapes of classes the autoencoder never trained on, from
  :func:`skellab.data.atlases.unseen_shapes` (real anatomy from offline sources + one held-out
  procedural family; sources missing on a machine are skipped with a warning).

Each shape is sampled, skeletonized and encoded as ``skellab reconstruct`` does (the model's own
skeleton method), decoded on a guided ``--resolution``³ grid and meshed; the union of the *same*
skeletal spheres is meshed at the same resolution. Both are compared with the true surface on
``--points`` area-uniform samples (F1@0.02, F1@0.05, CD PointFlow, Hausdorff; normalised frame).
``gain`` = network − prior. The JSON also records the thin-wall skeleton check: the fraction of
skeletal centres inside each shape (winding number), which must be ≥ 0.99 for a skeleton of a thin wall.
``--refine STEPS`` adds a third mesh per shape: the same spheres with the token features fitted to the
shape's exact SDF for STEPS Adam steps (``skellab reconstruct --refine``), and ``gain refined`` = refined − prior;
with ``--refine-from points`` the features are fitted to the SDF a 20,000-point oriented surface point cloud
implies (:func:`skellab.autoencoder.refine_on_points`), the protocol for a scan without a mesh.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
import warnings
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch

from skellab.autoencoder import REFINE_SCHEDULES, load_autoencoder
from skellab.data.medsdf import MedSDF, ids_unseen_by
from skellab.evaluation import FIDELITY_KEYS, evaluate_fidelity
from skellab.evaluation.fidelity import REFINE_FROM
from skellab.tables import format_table


def test_fold_shapes(root: str, max_per_class: int, exclude: list[str] = ()) -> list:
    """Test-fold shapes of ``root`` (first ``max_per_class`` ids per class), minus any shape that is in the
    train or val split of a dataset in ``exclude`` (so models trained on different datasets are compared on
    shapes none of them saw)."""
    store = MedSDF.open(root)
    by_class = defaultdict(list)
    for sid in ids_unseen_by(root, "test", exclude):
        by_class[store.record(sid)["class"]].append(sid)
    return [store.shape(s) for c in sorted(by_class) for s in sorted(by_class[c])[:max_per_class]]


def run(model, shapes, args, name: str) -> dict:
    t0 = time.perf_counter()
    res = evaluate_fidelity(model, shapes, resolution=args.resolution, n=args.points, seed=0,
                            log=lambda m: print(f"{name} {m}", flush=True), refine=args.refine,
                            refine_from=args.refine_from, refine_lr=args.refine_lr,
                            refine_schedule=args.refine_schedule, refine_sphere_lr=args.refine_sphere_lr)
    res["seconds"] = time.perf_counter() - t0
    return res


def table(res: dict) -> str:
    def refined(part: dict) -> dict:
        if "refined" not in part:
            return {}
        return {"refined f1@0.02": part["refined"]["f1@0.02"], "refined f1@0.05": part["refined"]["f1@0.05"],
                "gain refined f1@0.02": part["gain_refined"]["f1@0.02"]}

    rows = [{"class": c, "n": pc["count"], **{f"net {k}": pc["network"][k] for k in ("f1@0.02", "f1@0.05")},
             **{f"prior {k}": pc["prior"][k] for k in ("f1@0.02", "f1@0.05")}, "gain f1@0.02": pc["gain"]["f1@0.02"],
             **refined(pc),
             "cd net x1e3": 1e3 * pc["network"]["cd_pointflow"], "cd prior x1e3": 1e3 * pc["prior"]["cd_pointflow"],
             "inside": pc["centres_inside"]} for c, pc in res["per_class"].items()]
    m = res["class_mean"]
    rows.append({"class": "MEAN (classes)", "n": len(res["shapes"]), "net f1@0.02": m["network"]["f1@0.02"],
                 "net f1@0.05": m["network"]["f1@0.05"], "prior f1@0.02": m["prior"]["f1@0.02"],
                 "prior f1@0.05": m["prior"]["f1@0.05"], "gain f1@0.02": m["gain"]["f1@0.02"], **refined(m),
                 "cd net x1e3": 1e3 * m["network"]["cd_pointflow"], "cd prior x1e3": 1e3 * m["prior"]["cd_pointflow"],
                 "inside": float(np.mean([pc["centres_inside"] for pc in res["per_class"].values()]))})
    return format_table(rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", default=None, help="autoencoder checkpoint (default: the shipped one)")
    ap.add_argument("--data", default=None, help="MedSDF folder: evaluates its test fold")
    ap.add_argument("--exclude-train-of", nargs="*", default=[], metavar="DIR",
                    help="drop test shapes that are in the train/val split of these MedSDF datasets")
    ap.add_argument("--unseen", action="store_true", help="also the unseen-class split")
    ap.add_argument("--points", type=int, default=20000)
    ap.add_argument("--resolution", type=int, default=128)
    ap.add_argument("--max-per-class", type=int, default=8, help="test-fold shapes per class (first by id)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--refine", type=int, default=0, metavar="STEPS",
                    help="also the features fitted to each shape's exact SDF for STEPS Adam steps (spheres fixed)")
    ap.add_argument("--refine-from", choices=REFINE_FROM, default="sdf",
                    help="what --refine fits: the exact SDF, or the SDF implied by a 20,000-point oriented surface "
                         "point cloud of the shape (drawn apart from the metric's points)")
    ap.add_argument("--refine-lr", type=float, default=0.3, help="Adam's learning rate for --refine")
    ap.add_argument("--refine-sphere-lr", type=float, default=0.0,
                    help="--refine also moves the spheres (log-radii at this lr, centres at a tenth); 0: fixed")
    ap.add_argument("--refine-schedule", choices=REFINE_SCHEDULES, default="cosine",
                    help="--refine's learning rate: cosine decay to 0 (default) or constant (the first stops' runs: "
                         "--refine-lr 0.03 --refine-schedule constant)")
    ap.add_argument("--out", default="fidelity.json")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    model = load_autoencoder(args.checkpoint)
    report = {"checkpoint": str(args.checkpoint or "shipped"), "config": model.config.to_dict(),
              "points": args.points, "resolution": args.resolution, "keys": list(FIDELITY_KEYS), "refine": args.refine,
              "refine_from": args.refine_from if args.refine else None,
              "refine_lr": args.refine_lr if args.refine else None,
              "refine_schedule": args.refine_schedule if args.refine else None,
              "refine_sphere_lr": args.refine_sphere_lr if args.refine else None,
              "torch": torch.__version__, "machine": platform.machine(), "threads": args.threads, "splits": {}}
    if args.data:
        shapes = test_fold_shapes(args.data, args.max_per_class, args.exclude_train_of)
        report["test_fold_excludes_train_of"] = list(args.exclude_train_of)
        report["splits"]["test_fold"] = run(model, shapes, args, "test")
    if args.unseen:
        from skellab.data.atlases import unseen_shapes

        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            shapes = unseen_shapes()
        report["unseen_skipped"] = [str(w.message) for w in caught]
        report["splits"]["unseen"] = run(model, shapes, args, "unseen")
    Path(args.out).write_text(json.dumps(report, indent=1, default=float) + "\n")
    for name, res in report["splits"].items():
        print(f"\n{name} ({len(res['shapes'])} shapes, {res['seconds']:.0f} s)\n{table(res)}")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
