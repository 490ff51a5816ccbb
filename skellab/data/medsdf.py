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
"""

from __future__ import annotations

import hashlib
import io
import json
import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import trimesh

from ..errors import SkellabError
from ..runtime import atomic_path
from .shape import GroundTruthSkeleton, Normalization, Shape

FORMAT = "medsdf"
FORMAT_VERSION = 1
SIGN_CONVENTION = "negative inside, positive outside"
NUM_FOLDS = 5
TEST_FOLD = 5
MANIFEST = "manifest.json"


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


def write_shape_files(root: str | os.PathLike, shape: Shape, samples: dict[str, np.ndarray]) -> dict[str, Any]:
    """Write one shape's mesh and arrays under ``root``; return its manifest record (no fold yet)."""
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
        "files": {
            "mesh": {"path": mesh_rel, "sha256": _write_bytes(root / mesh_rel, mesh_bytes)},
            "samples": {"path": samples_rel, "sha256": _write_bytes(root / samples_rel, buf.getvalue())},
        },
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
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
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
    for rec in shapes:
        try:
            rec["id"], rec["class"], rec["files"]["mesh"]["sha256"], rec["files"]["samples"]["path"]
            if filename == MANIFEST:
                rec["fold"]
        except (KeyError, TypeError) as exc:
            raise SkellabError(f"{path}: malformed shape record {str(rec)[:80]}") from exc
    return manifest


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
                return {k: z[k] for k in z.files}
        except (OSError, ValueError) as exc:
            raise SkellabError(f"{path}: unreadable sample archive ({exc})") from exc

    def shape(self, shape_id: str) -> Shape:
        """The stored mesh as a :class:`Shape` (normalised frame, original normalisation kept)."""
        rec = self.record(shape_id)
        path = self._path(shape_id, "mesh")
        mesh = trimesh.load(path, force="mesh", process=False)
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
        """Check every file's sha256; return the number of files checked."""
        n = 0
        for rec in self.records:
            for kind in rec["files"]:
                self._path(rec["id"], kind)
                n += 1
        return n

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
        }
