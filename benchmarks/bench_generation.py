"""Benchmark: end-to-end generation time of one organ on CPU, skellab vs the point-diffusion baseline.

skellab: sample a skeletal latent (EDM Heun, ``--steps`` steps, ``--guidance``: default the library's
``DEFAULT_GUIDANCE``; w = 1 needs one network call per stage, w ≠ 0, 1 two) + skeleton-guided SDF
decoding + marching cubes at ``--resolution``³ + skeleton graph, per organ, at batch 1 and batch
``--batch`` (the latents of a batch are sampled together; each is decoded on its own).
Baseline: sampling ``--points``-point clouds with the same sampler, steps and guidance, at the same
batch sizes. The baseline's network is the evaluation's (``PointDenoiserConfig.tiny``); its speed
does not depend on its weights, so an untrained copy is timed unless ``--baseline`` names a checkpoint.

Usage::

    python benchmarks/bench_generation.py --threads 1 --out benchmarks/results/generation.json

Prints and writes JSON: seconds per organ for each stage and batch size, and ``decode_vs_previous``: the
organs of the larger batch (at most ``--compare`` of them) decoded again with the current guided settings and
with the previous ones (``coarse=32, narrow=None``, capped at the box afterwards), interleaved: seconds, queries, identical triangles (same
faces, vertices within 1e-6).
"""

from __future__ import annotations

import argparse
import json
import platform
import time

