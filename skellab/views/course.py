"""Figures and helpers of the tutorial course (notebooks 01–08 and the tutorials site).

Every figure function returns a matplotlib figure and never shows it; every helper is
harmless headless. Optional packages (matplotlib, k3d, IPython) are imported inside the
functions that need them.
"""

from __future__ import annotations

import html
import os
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from ..data.build import build_dataset
from ..data.medsdf import MedSDF, assign_folds
from ..errors import SkellabError
from .plots import _plt

__all__ = ["COURSE", "PAPER_URL", "pipeline_figure", "require_dataset", "held_out_status", "offline_view",
           "schedules_figure", "trajectory_figure", "solver_figure", "latent_statistics_figure",
           "generation_table_figure", "per_class_figure", "read_generation_table"]

PAPER_URL = "https://arxiv.org/abs/2603.07504"

# The course order: every notebook's "Next:" points at the one after it.
COURSE = (
    ("01_medsdf_data", "MedSDF: the data"),
    ("02_skeletonization", "Skeletonization"),
    ("03_skeletal_autoencoder", "Skeletal autoencoder"),
    ("04_organ_interpolation", "Organ interpolation"),
    ("05_diffusion_sampling", "Latent diffusion sampling"),
    ("06_sdf_decoding", "SDF decoding"),
    ("07_full_training", "Full training"),
    ("08_evaluation", "Evaluation"),
)

# (label, what it produces, notebook numbers) of each pipeline stage, in data-flow order.
_STAGES = (
    ("MedSDF shape", "mesh · surface points\n+ normals · SDF samples", "01"),
    ("Skeleton", "K medial spheres\n(centre c, radius r)", "02"),
    ("Skeletal latent", "K tokens [c, r, f]\n(encoder, 3 + 1 + F)", "03 · 04"),
    ("Latent diffusion", "EDM denoiser D(x; σ)\n+ classifier-free guidance", "05 · 07"),
    ("SDF decoder", "cross-attention on tokens\n+ sphere-union prior", "03 · 06"),
    ("Mesh", "marching cubes\n→ watertight organ", "06 · 08"),
)


# ------------------------------------------------------------------------------ the whole pipeline
def pipeline_figure(*, highlight: str | None = None) -> Any:
    """The whole method as one diagram: data → skeleton → tokens → diffusion → decoder → mesh.

    ``highlight`` (a notebook number such as ``"05"``) draws the stages that notebook teaches in colour.
    """
    plt = _plt()
    from matplotlib.patches import FancyArrowPatch, FancyBboxPatch

    fig, ax = plt.subplots(figsize=(12, 3.2))
    ax.set(xlim=(0, 12), ylim=(0, 3.2))
    ax.axis("off")
    width, gap = 1.75, 0.27
    for i, (label, body, nbs) in enumerate(_STAGES):
        x = 0.1 + i * (width + gap)
        lit = highlight is None or highlight in nbs.split(" · ")
        face = "#fbe3d2" if lit else "#f2f2f2"
        edge = "#c0622f" if lit else "#999999"
        ax.add_patch(FancyBboxPatch((x, 0.75), width, 1.85, boxstyle="round,pad=0.05", fc=face, ec=edge, lw=1.5))
        ax.text(x + width / 2, 2.3, label, ha="center", va="center", fontsize=10.5, weight="bold")
        ax.text(x + width / 2, 1.55, body, ha="center", va="center", fontsize=8.2)
        ax.text(x + width / 2, 0.98, f"notebook {nbs}", ha="center", va="center", fontsize=7.5, color="#555555")
        if i:
            ax.add_patch(FancyArrowPatch((x - gap + 0.02, 1.7), (x - 0.02, 1.7), arrowstyle="-|>",
                                         mutation_scale=14, color="#333333"))
    ax.text(6.0, 0.3, "training: shapes → skeletons → tokens (autoencoder) → diffusion on tokens;   "
            "generation: noise → tokens → SDF → mesh", ha="center", fontsize=8.5, color="#333333")
    ax.set_title("Skeletal latent diffusion (Zhang et al. 2026, arXiv 2603.07504)", fontsize=11)
    return fig


