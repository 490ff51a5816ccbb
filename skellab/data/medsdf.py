"""The MedSDF on-disk format (version 1): a folder any tool can read.

::

    DIR/manifest.json          format, version, name, sign convention, sample config, classes, shapes
    DIR/meshes/<id>.ply        watertight mesh in the normalised frame
    DIR/samples/<id>.npz       surface_points, surface_normals, sdf_points, sdf_values,
                               [sdf_grid], [skeleton_centers, skeleton_radii, skeleton_edges]

Each shape record in the manifest holds ``id``, ``class``, ``source``, ``license``,
``fold`` (1–5, as the paper: folds 1–4 train/val, fold 5 test), ``seed``,
``normalization`` (original units → normalised frame), mesh statistics and, for every
file, its relative path and sha256. Files are written atomically (temp + rename)
and the manifest last, so a folder without ``manifest.json`` is an unfinished build.

A change to a dataset is a transaction: the writer holds ``DIR/.lock`` (``flock``; concurrent
imports take turns), writes every new file without replacing any file the current manifest
names (a rebuilt shape whose ``<id>.ply`` already holds other bytes goes to
``<id>.<sha256[:12]>.ply``; readers always follow the manifest's paths), then swaps in the new
manifest atomically, then deletes the files no manifest names. A writer killed at any moment
leaves the previous dataset intact; its left-overs are removed by the next writer or by
``skellab data check`` (:func:`find_orphans`). Readers need no lock.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import trimesh

from ..errors import SkellabError
from ..runtime import atomic_path, file_lock, is_temp_name, unlink_existing
from .shape import GroundTruthSkeleton, Normalization, Shape

FORMAT = "medsdf"
FORMAT_VERSION = 1
SIGN_CONVENTION = "negative inside, positive outside"
NUM_FOLDS = 5
TEST_FOLD = 5
MANIFEST = "manifest.json"
SHARD_GLOB = "manifest.shard-*-of-*.json"
LOCK = ".lock"
DATA_FOLDERS = ("meshes", "samples")


def sha256_file(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _write_bytes(path: Path, data: bytes) -> str:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return hashlib.sha256(data).hexdigest()


def _write_new_file(root: Path, rel: str, data: bytes) -> dict[str, str]:
    """Write ``data`` under ``root/rel`` without touching a different file that is already there.

    A rebuild must not change the bytes the current manifest points at (an interrupted
    ``--overwrite`` would leave old manifest + new files): if ``rel`` holds other content, the
    file goes to ``<stem>.<sha256[:12]><suffix>`` instead. Returns ``{"path", "sha256"}``.
    """
    digest = hashlib.sha256(data).hexdigest()
    path = root / rel
    if path.exists() and not (path.stat().st_size == len(data) and sha256_file(path) == digest):
        rel = str(Path(rel).with_name(f"{Path(rel).stem}.{digest[:12]}{Path(rel).suffix}"))
        path = root / rel
        if path.exists() and sha256_file(path) == digest:
            return {"path": rel, "sha256": digest}
    _write_bytes(path, data)
    return {"path": rel, "sha256": digest}


def write_shape_files(root: str | os.PathLike, shape: Shape, samples: dict[str, np.ndarray]) -> dict[str, Any]:
    """Write one shape's mesh and arrays under ``root``; return its manifest record (no fold yet).

    Files that differ from what is already at ``meshes/<id>.ply`` / ``samples/<id>.npz`` get a
    content-hashed name, so files of the dataset's current manifest are never replaced.
    """
    root = Path(root)
    arrays = dict(samples)
    if shape.skeleton is not None:
        arrays["skeleton_centers"] = shape.skeleton.centers.astype(np.float32)
        arrays["skeleton_radii"] = shape.skeleton.radii.astype(np.float32)
        arrays["skeleton_edges"] = shape.skeleton.edges.astype(np.int64)
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    mesh_rel, samples_rel = f"meshes/{shape.shape_id}.ply", f"samples/{shape.shape_id}.npz"
    mesh = shape.to_trimesh()
    mesh_bytes = trimesh.exchange.ply.export_ply(mesh, encoding="binary")
    record = shape_record(shape, mesh)
    record["files"] = {
        "mesh": _write_new_file(root, mesh_rel, mesh_bytes),
        "samples": _write_new_file(root, samples_rel, buf.getvalue()),
    }
    return record


def shape_record(shape: Shape, mesh: trimesh.Trimesh) -> dict[str, Any]:
    """The manifest record of ``shape`` (``mesh``: its triangle mesh), without ``files`` and fold."""
    return {
        "id": shape.shape_id,
        "class": shape.organ,
        "source": shape.source,
        "license": shape.license,
        "seed": shape.seed,
        "normalization": shape.normalization.to_dict(),
        "num_vertices": int(len(shape.vertices)),
        "num_faces": int(len(shape.faces)),
        "euler_number": int(mesh.euler_number),
        "has_skeleton": shape.skeleton is not None,
        "meta": shape.meta,
    }


def _fold_key(shape_id: str) -> str:
    return hashlib.sha256(shape_id.encode()).hexdigest()


def assign_folds(records: list[dict[str, Any]]) -> None:
    """Stratified, deterministic 5-fold split: within each class, shapes ranked by
    sha256(id) get folds 1, 2, 3, 4, 5, 1, … (in place; records that already have a fold keep it)."""
    by_class: dict[str, list[dict[str, Any]]] = {}
    for rec in records:
        if not rec.get("fold"):
            by_class.setdefault(rec["class"], []).append(rec)
    for recs in by_class.values():
        for rank, rec in enumerate(sorted(recs, key=lambda r: _fold_key(r["id"]))):
            rec["fold"] = rank % NUM_FOLDS + 1


def write_manifest(
    root: str | os.PathLike,
    records: Iterable[dict[str, Any]],
    *,
    name: str,
    sample_config: dict[str, Any],
    extra: dict[str, Any] | None = None,
    filename: str = MANIFEST,
) -> Path:
    """Atomically write the manifest for ``records`` (sorted by id)."""
    records = sorted(records, key=lambda r: r["id"])
    ids = [r["id"] for r in records]
    dup = [k for k, c in Counter(ids).items() if c > 1]
    if dup:
        raise SkellabError(f"duplicate shape ids in dataset: {dup[:5]}")
    manifest = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "name": name,
        "sign_convention": SIGN_CONVENTION,
        "frame": "per-shape normalised: bbox centre at 0, max |coordinate| = 1",
        "folds": {"count": NUM_FOLDS, "test": TEST_FOLD, "train_val": "folds 1-4, 90% train / 10% val"},
        "sample_config": sample_config,
        "classes": sorted({r["class"] for r in records}),
        "shapes": records,
        **(extra or {}),
    }
    path = Path(root) / filename
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(manifest, indent=1))
    return path


def read_manifest(root: str | os.PathLike, filename: str = MANIFEST) -> dict[str, Any]:
    """Read and check a manifest; one-line SkellabError for anything malformed."""
    root = Path(root)
    if not root.is_dir():
        raise SkellabError(f"dataset folder not found: {root}")
    path = root / filename
    if not path.is_file():
        raise SkellabError(f"{root}: no {filename} (not a MedSDF dataset, or an unfinished build)")
    try:
        manifest = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as exc:
        raise SkellabError(f"{path}: corrupt manifest ({exc.__class__.__name__}: {exc})") from exc
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise SkellabError(f"{path}: not a MedSDF manifest")
    if manifest.get("format_version") != FORMAT_VERSION:
        raise SkellabError(
            f"{path}: MedSDF format version {manifest.get('format_version')} is not supported (expected {FORMAT_VERSION})"
        )
    shapes = manifest.get("shapes")
    if not isinstance(shapes, list):
        raise SkellabError(f"{path}: manifest has no shape list")
    if not isinstance(manifest.get("sample_config"), dict):
        raise SkellabError(f"{path}: manifest field 'sample_config' is missing or not a mapping")
    ids: set[str] = set()
    for i, rec in enumerate(shapes):
        check_record(rec, where=f"{path}: shape #{i}", fold_required=filename == MANIFEST)
        if rec["id"] in ids:
            raise SkellabError(f"{path}: duplicate shape id {rec['id']!r} (shape #{i})")
        ids.add(rec["id"])
    return manifest


_ID_RE = re.compile(r"[A-Za-z0-9_\-][A-Za-z0-9_.\-]*")
_SHA_RE = re.compile(r"[0-9a-f]{64}")


def _safe_rel_path(rel: Any) -> bool:
    """A relative path that stays inside the dataset folder (no absolute paths, no ``..``)."""
    if not isinstance(rel, str) or not rel or "\\" in rel or "\x00" in rel:
        return False
    parts = Path(rel).parts
    return not Path(rel).is_absolute() and ".." not in parts and len(parts) >= 1


def check_record(rec: Any, *, where: str = "shape record", fold_required: bool = True) -> None:
    """Check one manifest shape record; one-line SkellabError naming the record and the field.

    Required: ``id`` (letters, digits, ``_ - .``), ``class``, ``source``, ``license`` (strings),
    ``fold`` (int 1..5; optional in shard manifests), ``files.mesh`` and ``files.samples`` each
    with a relative ``path`` inside the dataset and a 64-hex ``sha256``; optional
    ``normalization`` {center: 3 numbers, scale > 0}, ``has_skeleton`` bool, ``meta`` mapping.
    """
    if not isinstance(rec, dict):
        raise SkellabError(f"{where}: a shape record must be a mapping, got {type(rec).__name__}")
    sid = rec.get("id")
    if not isinstance(sid, str) or not _ID_RE.fullmatch(sid):
        raise SkellabError(f"{where}: field 'id' must be a name of letters, digits, '_', '-' or '.', got {sid!r}")
    where = f"{where} ({sid})"
    for key in ("class", "source", "license"):
        if key not in rec:
            raise SkellabError(f"{where}: field {key!r} is missing")
        if not isinstance(rec[key], str) or not rec[key]:
            raise SkellabError(f"{where}: field {key!r} must be a non-empty string, got {rec[key]!r}")
    if fold_required or rec.get("fold") is not None:
        fold = rec.get("fold")
        if isinstance(fold, bool) or not isinstance(fold, int) or not 1 <= fold <= NUM_FOLDS:
            raise SkellabError(f"{where}: field 'fold' must be an integer 1..{NUM_FOLDS}, got {fold!r}")
    files = rec.get("files")
    if not isinstance(files, dict):
        raise SkellabError(f"{where}: field 'files' is missing or not a mapping")
    for kind in ("mesh", "samples"):
        entry = files.get(kind)
        if not isinstance(entry, dict):
            raise SkellabError(f"{where}: field 'files.{kind}' is missing or not a mapping")
        if not _safe_rel_path(entry.get("path")):
            raise SkellabError(f"{where}: field 'files.{kind}.path' must be a relative path inside the dataset, "
                               f"got {entry.get('path')!r}")
        if not isinstance(entry.get("sha256"), str) or not _SHA_RE.fullmatch(entry["sha256"]):
            raise SkellabError(f"{where}: field 'files.{kind}.sha256' is missing or not 64 hex digits")
    for kind, entry in files.items():
        if kind not in ("mesh", "samples") and not (isinstance(entry, dict) and _safe_rel_path(entry.get("path"))
                                                     and isinstance(entry.get("sha256"), str)):
            raise SkellabError(f"{where}: field 'files.{kind}' must hold a relative 'path' and a 'sha256'")
    if "normalization" in rec:
        norm = rec["normalization"]
        ok = isinstance(norm, dict) and isinstance(norm.get("center"), list) and len(norm["center"]) == 3 and all(
            isinstance(c, (int, float)) and not isinstance(c, bool) and np.isfinite(c) for c in norm["center"]
        ) and isinstance(norm.get("scale"), (int, float)) and not isinstance(norm.get("scale"), bool) and (
            np.isfinite(norm["scale"]) and norm["scale"] > 0)
        if not ok:
            raise SkellabError(f"{where}: field 'normalization' must be {{center: 3 numbers, scale > 0}}")
    if "has_skeleton" in rec and not isinstance(rec["has_skeleton"], bool):
        raise SkellabError(f"{where}: field 'has_skeleton' must be true or false, got {rec['has_skeleton']!r}")
    if "meta" in rec and not isinstance(rec["meta"], dict):
        raise SkellabError(f"{where}: field 'meta' must be a mapping")


# what every samples/<id>.npz holds: name → (trailing shape, group); group ties first dims together
SAMPLE_ARRAYS: dict[str, tuple[tuple[int, ...], str]] = {
    "surface_points": ((3,), "surface"),
    "surface_normals": ((3,), "surface"),
    "sdf_points": ((3,), "sdf"),
    "sdf_values": ((), "sdf"),
}
SKELETON_ARRAYS: dict[str, tuple[tuple[int, ...], str]] = {
    "skeleton_centers": ((3,), "skeleton"),
    "skeleton_radii": ((), "skeleton"),
    "skeleton_edges": ((2,), "edges"),
}


def check_sample_arrays(arrays: dict[str, np.ndarray], *, where: str, has_skeleton: bool = False) -> None:
    """Check the arrays of a sample archive: keys, dtypes (real floats; int edges), shapes, finiteness.

    surface_points, surface_normals (N, 3) · sdf_points (M, 3), sdf_values (M,) · with a skeleton:
    skeleton_centers (S, 3), skeleton_radii (S,), skeleton_edges (E, 2) int in 0..S-1 · optional
    sdf_grid (R, R, R). One-line SkellabError naming the array.
    """
    spec = dict(SAMPLE_ARRAYS, **(SKELETON_ARRAYS if has_skeleton else {}))
    sizes: dict[str, int] = {}
    for key, (tail, group) in spec.items():
        if key not in arrays:
            raise SkellabError(f"{where}: sample archive lacks the array {key!r}")
        a = arrays[key]
        want_int = key == "skeleton_edges"
        kind_ok = a.dtype.kind in "iu" if want_int else a.dtype.kind == "f"
        if not kind_ok:
            raise SkellabError(f"{where}: array {key!r} has dtype {a.dtype}, expected {'integers' if want_int else 'real floats'}")
        if a.ndim != 1 + len(tail) or tuple(a.shape[1:]) != tail:
            shape = "(n, " + ", ".join(map(str, tail)) + ")" if tail else "(n,)"
            raise SkellabError(f"{where}: array {key!r} has shape {a.shape}, expected {shape}")
        if group in sizes and sizes[group] != len(a):
            raise SkellabError(f"{where}: array {key!r} has {len(a)} rows, its companion arrays {sizes[group]}")
        sizes[group] = len(a)
        if not want_int and not np.isfinite(a).all():
            raise SkellabError(f"{where}: array {key!r} contains NaN or infinite values")
    if sizes.get("surface", 0) == 0 or sizes.get("sdf", 0) == 0:
        raise SkellabError(f"{where}: sample archive holds no surface points or no SDF samples")
    if has_skeleton:
        e = arrays["skeleton_edges"]
        if e.size and (e.min() < 0 or e.max() >= sizes["skeleton"]):
            raise SkellabError(f"{where}: array 'skeleton_edges' indexes outside its {sizes['skeleton']} spheres")
    if "sdf_grid" in arrays:
        g = arrays["sdf_grid"]
        if g.dtype.kind != "f" or g.ndim != 3 or len(set(g.shape)) != 1:
            raise SkellabError(f"{where}: array 'sdf_grid' has shape {g.shape} / dtype {g.dtype}, expected (R, R, R) floats")


def dataset_lock(root: str | os.PathLike, *, shared: bool = False, timeout: float | None = None):
    """The writer lock of a dataset folder (``DIR/.lock``; see :func:`skellab.runtime.file_lock`).

    Whoever changes ``manifest.json`` holds it exclusively for the whole change; shard builds
    hold it shared (they write only their own shard manifest).
    """
    return file_lock(Path(root) / LOCK, shared=shared, timeout=timeout, what=str(root))


def referenced_files(root: str | os.PathLike) -> set[str]:
    """Relative paths named by ``manifest.json`` and every shard manifest in ``root`` (readable ones)."""
    root = Path(root)
    names = [MANIFEST] if (root / MANIFEST).is_file() else []
    names += sorted(p.name for p in root.glob(SHARD_GLOB))
    out: set[str] = set()
    for name in names:
        for rec in read_manifest(root, name)["shapes"]:
            out.update(str(Path(e["path"])) for e in rec["files"].values())
    return out


def find_orphans(root: str | os.PathLike) -> list[Path]:
    """Files under ``meshes/`` and ``samples/`` that no manifest names, and left-over temp files.

    They come from interrupted builds and imports (files are written before the manifest). Only
    meaningful under the exclusive :func:`dataset_lock`: a running writer's new files look the same.
    """
    root = Path(root)
    keep = referenced_files(root)
    orphans = []
    for sub in DATA_FOLDERS:
        folder = root / sub
        if folder.is_dir():
            orphans += [p for p in sorted(folder.iterdir())
                        if (p.is_file() or p.is_symlink()) and str(p.relative_to(root)) not in keep]
    orphans += [p for p in sorted(root.glob(".*.tmp*")) if p.is_file() and is_temp_name(p.name)]
    return orphans


def remove_orphans(root: str | os.PathLike, *, locked: bool = False) -> list[Path]:
    """Delete :func:`find_orphans` (taking the exclusive dataset lock unless ``locked``); return them."""
    if not locked:
        with dataset_lock(root):
            return remove_orphans(root, locked=True)
    return unlink_existing(find_orphans(root))


@dataclass
class MedSDF:
    """Read access to a MedSDF folder, verifying sha256 of every file it opens.

    >>> ds = MedSDF("medsdf-mini")
    >>> ds.classes, len(ds), ds.ids(split="test")[:3]
    """

    root: Path
    manifest: dict[str, Any]
    verify: bool = True

    @classmethod
    def open(cls, root: str | os.PathLike, *, verify: bool = True) -> "MedSDF":
        root = Path(root)
        return cls(root=root, manifest=read_manifest(root), verify=verify)

    def __post_init__(self) -> None:
        self._by_id = {r["id"]: r for r in self.manifest["shapes"]}
        self._verified: set[str] = set()

    @property
    def classes(self) -> list[str]:
        return list(self.manifest["classes"])

    @property
    def records(self) -> list[dict[str, Any]]:
        return list(self.manifest["shapes"])

    def __len__(self) -> int:
        return len(self._by_id)

    def record(self, shape_id: str) -> dict[str, Any]:
        try:
            return self._by_id[shape_id]
        except KeyError as exc:
            raise SkellabError(f"shape {shape_id!r} is not in {self.root}") from exc

    def ids(self, *, split: str = "all", organ: str | None = None) -> list[str]:
        """Shape ids of a split: ``all``, ``train`` / ``val`` (folds 1–4, 90/10 by id hash), ``test`` (fold 5)."""
        if split not in ("all", "train", "val", "test"):
            raise SkellabError(f"unknown split {split!r}: use all, train, val or test")
        if organ is not None and organ not in self.classes:
            raise SkellabError(f"unknown organ class {organ!r}; this dataset has: {', '.join(self.classes)}")
        out = []
        for rec in self.records:
            if organ is not None and rec["class"] != organ:
                continue
            is_test = rec["fold"] == TEST_FOLD
            is_val = not is_test and int(_fold_key(rec["id"])[:8], 16) % 10 == 0
            if split == "all" or (split == "test" and is_test) or (split == "val" and is_val) or (
                split == "train" and not is_test and not is_val
            ):
                out.append(rec["id"])
        return out

    def _path(self, shape_id: str, kind: str) -> Path:
        entry = self.record(shape_id)["files"][kind]
        path = self.root / entry["path"]
        if not path.is_file():
            raise SkellabError(f"{path}: file listed in the manifest is missing")
        key = f"{shape_id}/{kind}"
        if self.verify and key not in self._verified:
            if sha256_file(path) != entry["sha256"]:
                raise SkellabError(f"{path}: checksum mismatch (file is corrupt or was modified)")
            self._verified.add(key)
        return path

    def samples(self, shape_id: str) -> dict[str, np.ndarray]:
        """The arrays of ``samples/<id>.npz`` (see :func:`skellab.data.sampling.sample_sdf`)."""
        path = self._path(shape_id, "samples")
        try:
            with np.load(path, allow_pickle=False) as z:
                arrays = {k: z[k] for k in z.files}
        except (OSError, ValueError, EOFError, KeyError) as exc:
            raise SkellabError(f"{path}: unreadable sample archive ({exc.__class__.__name__}: {exc})") from exc
        except Exception as exc:  # noqa: BLE001  (zipfile.BadZipFile and friends: all mean "unreadable")
            raise SkellabError(f"{path}: unreadable sample archive ({exc.__class__.__name__})") from exc
        check_sample_arrays(arrays, where=str(path), has_skeleton=bool(self.record(shape_id).get("has_skeleton")))
        return arrays

    def shape(self, shape_id: str) -> Shape:
        """The stored mesh as a :class:`Shape` (normalised frame, original normalisation kept)."""
        rec = self.record(shape_id)
        path = self._path(shape_id, "mesh")
        try:
            mesh = trimesh.load(path, force="mesh", process=False)
        except Exception as exc:  # noqa: BLE001  (trimesh raises many types for corrupt files)
            raise SkellabError(f"{path}: unreadable mesh ({exc.__class__.__name__})") from exc
        if not isinstance(mesh, trimesh.Trimesh) or len(mesh.faces) == 0:
            raise SkellabError(f"{path}: stored mesh has no faces")
        skeleton = None
        if rec.get("has_skeleton"):
            s = self.samples(shape_id)
            skeleton = GroundTruthSkeleton(
                s["skeleton_centers"].astype(np.float64), s["skeleton_radii"].astype(np.float64), s["skeleton_edges"]
            )
        return Shape(
            vertices=np.asarray(mesh.vertices, dtype=np.float64),
            faces=np.asarray(mesh.faces, dtype=np.int64),
            shape_id=rec["id"],
            organ=rec["class"],
            source=rec["source"],
            license=rec["license"],
            normalization=Normalization.from_dict(rec["normalization"]),
            seed=rec.get("seed"),
            skeleton=skeleton,
            meta=rec.get("meta", {}),
        )

    def verify_all(self) -> int:
        """Check every file's sha256 and every sample archive's arrays; return the number of files checked."""
        n = 0
        for rec in self.records:
            for kind in rec["files"]:
                self._path(rec["id"], kind)
                n += 1
            self.samples(rec["id"])
        return n

    def orphans(self) -> list[Path]:
        """Files in the folder that no manifest names (see :func:`find_orphans`)."""
        return find_orphans(self.root)

    def summary(self) -> dict[str, Any]:
        recs = self.records
        return {
            "name": self.manifest.get("name"),
            "root": str(self.root),
            "format_version": self.manifest["format_version"],
            "sign_convention": self.manifest.get("sign_convention"),
            "shapes": len(recs),
            "classes": dict(sorted(Counter(r["class"] for r in recs).items())),
            "sources": dict(sorted(Counter(r["source"].split(":")[0] for r in recs).items())),
            "folds": dict(sorted(Counter(r["fold"] for r in recs).items())),
            "licenses": dict(sorted(Counter(r["license"] for r in recs).items())),
            "orphaned_files": self._orphan_count(),
        }

    def _orphan_count(self) -> int | None:
        try:
            return len(self.orphans())
        except (SkellabError, OSError):  # an unreadable shard manifest: nothing can be called an orphan
            return None


def ids_unseen_by(root: str | os.PathLike, split: str, others: Iterable[str | os.PathLike]) -> list[str]:
    """``split``'s shape ids of the dataset at ``root`` minus every shape in the train or val split of a dataset in
    ``others``: the shapes none of the models trained on those datasets saw (e.g. MedSDF-fidelity re-folds
    MedSDF-mini's procedural shapes, so 28 of mini's 88 test shapes are in its train or val split)."""
    seen = {sid for other in others for part in ("train", "val") for sid in MedSDF.open(other).ids(split=part)}
    return [sid for sid in MedSDF.open(root).ids(split=split) if sid not in seen]
