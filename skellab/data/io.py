"""Reading and writing surface meshes and label volumes.

Meshes come back as plain arrays in **file units** (usually millimetres):

    vertices : (n, 3) float64
    faces    : (m, 3) int64, triangles

Nothing here checks watertightness or orientation of surface files: that is
:func:`skellab.data.shape.validate_mesh`'s job (called by :meth:`Shape.from_mesh`).
Label volumes are different: :func:`load_label_volume` builds the surface itself,
so it returns a closed, outward-oriented mesh in world coordinates (mm).

Supported surface formats: STL (ascii and binary), PLY, OBJ, OFF (via trimesh),
GIFTI ``.gii`` / ``.gii.gz`` (via nibabel) and VRML 2.0 ``.wrl`` IndexedFaceSets
(a small parser below). Label volumes: NIfTI ``.nii`` / ``.nii.gz``.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import nibabel as nib
import numpy as np
import trimesh
from scipy import ndimage
from skimage.measure import marching_cubes

from ..errors import SkellabError
from ..runtime import atomic_path, check_regular_file
from .shape import Shape

MESH_SUFFIXES = (".stl", ".ply", ".obj", ".off", ".gii", ".gii.gz", ".wrl")
VOLUME_SUFFIXES = (".nii", ".nii.gz")
SAVE_SUFFIXES = (".ply", ".stl", ".obj", ".off")


def file_suffix(path: str | os.PathLike) -> str:
    """Lower-case suffix, keeping ``.gz`` together with the one before it (``.nii.gz``)."""
    name = Path(path).name.lower()
    for suffix in MESH_SUFFIXES + VOLUME_SUFFIXES:
        if name.endswith(suffix):
            return suffix
    return Path(name).suffix


def _check_readable(path: str | os.PathLike) -> Path:
    """Existing, non-empty regular file (a FIFO or device is refused before anything reads it)."""
    return check_regular_file(path, what="input")


def _checked_arrays(vertices: np.ndarray, faces: np.ndarray, path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Common checks on what a reader produced; shapes (n, 3) float64 and (m, 3) int64."""
    vertices, faces = np.asarray(vertices), np.asarray(faces)
    if np.size(vertices) and (vertices.ndim != 2 or vertices.shape[1] != 3) and vertices.ndim != 1:
        raise SkellabError(f"{path}: vertex array has shape {vertices.shape}; expected (n, 3) coordinates")
    if np.size(faces) and (faces.ndim != 2 or faces.shape[1] != 3) and faces.ndim != 1:
        raise SkellabError(f"{path}: face array has shape {faces.shape}; expected (m, 3) triangles")
    if np.size(vertices) and vertices.dtype.kind not in "fiu":
        raise SkellabError(f"{path}: vertex coordinates have dtype {vertices.dtype}; expected real numbers")
    if np.size(faces) and (faces.dtype.kind not in "iu" and not (
            faces.dtype.kind == "f" and np.all(np.isfinite(faces)) and np.all(faces == np.round(faces)))):
        raise SkellabError(f"{path}: face indices have dtype {faces.dtype}; expected integers")
    v = np.asarray(vertices, dtype=np.float64).reshape(-1, 3) if np.size(vertices) else np.zeros((0, 3))
    f = np.asarray(faces, dtype=np.int64).reshape(-1, 3) if np.size(faces) else np.zeros((0, 3), np.int64)
    if len(v) == 0:
        raise SkellabError(f"{path}: no vertices found (not a valid mesh file?)")
    if len(f) == 0:
        raise SkellabError(f"{path}: no faces found (a point cloud, not a surface mesh)")
    if not np.isfinite(v).all():
        raise SkellabError(f"{path}: vertices contain NaN or infinite coordinates")
    if f.min() < 0 or f.max() >= len(v):
        raise SkellabError(f"{path}: face indices out of range for {len(v)} vertices")
    return v, f