import torch


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--organ", default="kidney")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--resolution", type=int, default=128)
    ap.add_argument("--batch", type=int, default=16, help="the larger batch size (the smaller is 1)")
    ap.add_argument("--points", type=int, default=2048, help="points per baseline cloud")
    ap.add_argument("--diffusion", default=None, help="diffusion checkpoint (default: shipped)")
    ap.add_argument("--autoencoder", default=None, help="autoencoder checkpoint (default: shipped)")
    ap.add_argument("--baseline", default=None, help="point-diffusion checkpoint (default: untrained tiny network)")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    ap.add_argument("--guidance", type=float, default=None,
                    help="classifier-free guidance weight (default: skellab.diffusion.DEFAULT_GUIDANCE)")
    ap.add_argument("--autoguidance", type=float, default=None,
                    help="weight of the checkpoint's guide network (default: the checkpoint's own; 1: off)")
    ap.add_argument("--precision", default="auto", choices=("auto", "fp32", "bf16"),
                    help="arithmetic of every network pass (default auto: bf16 where the CPU has it natively)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--compare", type=int, default=4, help="organs re-decoded with the previous guided settings")
    ap.add_argument("--out", default=None, help="write the JSON result here")
    args = ap.parse_args(argv)

    from skellab.baselines import PointDenoiser, PointDenoiserConfig, PointDiffusion, load_point_diffusion
    from skellab.diffusion import DEFAULT_GUIDANCE, make_scheduler
    from skellab.generation import generate_from_models, load_generation_models
    from skellab.meshing import cap_at_box, decode_grid_guided, extract_mesh
    from skellab.runtime import make_generator, resolve_precision

    if args.threads:
        torch.set_num_threads(args.threads)
    guidance = DEFAULT_GUIDANCE if args.guidance is None else args.guidance
    diff, ae = load_generation_models(args.diffusion, args.autoencoder)
    if args.baseline:
        base = load_point_diffusion(args.baseline)
    else:
        cfg = PointDenoiserConfig.tiny(num_classes=len(diff.classes))
        base = PointDiffusion(PointDenoiser(config=cfg).eval(), make_scheduler("edm"), list(diff.classes), args.points)
    base_class = (base.classes or diff.classes).index(args.organ)

    generate_from_models(diff, ae, args.organ, 1, steps=2, resolution=24, seed=args.seed,
                         precision=args.precision)  # warm-up
    result: dict = {"organ": args.organ, "steps": args.steps, "network_calls": 2 * args.steps - 1,
                    "guidance": guidance, "autoguidance": diff.guiding(args.autoguidance, args.organ)[1],
                    "guide_parameters": (diff.guide_info or {}).get("parameters"),
                    **({"feature_steps": diff.feature_steps or args.steps,
                        "feature_network_calls": 2 * (diff.feature_steps or args.steps) - 1} if diff.two_stage else {}),
                    "resolution": args.resolution, "points": args.points,
                    "precision": resolve_precision("cpu", args.precision), "torch_threads": torch.get_num_threads(), "platform": platform.platform(),
                    "processor": platform.processor(), "skellab": {}, "point_diffusion": {}}
    for batch in (1, args.batch):
        t0 = time.perf_counter()
        organs = generate_from_models(diff, ae, args.organ, batch, steps=args.steps, guidance=guidance, seed=args.seed,
                                      autoguidance=args.autoguidance, precision=args.precision,
                                      resolution=args.resolution, batch_size=batch)  # one sampling batch, as measured
        total = time.perf_counter() - t0
        stages = {k: sum(o.seconds[k] for o in organs) / batch for k in organs[0].seconds}
        result["skellab"][f"batch_{batch}"] = {
            "seconds_per_organ": total / batch, "seconds_total": total, "stages_per_organ": stages,
            "watertight": sum(o.watertight for o in organs), "query_fraction":
                sum(o.info["query_fraction"] for o in organs) / batch}
        t0 = time.perf_counter()
        base.sample(batch, class_index=base_class, guidance=guidance, steps=args.steps, num_points=args.points,
                    generator=make_generator(args.seed), precision=args.precision)
        total = time.perf_counter() - t0
        result["point_diffusion"][f"batch_{batch}"] = {"seconds_per_cloud": total / batch, "seconds_total": total}
        print(f"batch {batch}: skellab {result['skellab'][f'batch_{batch}']['seconds_per_organ']:.2f} s/organ "
              f"(sample {stages['sample']:.2f}, decode {stages['decode']:.2f}, mesh {stages['mesh']:.2f}, "
              f"skeleton {stages['skeleton']:.2f}); point diffusion {total / batch:.2f} s/cloud", flush=True)
    rows, tau = [], float(ae.config.truncation)
    for o in organs[: args.compare]:  # the same latents, decoded both ways, interleaved
        row = {}
        for name, kw in (("current", {"cap": tau}), ("previous", {"coarse": 32, "narrow": None})):
            grid = decode_grid_guided(ae, o.latent, args.resolution, precision=args.precision, **kw)  # current: capped as decode_organ does
            values = grid.values if name == "current" else cap_at_box(grid, tau)[0]  # previous: capped afterwards
            v, f = extract_mesh(values, grid.box, largest_component=True, min_piece_cells=1.0)
            row[name] = {"seconds": grid.seconds, "queries": grid.num_queries, "mesh": (v, f)}
        (va, fa), (vb, fb) = row["current"].pop("mesh"), row["previous"].pop("mesh")
        same_faces = bool(va.shape == vb.shape and fa.shape == fb.shape and (fa == fb).all())
        row["max_vertex_diff"] = float(abs(va - vb).max()) if same_faces else None
        row["identical_mesh"] = same_faces and row["max_vertex_diff"] <= 1e-6
        rows.append(row)
    if rows:
        result["decode_vs_previous"] = {
            "organs": rows,
            "seconds_current": sum(r["current"]["seconds"] for r in rows) / len(rows),
            "seconds_previous": sum(r["previous"]["seconds"] for r in rows) / len(rows),
            "query_ratio": sum(r["previous"]["queries"] for r in rows) / sum(r["current"]["queries"] for r in rows),
            "identical": sum(r["identical_mesh"] for r in rows)}
        d = result["decode_vs_previous"]
        print(f"decode, same latents: current {d['seconds_current']:.2f} s vs previous {d['seconds_previous']:.2f} s, "
              f"{d['query_ratio']:.2f}x fewer queries, {d['identical']}/{len(rows)} identical meshes", flush=True)
    text = json.dumps(result, indent=1)
    print(text)
    if args.out:
        from skellab.runtime import atomic_path

        with atomic_path(args.out) as tmp:
            tmp.write_text(text)
    return result


if __name__ == "__main__":
    main()
