"""The shape model shared by the whole library.

A :class:`Shape` is a validated, watertight, outward-oriented triangle mesh in the
**normalised frame** (bounding-box centre at the origin, largest absolute coordinate
equal to 1, as in the paper), together with its organ class, where it came from, its
licence, and the :class:`Normalization` that maps original units (e.g. millimetres)
to that frame, so that every result can be exported back in original units.

Sign convention (used everywhere in skellab): signed distance is **negative inside**
and positive outside (DeepSDF / libigl). The paper's code uses the opposite sign;
convert only at its edges with :func:`skellab.data.sampling.to_paper_sign`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import trimesh

from ..errors import SkellabError


@dataclass(frozen=True)
class Normalization:
    """Similarity transform ``x_norm = (x_orig - center) / scale``.

    center : (3,) float64, bounding-box centre in original units
    scale  : float, largest absolute centred coordinate (original units per normalised unit)
    """

    center: tuple[float, float, float]
    scale: float

    @classmethod
    def identity(cls) -> "Normalization":
        return cls(center=(0.0, 0.0, 0.0), scale=1.0)

    @classmethod
    def fit(cls, vertices: np.ndarray) -> "Normalization":
        """Paper normalisation: bbox centre → 0, divide by max |coordinate| → [-1, 1]."""
        v = np.asarray(vertices, dtype=np.float64)
        center = 0.5 * (v.min(axis=0) + v.max(axis=0))
        scale = float(np.abs(v - center).max())
        if not np.isfinite(scale) or scale <= 0:
            raise SkellabError("cannot normalise a degenerate shape (zero or non-finite extent)")
        return cls(center=tuple(float(c) for c in center), scale=scale)

    def apply(self, points: np.ndarray) -> np.ndarray:
        """(n, 3) original units → (n, 3) normalised frame."""
        return (np.asarray(points, dtype=np.float64) - np.asarray(self.center)) / self.scale

    def invert(self, points: np.ndarray) -> np.ndarray:
        """(n, 3) normalised frame → (n, 3) original units."""
        return np.asarray(points, dtype=np.float64) * self.scale + np.asarray(self.center)

    def then(self, other: "Normalization") -> "Normalization":
        """The composition: first ``self``, then ``other``."""
        c = np.asarray(self.center) + self.scale * np.asarray(other.center)
        return Normalization(center=tuple(float(x) for x in c), scale=self.scale * other.scale)

    def to_dict(self) -> dict[str, Any]:
        return {"center": list(self.center), "scale": self.scale}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Normalization":
        try:
            center = tuple(float(x) for x in d["center"])
            scale = float(d["scale"])
        except (KeyError, TypeError, ValueError) as exc:
            raise SkellabError(f"malformed normalisation record: {d!r}") from exc
        if len(center) != 3 or not scale > 0:
            raise SkellabError(f"malformed normalisation record: {d!r}")
        return cls(center=center, scale=scale)  # type: ignore[arg-type]


@dataclass(frozen=True)
class GroundTruthSkeleton:
    """Analytic medial skeleton of a procedural shape (normalised frame).

    centers : (k, 3) float64, sphere centres on the medial axis
    radii   : (k,) float64, inscribed-sphere radii
    edges   : (e, 2) int64, indices into ``centers`` (a stick figure)
    """

    centers: np.ndarray
    radii: np.ndarray
    edges: np.ndarray

    def transformed(self, norm: Normalization) -> "GroundTruthSkeleton":
        return GroundTruthSkeleton(norm.apply(self.centers), self.radii / norm.scale, self.edges)


@dataclass(frozen=True)
class Shape:
    """A watertight, outward-oriented triangle mesh in the normalised frame.

    vertices      : (v, 3) float64, normalised frame (max |coordinate| = 1)
    faces         : (f, 3) int64
    shape_id      : unique id (used as file stem in MedSDF)
    organ         : class name, e.g. ``"kidney"``
    source        : where it came from (package/file or ``procedural:<family>``)
    license       : licence of the source data
    normalization : original units → normalised frame
    seed          : per-shape seed for procedural shapes (regenerates it bit-for-bit)
    skeleton      : analytic ground-truth skeleton (procedural shapes), normalised frame
    meta          : free-form JSON-serialisable details (family parameters, donor id, …)
    """

    vertices: np.ndarray
    faces: np.ndarray
    shape_id: str
    organ: str
    source: str
    license: str
    normalization: Normalization = field(default_factory=Normalization.identity)
    seed: int | None = None
    skeleton: GroundTruthSkeleton | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_mesh(
        cls,
        vertices: np.ndarray,
        faces: np.ndarray,
        *,
        shape_id: str,
        organ: str,
        source: str,
        license: str,
        seed: int | None = None,
        skeleton: GroundTruthSkeleton | None = None,
        meta: dict[str, Any] | None = None,
        repair: bool = True,
    ) -> "Shape":
        """Validate a mesh given in original units, orient it outward and normalise it.

        ``repair`` merges duplicate vertices and drops degenerate faces (what STL files
        need) before checking watertightness; it never fills holes: a mesh with holes
        is rejected, since its inside is undefined. ``skeleton`` is given in the same
        original units and is normalised with the mesh.
        """
        mesh = validate_mesh(vertices, faces, name=shape_id, repair=repair)
        norm = Normalization.fit(mesh.vertices)
        return cls(
            vertices=norm.apply(mesh.vertices),
            faces=np.asarray(mesh.faces, dtype=np.int64),
            shape_id=shape_id,
            organ=organ,
            source=source,
            license=license,
            normalization=norm,
            seed=seed,
            skeleton=None if skeleton is None else skeleton.transformed(norm),
            meta=dict(meta or {}),
        )

    def to_trimesh(self, *, original_units: bool = False) -> trimesh.Trimesh:
        v = self.normalization.invert(self.vertices) if original_units else self.vertices
        return trimesh.Trimesh(vertices=v, faces=self.faces, process=False)

    def replace(self, **changes: Any) -> "Shape":
        return dataclasses.replace(self, **changes)

    def __repr__(self) -> str:  # arrays are long; keep the repr readable
        return (
            f"Shape(id={self.shape_id!r}, organ={self.organ!r}, source={self.source!r}, "
            f"vertices={len(self.vertices)}, faces={len(self.faces)})"
        )


def validate_mesh(
    vertices: np.ndarray, faces: np.ndarray, *, name: str = "mesh", repair: bool = True
) -> trimesh.Trimesh:
    """Check a triangle mesh and return it watertight and outward-oriented.

    Raises :class:`SkellabError` (one line, naming ``name``) for: no vertices/faces,
    wrong array shapes, NaN/inf coordinates, out-of-range face indices, holes
    (not watertight), or zero volume.
    """
    v = np.asarray(vertices)
    f = np.asarray(faces)
    if v.size == 0 or f.size == 0:
        raise SkellabError(f"{name}: mesh is empty (no vertices or no faces)")
    if v.ndim != 2 or v.shape[1] != 3:
        raise SkellabError(f"{name}: vertices must have shape (n, 3), got {v.shape}")
    if f.ndim != 2 or f.shape[1] != 3:
        raise SkellabError(f"{name}: faces must be triangles with shape (m, 3), got {f.shape}")
    if not np.isfinite(v).all():
        raise SkellabError(f"{name}: vertices contain NaN or infinite coordinates")
    if f.min() < 0 or f.max() >= len(v):
        raise SkellabError(f"{name}: face indices out of range for {len(v)} vertices")
    # work in a unit frame: trimesh's merge and degeneracy tolerances are absolute (1e-8), so a
    # valid mesh at 1e12 or 1e-12 scale, or offset by 1e11, would otherwise fall apart
    v = v.astype(np.float64)
    used = v[np.unique(f)]
    lo, hi = used.min(axis=0), used.max(axis=0)
    center = (lo + hi) / 2
    extent = float(np.abs(used - center).max())
    if not np.isfinite(extent) or extent <= 0:
        far = float(np.abs(center).max()) if np.isfinite(center).all() else 0.0
        hint = (f" at coordinates near {far:.3g}: a file storing 32-bit coordinates that far from the origin "
                "cannot resolve a small shape; move it towards the origin") if far > 1e4 else ""
        raise SkellabError(f"{name}: all vertices of the mesh coincide (zero extent){hint}")
    # exact for ordinary meshes: a power-of-two scale, and a shift only when the offset dwarfs the extent
    unit = float(2.0 ** np.round(np.log2(extent)))
    shift = center if float(np.abs(center).max()) > 1e3 * extent else np.zeros(3)
    mesh = trimesh.Trimesh(vertices=(v - shift) / unit, faces=f.astype(np.int64), process=repair)
    if repair:
        mesh.update_faces(mesh.nondegenerate_faces())
        mesh.update_faces(mesh.unique_faces())
        mesh.remove_unreferenced_vertices()
    if len(mesh.faces) == 0:
        offset = float(np.abs(center).max())
        if offset > 1e5 * extent:
            raise SkellabError(
                f"{name}: mesh has no non-degenerate faces: its extent {extent:.3g} is too small for the "
                f"precision of coordinates near {offset:.3g}; move the mesh towards the origin"
            )
        raise SkellabError(f"{name}: mesh has no non-degenerate faces")
    if not mesh.is_watertight:
        raise SkellabError(
            f"{name}: mesh is not watertight (it has holes or non-manifold edges), so its inside is undefined"
        )
    if not mesh.is_winding_consistent:
        trimesh.repair.fix_winding(mesh)
    volume = mesh.volume  # unit frame
    if not np.isfinite(volume) or abs(volume) < 1e-12 * max(mesh.scale, 1e-12) ** 3:
        raise SkellabError(f"{name}: mesh encloses zero volume")
    if volume < 0:
        mesh.invert()
    mesh.vertices = mesh.vertices * unit + shift  # back to the input's units
    return mesh