# ------------------------------------------------------------------------------ data checks
def require_dataset(dataset_dir: str | os.PathLike, *, build_tiny: bool = True) -> Any:
    """Open the MedSDF dataset at ``dataset_dir`` before any long work, or say in one line how to make it.

    A missing ``medsdf-tiny`` folder (or any folder whose name ends in ``tiny``) is built with the tiny
    preset (20 procedural shapes, seconds) when ``build_tiny``; any other missing folder raises
    :class:`SkellabError` naming the command that builds it.
    """
    path = Path(dataset_dir)
    if (path / "manifest.json").exists():
        return MedSDF.open(path)
    if build_tiny and path.name.endswith("tiny"):
        print(f"{path}: no dataset yet, building the tiny preset (20 procedural shapes, seconds)")
        build_dataset(path, preset_name="tiny", workers=1, progress=False)
        return MedSDF.open(path)
    preset = "mini" if "mini" in path.name else "tiny"
    raise SkellabError(f"no MedSDF dataset at {str(path)!r}: build it first with `skellab data build --preset "
                       f"{preset} --out {path}`" + (" (~10 min on 2 cores)" if preset == "mini" else "")
                       + ", or pass `-p dataset_dir medsdf-tiny` (built here in seconds)")


def held_out_status(shape: Any, source_shapes: Sequence[Any], trained_classes: Iterable[str]) -> dict[str, Any]:
    """Was ``shape`` seen when the shipped weights were trained on MedSDF-mini?

    ``source_shapes`` are all shapes of the packaged source ``shape`` comes from (every shape of its
    class in MedSDF-mini); their folds are assigned exactly as the dataset builder assigns them. Returns
    ``{"class", "class_trained", "fold", "held_out"}``: ``held_out`` is True for fold 5 (the test fold,
    never used for training).
    """
    records = [{"id": s.shape_id, "class": s.organ} for s in source_shapes]
    if shape.shape_id not in {r["id"] for r in records}:
        raise SkellabError(f"{shape.shape_id} is not one of the source shapes")
    assign_folds(records)
    fold = next(r["fold"] for r in records if r["id"] == shape.shape_id)
    return {"class": shape.organ, "class_trained": shape.organ in set(trained_classes), "fold": fold,
            "held_out": fold == 5}


# ------------------------------------------------------------------------------ offline 3D
class _OfflineView:
    """A k3d scene as a self-contained page inside an iframe: works offline, from file://, with no kernel."""

    def __init__(self, snapshot: str, height: int) -> None:
        self.snapshot, self.height = snapshot, height

    def _repr_html_(self) -> str:
        return (f'<iframe class="skellab-3d" title="3D view (k3d snapshot)" style="width:100%;height:'
                f'{self.height}px;border:1px solid #ddd" srcdoc="{html.escape(self.snapshot, quote=True)}"></iframe>')


def offline_view(plot: Any, *, height: int | None = None) -> Any:
    """The k3d ``plot`` as an offline snapshot (k3d's JavaScript inlined, no CDN) to display in a notebook.

    Unlike the live widget it stays in a saved notebook and on the tutorials site; it is a copy of the
    scene at the time of the call.
    """
    if getattr(plot, "snapshot_type", "full") != "full":
        plot.snapshot_type = "full"
    return _OfflineView(plot.get_snapshot(), int(height or getattr(plot, "height", 400) or 400))


# ------------------------------------------------------------------------------ notebook 05
def schedules_figure(edm: Any, ddpm: Any, ddim: Any, steps: int, generator: Any, *, num_draws: int = 20000) -> Any:
    """σ along the sampling path of three schedulers, and the σ each one trains on.

    ``edm`` and ``ddim`` must have had ``set_timesteps(steps)``; ``ddpm`` is the 1000-step DDPM scheduler
    whose ᾱ_t define σ_t = √((1 − ᾱ_t)/ᾱ_t).
    """
    plt = _plt()
    ab = ddpm.alphas_cumprod
    sigma_ddpm = ((1 - ab) / ab).sqrt()  # (1000,)
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8), constrained_layout=True)
    ax = axes[0]
    ax.plot(np.linspace(0, 1, len(sigma_ddpm)), sigma_ddpm.flip(0).numpy(), label="DDPM (all 1000 steps)")
    ax.plot(np.linspace(0, 1, steps), sigma_ddpm[ddim.timesteps].numpy(), "o", ms=4, label=f"DDIM ({steps} steps)")
    ax.plot(np.linspace(0, 1, steps), edm.sigmas[:-1].numpy(), "s", ms=4, label=f"EDM ({steps} steps, ρ=7)")
    ax.set(yscale="log", xlabel="sampling progress", ylabel="noise level σ", title="σ along the sampling path")
    ax.legend()
    ax = axes[1]
    ax.hist(np.log10(edm.sample_training_timesteps(num_draws, generator).numpy()), bins=60, alpha=0.6,
            density=True, label="EDM")
    t = ddpm.sample_training_timesteps(num_draws, generator)
    ax.hist(np.log10(sigma_ddpm[t].numpy()), bins=60, alpha=0.6, density=True, label="DDPM (t uniform)")
    ax.set(xlabel="log10 σ", ylabel="density", title="noise levels seen in training")
    ax.legend()
    return fig