def load_mesh(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """Read a triangle surface mesh.

    Returns ``(vertices, faces)``: (n, 3) float64 in file units and (m, 3) int64.
    Polygons are fan-triangulated; several parts in one file are concatenated; the
    corners of STL facets are shared where they are exactly equal (no tolerance).
    Raises :class:`SkellabError` for a missing/empty/unparsable file, an unsupported
    extension, a file without faces (point cloud) or non-finite coordinates.
    """
    p = _check_readable(path)
    suffix = file_suffix(p)
    if suffix in (".gii", ".gii.gz"):
        v, f = _load_gifti(p)
    elif suffix == ".wrl":
        parts = load_vrml_parts(p)
        offsets = np.cumsum([0] + [len(pv) for pv, _ in parts[:-1]])
        v = np.concatenate([pv for pv, _ in parts])
        f = np.concatenate([pf + o for (_, pf), o in zip(parts, offsets)])
    elif suffix in (".stl", ".ply", ".obj", ".off"):
        v, f = _load_with_trimesh(p, suffix)
    elif suffix in VOLUME_SUFFIXES:
        raise SkellabError(f"{p}: is a label volume; use load_label_volume(path, label) or load_shape_file(label=...)")
    else:
        raise SkellabError(
            f"{p}: unsupported mesh extension {suffix!r} (supported: {', '.join(MESH_SUFFIXES)})"
        )
    return _checked_arrays(v, f, p)


def _load_with_trimesh(p: Path, suffix: str) -> tuple[np.ndarray, np.ndarray]:
    if suffix == ".stl":
        _check_stl_header(p)
    try:
        loaded = trimesh.load(str(p), file_type=suffix[1:], process=False)
    except Exception as exc:  # trimesh raises many types for malformed files
        raise SkellabError(f"{p}: cannot parse {suffix[1:].upper()} file ({type(exc).__name__}: {exc})") from exc
    if isinstance(loaded, trimesh.points.PointCloud):
        raise SkellabError(f"{p}: no faces found (a point cloud, not a surface mesh)")
    if isinstance(loaded, trimesh.Scene):
        meshes = [g for g in loaded.dump() if isinstance(g, trimesh.Trimesh) and len(g.faces)]
        if not meshes:
            raise SkellabError(f"{p}: no faces found (empty scene or a point cloud, not a surface mesh)")
        loaded = trimesh.util.concatenate(meshes)
    vertices, faces = np.asarray(loaded.vertices), np.asarray(loaded.faces)
    if suffix == ".stl" and len(vertices):  # STL stores 3 corners per facet: share exactly equal ones
        vertices, inverse = np.unique(vertices, axis=0, return_inverse=True)
        faces = inverse.reshape(-1)[faces]
    return vertices, faces


def _check_stl_header(p: Path) -> None:
    """Reject files that are neither binary STL (size 84 + 50 n) nor ascii STL (``solid`` … ``facet``)."""
    size = p.stat().st_size
    with open(p, "rb") as fh:
        head = fh.read(84)
        if len(head) == 84:
            n_tri = int.from_bytes(head[80:84], "little")
            if n_tri > 0 and size == 84 + 50 * n_tri:
                return
        fh.seek(0)
        text = fh.read(4096).lstrip().lower()
    if text.startswith(b"solid") and b"facet" in text:
        return
    raise SkellabError(f"{p}: not a valid STL file (neither binary STL nor ascii 'solid … facet' text)")


def _load_gifti(p: Path) -> tuple[np.ndarray, np.ndarray]:
    try:
        img = nib.load(str(p))
        v = img.agg_data("NIFTI_INTENT_POINTSET")
        f = img.agg_data("NIFTI_INTENT_TRIANGLE")
    except Exception as exc:
        raise SkellabError(f"{p}: cannot read GIFTI surface ({type(exc).__name__}: {exc})") from exc
    if not isinstance(img, nib.gifti.GiftiImage):
        raise SkellabError(f"{p}: not a GIFTI image")
    if v is None or (isinstance(v, tuple) and not v):
        raise SkellabError(f"{p}: GIFTI file has no POINTSET array (not a surface)")
    if f is None or (isinstance(f, tuple) and not f):
        raise SkellabError(f"{p}: no faces found (GIFTI file has no TRIANGLE array)")
    if isinstance(v, tuple) or isinstance(f, tuple):
        raise SkellabError(f"{p}: GIFTI file holds several POINTSET or TRIANGLE arrays; expected one surface")
    v, f = np.asarray(v), np.asarray(f)
    if v.ndim != 2 or v.shape[1] != 3:
        raise SkellabError(f"{p}: GIFTI POINTSET array has shape {v.shape}; expected (n, 3) coordinates")
    if f.ndim != 2 or f.shape[1] != 3:
        raise SkellabError(f"{p}: GIFTI TRIANGLE array has shape {f.shape}; expected (m, 3) vertex indices")
    return v, f


# --- VRML 2.0 IndexedFaceSet ------------------------------------------------------------------

_COORD_POINTS = re.compile(r"\bCoordinate\s*\{\s*point\s*\[([^\]]*)\]")
_COORD_INDEX = re.compile(r"\bcoordIndex\s*\[([^\]]*)\]")
_FACE_SET = re.compile(r"\bIndexedFaceSet\b")


def load_vrml_parts(path: str | os.PathLike) -> list[tuple[np.ndarray, np.ndarray]]:
    """Read every ``IndexedFaceSet`` of a VRML 2.0 (``.wrl``) file, one ``(vertices, faces)`` per shape.

    Only ``coord Coordinate { point [...] }`` and ``coordIndex [...]`` are read;
    polygons (separated by ``-1``) are fan-triangulated. ``Transform`` nodes are
    ignored, so coordinates are in the file's own units. ``USE``-shared coordinates
    are not supported. vertices (n, 3) float64, faces (m, 3) int64.
    """
    p = _check_readable(path)
    text = p.read_text(errors="replace")
    text = re.sub(r"#[^\n]*", " ", text)  # comments (incl. the '#VRML V2.0' header)
    starts = [m.start() for m in _FACE_SET.finditer(text)]
    if not starts:
        raise SkellabError(f"{p}: no IndexedFaceSet found in VRML file")
    parts = []
    for i, start in enumerate(starts):
        block = text[start : starts[i + 1] if i + 1 < len(starts) else len(text)]
        points, index = _COORD_POINTS.search(block), _COORD_INDEX.search(block)
        if points is None or index is None:
            raise SkellabError(
                f"{p}: IndexedFaceSet #{i} lacks an inline 'coord Coordinate {{ point [...] }}' or 'coordIndex [...]'"
            )
        try:
            v = np.array(points.group(1).replace(",", " ").split(), dtype=np.float64)
            idx = np.array(index.group(1).replace(",", " ").split(), dtype=np.int64)
        except ValueError as exc:
            raise SkellabError(f"{p}: malformed number in IndexedFaceSet #{i}") from exc
        if v.size % 3:
            raise SkellabError(f"{p}: IndexedFaceSet #{i} has {v.size} point numbers, not a multiple of 3")
        parts.append(_checked_arrays(v.reshape(-1, 3), fan_triangulate(idx), p))
    return parts


def fan_triangulate(index: np.ndarray) -> np.ndarray:
    """VRML-style polygon list ``[a, b, c, d, -1, e, f, g, -1, ...]`` → (m, 3) int64 triangles.

    A polygon ``(v0, v1, ..., vk)`` becomes ``(v0, vj, vj+1)`` for j = 1..k-1;
    polygons with fewer than three corners are dropped. The final ``-1`` is optional.
    """
    idx = np.asarray(index, dtype=np.int64)
    if idx.size == 0:
        return np.zeros((0, 3), np.int64)
    if idx[-1] != -1:
        idx = np.append(idx, -1)
    ends = np.flatnonzero(idx == -1)  # position of each terminator
    starts = np.concatenate([[0], ends[:-1] + 1])
    n_tri = np.maximum(ends - starts - 2, 0)  # triangles per polygon
    poly_start = np.repeat(starts, n_tri)
    j = np.arange(n_tri.sum()) - np.repeat(np.cumsum(n_tri) - n_tri, n_tri) + 1  # 1..k-2 within each polygon
    return np.stack([idx[poly_start], idx[poly_start + j], idx[poly_start + j + 1]], axis=1)


# --- label volumes -------------------------------------------------------------------------------


def load_label_volume(
    path: str | os.PathLike, label: int, *, smoothing_sigma: float = 1.0
) -> tuple[np.ndarray, np.ndarray]:
    """Surface of one label of a NIfTI label volume, in world coordinates (mm).

    See :func:`label_volume_surface` for the steps. Returns ``(vertices, faces)``:
    (n, 3) float64 world mm (through the image affine) and (m, 3) int64, closed and
    outward-oriented.
    """
    labels, affine, p = read_label_image(path)
    return label_volume_surface(labels, affine, int(label), smoothing_sigma=smoothing_sigma, name=str(p))


def label_volume_surface(
    labels: np.ndarray,
    affine: np.ndarray,
    label: int,
    *,
    smoothing_sigma: float = 1.0,
    name: str = "volume",
) -> tuple[np.ndarray, np.ndarray]:
    """Closed surface of ``labels == label``, mapped through ``affine``.

    labels : (X, Y, Z) int, label volume
    affine : (4, 4) float, voxel index → world (mm)

    Steps: mask → largest 26-connected component → fill interior holes → Gaussian
    smoothing (``smoothing_sigma`` in voxels; 0 disables) → marching cubes at 0.5 on a
    zero-padded crop (so the surface is closed even at the image border) → voxel
    indices mapped through ``affine`` → faces flipped if needed so that the enclosed
    volume is positive (outward normals, also for mirrored affines). If smoothing cut
    the structure into pieces, only the piece enclosing the largest volume is kept.
    Returns (n, 3) float64 world vertices and (m, 3) int64 faces.
    """
    mask = labels == int(label)
    if not mask.any():
        present = np.unique(labels)
        present = present[present != 0]
        shown = ", ".join(str(int(x)) for x in present[:40]) + (" …" if len(present) > 40 else "")
        raise SkellabError(f"{name}: label {label} not present; labels present: {shown or 'none (all zero)'}")

    # crop to the label with room for the smoothing kernel; zero outside the image
    pad = int(np.ceil(4 * max(smoothing_sigma, 0.0))) + 2
    nonzero = [np.flatnonzero(mask.any(axis=tuple(a for a in range(3) if a != k))) for k in range(3)]
    lo = np.array([nz[0] for nz in nonzero]) - pad
    hi = np.array([nz[-1] for nz in nonzero]) + pad + 1
    crop = np.zeros(tuple(hi - lo), dtype=bool)
    src_lo, src_hi = np.maximum(lo, 0), np.minimum(hi, mask.shape)
    crop[tuple(slice(a - o, b - o) for a, b, o in zip(src_lo, src_hi, lo))] = mask[
        tuple(slice(a, b) for a, b in zip(src_lo, src_hi))
    ]

    components, n = ndimage.label(crop, structure=np.ones((3, 3, 3), bool))
    if n > 1:
        sizes = np.bincount(components.ravel())
        sizes[0] = 0
        crop = components == int(np.argmax(sizes))
    crop = ndimage.binary_fill_holes(crop)
    field = crop.astype(np.float64)
    if smoothing_sigma > 0:
        field = ndimage.gaussian_filter(field, sigma=float(smoothing_sigma))
    if field.max() <= 0.5:
        raise SkellabError(f"{name}: label {label} is too thin to survive smoothing with sigma={smoothing_sigma}")
    verts, faces, _, _ = marching_cubes(field, level=0.5)
    ijk = verts.astype(np.float64) + lo  # (n, 3) voxel indices in the full image
    affine = np.asarray(affine, dtype=np.float64)
    world = ijk @ affine[:3, :3].T + affine[:3, 3]  # (n, 3) mm
    mesh = trimesh.Trimesh(world, np.asarray(faces, dtype=np.int64), process=False)
    # smoothing can cut thin (diagonal) voxel bridges: keep the largest closed piece
    pieces = mesh.split(only_watertight=False)
    if len(pieces) > 1:
        mesh = max(pieces, key=lambda m: abs(m.volume))
    vertices, faces = np.asarray(mesh.vertices, dtype=np.float64), np.asarray(mesh.faces, dtype=np.int64)
    if mesh.volume < 0:
        faces = faces[:, ::-1].copy()
    return vertices, faces


def read_label_image(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray, Path]:
    """Read a NIfTI label volume: (X, Y, Z) int64 labels, (4, 4) affine (voxel index → world mm), path.

    Float volumes are accepted when every value is an integer (labels are often stored as float32).
    """
    p = _check_readable(path)
    if file_suffix(p) not in VOLUME_SUFFIXES:
        raise SkellabError(f"{p}: unsupported label-volume extension {file_suffix(p)!r} (use .nii or .nii.gz)")
    try:
        img = nib.load(str(p))
        data = np.asanyarray(img.dataobj)
    except Exception as exc:
        raise SkellabError(f"{p}: cannot read NIfTI file ({type(exc).__name__}: {exc})") from exc
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise SkellabError(f"{p}: not a 3D label volume (shape {data.shape})")
    if not (np.issubdtype(data.dtype, np.integer) or data.dtype == np.bool_):
        floating = np.issubdtype(data.dtype, np.floating)
        if not (floating and np.all(np.isfinite(data)) and np.all(data == np.round(data))):
            raise SkellabError(f"{p}: not an integer label volume (dtype {data.dtype} with non-integer values)")
    return data.astype(np.int64), np.asarray(img.affine, dtype=np.float64), p


# --- one-call loading and saving -----------------------------------------------------------------


def load_shape_file(
    path: str | os.PathLike,
    *,
    organ: str,
    shape_id: str | None = None,
    label: int | None = None,
    source: str | None = None,
    license: str = "user-provided",
    smoothing_sigma: float = 1.0,
) -> Shape:
    """Load a mesh file or one label of a NIfTI volume as a validated, normalised :class:`Shape`.

    Volume files (``.nii``, ``.nii.gz``) need ``label``. ``shape_id`` defaults to the
    file stem (plus ``_label<k>``); ``source`` defaults to the path (plus ``#label=k``).
    """
    p = Path(path)
    suffix = file_suffix(p)
    stem = p.name[: len(p.name) - len(suffix)] if suffix else p.name
    meta: dict = {"file": p.name}
    if suffix in VOLUME_SUFFIXES:
        if label is None:
            raise SkellabError(f"{p}: a label volume needs label=<int> to pick the structure")
        vertices, faces = load_label_volume(p, int(label), smoothing_sigma=smoothing_sigma)
        stem, where = f"{stem}_label{int(label)}", f"{p}#label={int(label)}"
        meta.update(label=int(label), smoothing_sigma=float(smoothing_sigma), units="mm")
    else:
        if label is not None:
            raise SkellabError(f"{p}: label= only applies to label volumes (.nii/.nii.gz)")
        vertices, faces = load_mesh(p)
        where = str(p)
    return Shape.from_mesh(
        vertices,
        faces,
        shape_id=shape_id or stem,
        organ=organ,
        source=source or where,
        license=license,
        meta=meta,
    )


def save_mesh(path: str | os.PathLike, vertices: np.ndarray, faces: np.ndarray) -> Path:
    """Write a triangle mesh to PLY (binary), STL (binary), OBJ or OFF, atomically.

    vertices (n, 3) float, faces (m, 3) int, any units (written as given). The file
    appears under its final name only once completely written. Returns the path.
    """
    p = Path(path)
    suffix = file_suffix(p)
    if suffix not in SAVE_SUFFIXES:
        raise SkellabError(f"{p}: cannot save mesh as {suffix!r} (supported: {', '.join(SAVE_SUFFIXES)})")
    v = np.asarray(vertices, dtype=np.float64)
    f = np.asarray(faces, dtype=np.int64)
    if v.ndim != 2 or v.shape[1] != 3 or f.ndim != 2 or f.shape[1] != 3:
        raise SkellabError(f"{p}: need vertices (n, 3) and faces (m, 3), got {v.shape} and {f.shape}")
    mesh = trimesh.Trimesh(vertices=v, faces=f, process=False)
    with atomic_path(p) as tmp:
        mesh.export(str(tmp), file_type=suffix[1:])
    return p