def trajectory_figure(trajectory: Sequence[Any], titles: Sequence[str], *, panels: int = 6, title: str = "") -> Any:
    """x̂₀ estimates of one sample along the sampler: sphere centres projected on x–z, dot size ∝ radius.

    ``trajectory[i]`` is a (1, K, D) tensor of tokens ``[x, y, z, r, ...]`` at network call i.
    """
    plt = _plt()
    picks = np.unique(np.linspace(0, len(trajectory) - 1, panels).round().astype(int))
    fig, axes = plt.subplots(1, len(picks), figsize=(2.6 * len(picks), 2.8), sharex=True, sharey=True,
                             constrained_layout=True)
    for ax, i in zip(np.atleast_1d(axes), picks):
        c = trajectory[i][0]
        ax.scatter(c[:, 0], c[:, 2], s=4 + 60 * c[:, 3].clamp(min=0), c=c[:, 1], cmap="viridis")
        ax.set(title=titles[i], aspect="equal", xlim=(-1.2, 1.2), ylim=(-1.2, 1.2))
    if title:
        fig.suptitle(title)
    return fig


def solver_figure(results: Mapping[str, Sequence[tuple[int, float]]], labels: Mapping[str, str] | None = None) -> Any:
    """Error vs network calls of each sampler: ``results[name] = [(calls, rms_error), ...]`` (log–log)."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5.5, 3.8), constrained_layout=True)
    for name, points in results.items():
        calls, err = zip(*points)
        ax.loglog(calls, err, "o-", label=(labels or {}).get(name, name))
    ax.set(xlabel="network calls", ylabel="RMS error vs the reference solution", title="same compute, different accuracy")
    ax.legend()
    return fig


# ------------------------------------------------------------------------------ notebook 07
def latent_statistics_figure(train: Any, val: Any, normalizer: Any) -> Any:
    """Token radii (train/val), the normalizer's std per channel, and the validation latents standardised.

    ``train``/``val`` are Latents (tokens (S, K, D)); ``val`` may be None. ``normalizer`` has ``std`` (D,)
    and ``normalize(tokens)``.
    """
    plt = _plt()
    D = train.tokens.shape[-1]
    channels = ["x", "y", "z", "r"] + [f"f{i}" for i in range(D - 4)]
    fig, axes = plt.subplots(1, 3, figsize=(14, 3.2), constrained_layout=True)
    axes[0].hist(train.radii.flatten().numpy(), bins=40, density=True, alpha=0.7, label="train")
    if val is not None:
        axes[0].hist(val.radii.flatten().numpy(), bins=40, density=True, alpha=0.5, label="val")
    axes[0].set(xlabel="token radius r (normalised units)", ylabel="density", title="skeletal sphere radii")
    axes[0].legend()
    axes[1].bar(range(D), normalizer.std.numpy(), color=["C0"] * 3 + ["C1"] + ["C2"] * (D - 4))
    axes[1].set(xticks=range(D), yscale="log", ylabel="training std", title="normalizer: std per channel")
    axes[1].set_xticklabels(channels, fontsize=7)
    if val is not None:
        z = normalizer.normalize(val.tokens.float()).reshape(-1, D)
        axes[2].errorbar(range(D), z.mean(0).numpy(), yerr=z.std(0).numpy(), fmt="o", capsize=3)
        axes[2].axhline(0, color="k", lw=0.8)
        axes[2].axhspan(-1, 1, color="0.9", zorder=0)
    axes[2].set(xticks=range(D), ylabel="mean ± std", title="validation latents, standardised")
    axes[2].set_xticklabels(channels, fontsize=7)
    return fig


# ------------------------------------------------------------------------------ notebook 08
_LABELS = {"mmd_cd_x1e3": "MMD-CD ×10³ ↓", "cov_cd": "COV-CD ↑", "1nna_cd": "1-NNA-CD (→ 0.5)",
           "mmd_emd_x1e2": "MMD-EMD ×10² ↓", "cov_emd": "COV-EMD ↑", "1nna_emd": "1-NNA-EMD (→ 0.5)",
           "betti_error": "Betti error ↓"}


def _available(table: Mapping[str, Any]) -> list[str]:
    return [k for k, m in table["methods"].items() if m.get("available", True) and "macro" in m]


def generation_table_figure(table: Mapping[str, Any], *, title: str = "") -> Any:
    """One bar panel per metric of a generation table (:func:`skellab.evaluation.evaluate_generation`)."""
    plt = _plt()
    names = _available(table)
    keys = [k for k in _LABELS if any(k in table["methods"][m]["macro"] for m in names)]
    fig, axes = plt.subplots(1, len(keys), figsize=(2.3 * len(keys), 3), constrained_layout=True)
    for ax, key in zip(np.atleast_1d(axes), keys):
        vals = [table["methods"][m]["macro"].get(key) for m in names]
        ax.bar(range(len(names)), [np.nan if v is None else v for v in vals], color=[f"C{i}" for i in range(len(names))])
        ax.set_xticks(range(len(names)), [m.replace("_", "\n") for m in names], fontsize=7)
        ax.set_title(_LABELS[key], fontsize=9)
        if key.startswith("1nna"):
            ax.axhline(0.5, color="k", lw=0.8, ls="--")
    if title:
        fig.suptitle(title)
    return fig


def per_class_figure(table: Mapping[str, Any], key: str = "1nna_cd", *, title: str = "") -> Any:
    """A per-class bar chart of one metric for every available method of a generation table."""
    plt = _plt()
    names = _available(table)
    cls = sorted({c for m in names for c in table["methods"][m].get("per_class", {})})
    x = np.arange(len(cls))
    width = 0.8 / max(1, len(names))
    fig, ax = plt.subplots(figsize=(max(5, 0.5 * len(cls)), 3), constrained_layout=True)
    for i, m in enumerate(names):
        per = table["methods"][m].get("per_class", {})
        vals = [per[c].get(key) if c in per else None for c in cls]
        ax.bar(x + (i - (len(names) - 1) / 2) * width, [np.nan if v is None else v for v in vals], width, label=m)
    if key.startswith("1nna"):
        ax.axhline(0.5, color="k", lw=0.8, ls="--")
    ax.set_xticks(x, cls, rotation=60, ha="right", fontsize=8)
    ax.set_ylabel(_LABELS.get(key, key))
    ax.legend(fontsize=8)
    ax.set_title(title or "per class")
    return fig


def read_generation_table(table: Mapping[str, Any]) -> dict[str, Any]:
    """Who wins each metric of a generation table, read the way notebook 08 teaches.

    Lower is better for MMD and the Betti error, higher for COV, and 1-NNA is best at 0.5 (its distance
    to 0.5 is compared). Returns ``{"winners": {metric: method}, "sentences": [str, ...]}``; methods with
    no value for a metric (a point cloud has no Betti numbers) are left out of that metric.
    """
    names = _available(table)
    winners, sentences = {}, []
    for key, label in _LABELS.items():
        vals = {m: table["methods"][m]["macro"].get(key) for m in names}
        vals = {m: v for m, v in vals.items() if v is not None}
        if not vals:
            continue
        if key.startswith("1nna"):
            score = {m: abs(v - 0.5) for m, v in vals.items()}
        elif key.startswith("cov"):
            score = {m: -v for m, v in vals.items()}
        else:
            score = dict(vals)
        best = min(score, key=score.get)
        winners[key] = best
        others = ", ".join(f"{m} {v:.3g}" for m, v in vals.items() if m != best)
        sentences.append(f"{label.split(' ')[0]}: {best} wins with {vals[best]:.3g}" + (f" (vs {others})" if others else
                                                                                       " (the only method with a value)"))
    return {"winners": winners, "sentences": sentences}
