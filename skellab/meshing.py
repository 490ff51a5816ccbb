"""Latent → SDF grid → triangle mesh: dense and skeleton-guided decoding, marching cubes, export.

Grids are cell-vertex grids over ``[-box, box]^3`` in the normalised frame, ``ij``
order (x slowest), exactly :func:`skellab.data.sampling.grid_points`. Values are the
decoder's truncated SDF: **negative inside**, in normalised units, within [−τ, τ].

Guided decoding (METHOD §7, "only near the skeleton", made exact): the decoded SDF is
close to a true distance, so a grid cell with any corner farther from the zero
level set than the cell diagonal cannot contain surface. Starting from a coarse
lattice (every ``s``-th grid point, ~``coarse`` per axis), we

1. decode the coarse lattice — except points farther than ``band`` outside the union
   of skeletal spheres, which are set to "outside" (+τ) without decoding;
2. mark a cell *active* when its corners change sign or all of them are within
   ``safety`` × cell diagonal of zero (for a 1-Lipschitz f, a surface point x in the
   cell gives |f(c)| ≤ ‖c − x‖ ≤ diagonal at every corner c);
3. halve the stride: decode the new lattice points inside active cells, give every
   other new point the (common) sign of its inactive cell, at magnitude τ;
4. repeat until the stride is 1;
5. *repair*: decode every still-undecoded corner of a finest cell whose corner signs
   differ, until there is none, so every cell marching cubes triangulates has all 8
   corners decoded.

Step 3 can skip more (``narrow``): a new point p inside an active cell is decoded only
where the trilinear interpolation f̃(p) of its cell's corners is within ``narrow`` ×
D of zero, D = half the cell diagonal; the others get ±τ with the sign of f̃(p). For a
1-Lipschitz f, |f(p) − f̃(p)| ≤ Σ_c w_c ‖c − p‖ ≤ D, so with ``narrow`` ≥ 1 a skipped
point has its true sign: only the points that can lie on the surface are decoded, not
the whole band around it (2.3–2.6× fewer queries at 128³ on reconstructed and generated
organs, the same triangles; ``benchmarks/guided_decoding.py``). ``narrow=None`` decodes
every new point of an active cell.

Cells that reach the finest level with a sign change have all 8 corners decoded, so
marching cubes gives the same triangles as on the dense grid whenever the decoded
SDF is 1-Lipschitz at the coarse scales (``safety`` > 1 buys slack for a network
that is not). ``benchmarks/bench_decoding.py`` measures the difference.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import trimesh
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components
from skimage.measure import marching_cubes

from .autoencoder.model import Latent, SkeletalAutoencoder, sphere_union_sdf
from .data.sampling import grid_points
from .data.shape import Normalization
from .errors import SkellabError
from .runtime import atomic_path, inference_autocast

__all__ = ["SDFGrid", "MAX_RESOLUTION", "check_resolution", "check_mesh_path", "decode_chunk", "decode_points",
           "signed_volume", "decode_grid_dense", "decode_grid_guided", "extract_mesh", "cap_at_box", "count_components",
           "sphere_union_mesh", "decode_mesh", "export_mesh"]

MESH_FORMATS = (".ply", ".stl", ".obj")


@dataclass(frozen=True)
class SDFGrid:
    """A decoded SDF grid.

    values      : (R, R, R) float32 over [-box, box]^3, ``ij`` order, negative inside
    box         : half-width of the grid (normalised units)
    num_queries : decoder queries spent (R³ for dense decoding)
    seconds     : wall time of the decoding
    clipped     : decoded with ``cap`` and the surface reached the box (some outer grid value was inside)
    """

    values: np.ndarray
    box: float
    num_queries: int
    seconds: float = 0.0
    clipped: bool = False

    @property
    def resolution(self) -> int:
        return int(self.values.shape[0])

    @property
    def query_fraction(self) -> float:
        """Decoder queries / grid points."""
        return self.num_queries / float(self.values.size)


MAX_RESOLUTION = 512


def check_resolution(resolution: int) -> None:
    """A marching-cubes grid side must be an integer in (8, MAX_RESOLUTION]: one-line SkellabError otherwise."""
    if not isinstance(resolution, (int, np.integer)) or not 8 < int(resolution) <= MAX_RESOLUTION:
        raise SkellabError(f"grid resolution must be an integer in (8, {MAX_RESOLUTION}], got {resolution!r}")


def _check(model: SkeletalAutoencoder, latent: Latent, resolution: int) -> None:
    if not isinstance(model, SkeletalAutoencoder):
        raise SkellabError(f"expected a SkeletalAutoencoder, got {type(model).__name__}")
    if not isinstance(latent, Latent) or latent.batch_size != 1:
        raise SkellabError("decode one shape at a time: pass a Latent with batch size 1 (e.g. latents[i])")
    check_resolution(resolution)


def decode_chunk(device: torch.device | str) -> int:
    """Default queries per decoder pass: 65,536 on an accelerator, 8,192 on a CPU (``benchmarks/README.md``,
    "decoder chunk size")."""
    return 8192 if torch.device(device).type == "cpu" else 65536


@torch.no_grad()
def decode_points(model: SkeletalAutoencoder, latent: Latent, points: np.ndarray, chunk: int | None = None, *,
                  precision: str = "auto") -> np.ndarray:
    """Decoded truncated SDF (negative inside) at ``points`` (n, 3), normalised frame → (n,) float32, in chunks.

    chunk     : queries per forward pass; None: :func:`decode_chunk` of the model's device (8,192 on a CPU, where
                smaller passes stay in cache: 7.3 → 5.9 µs per query on one thread against 65,536); the chunk
                changes values by float rounding at most (each query is decoded on its own)

    precision : ``"auto"`` (bf16 where the device multiplies bf16 natively — CUDA, CPUs with AMX or
                AVX512-BF16 — else fp32), ``"fp32"`` or ``"bf16"`` (see :func:`skellab.runtime.inference_autocast`).
    """
    dev = next(model.parameters()).device
    chunk = decode_chunk(dev) if chunk is None else int(chunk)
    if chunk < 1:
        raise SkellabError(f"chunk must be >= 1, got {chunk}")
    lat = latent.to(dev)
    out = np.empty(len(points), dtype=np.float32)
    with inference_autocast(dev, precision):
        for s in range(0, len(points), chunk):
            q = torch.as_tensor(points[s : s + chunk], dtype=torch.float32, device=dev)[None]
            out[s : s + chunk] = model.decode(lat, q)[0].float().cpu().numpy()
    return out


def decode_grid_dense(model: SkeletalAutoencoder, latent: Latent, resolution: int = 128, *,
                      box: float = 1.1, chunk: int | None = None, precision: str = "auto") -> SDFGrid:
    """Decode every grid point (the reference). ``chunk`` queries per forward pass; ``precision`` as
    :func:`decode_points`."""
    _check(model, latent, resolution)
    t0 = time.perf_counter()
    R = int(resolution)
    vals = decode_points(model, latent, grid_points(R, box), chunk, precision=precision).reshape(R, R, R)
    return SDFGrid(vals, float(box), R**3, time.perf_counter() - t0)


def _lattice(R: int, stride: int) -> np.ndarray:
    """Grid indices of the lattice with this stride: 0, s, 2s, …, and always R − 1."""
    return np.unique(np.r_[np.arange(0, R, stride), R - 1])


def _cells_of(fine: np.ndarray, coarse: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For each fine index, the coarse cells (intervals between lattice points) that contain it:
    ``lo`` always, ``alt`` (the cell before) where the index sits on a lattice point (else = lo)."""
    lo = np.clip(np.searchsorted(coarse, fine, side="right") - 1, 0, len(coarse) - 2)
    alt = np.where((coarse[lo] == fine) & (lo > 0), lo - 1, lo)
    return lo, alt


def _trilinear(V: np.ndarray, L: np.ndarray, idx: tuple[np.ndarray, np.ndarray, np.ndarray]) -> np.ndarray:
    """Trilinear interpolation of lattice values ``V`` (n, n, n) at lattice ``L``'s grid indices, at the
    grid indices ``idx`` (three equal-length arrays) → (m,) float32."""
    lows, fracs = [], []
    for a in idx:
        lo = np.clip(np.searchsorted(L, a, side="right") - 1, 0, len(L) - 2)
        lows.append(lo)
        fracs.append(((a - L[lo]) / (L[lo + 1] - L[lo])).astype(np.float32))
    (x, y, z), (tx, ty, tz) = lows, fracs
    out = np.zeros(len(x), dtype=np.float32)
    for dx, wx in ((0, 1 - tx), (1, tx)):
        for dy, wy in ((0, 1 - ty), (1, ty)):
            for dz, wz in ((0, 1 - tz), (1, tz)):
                out += wx * wy * wz * V[x + dx, y + dy, z + dz]
    return out


def _corners_of_crossing_cells(negative: np.ndarray) -> np.ndarray:
    """(R, R, R) bool: grid points that are a corner of a cell whose 8 corners are not all of one sign."""
    R = negative.shape[0]
    corners = [negative[i : R - 1 + i, j : R - 1 + j, k : R - 1 + k] for i in (0, 1) for j in (0, 1) for k in (0, 1)]
    crossing = np.logical_or.reduce(corners) & ~np.logical_and.reduce(corners)
    out = np.zeros(negative.shape, dtype=bool)
    for i in (0, 1):
        for j in (0, 1):
            for k in (0, 1):
                out[i : R - 1 + i, j : R - 1 + j, k : R - 1 + k] |= crossing
    return out


def decode_grid_guided(
    model: SkeletalAutoencoder,
    latent: Latent,
    resolution: int = 128,
    *,
    box: float = 1.1,
    coarse: int = 16,
    safety: float = 1.5,
    band: float | None = 0.5,
    narrow: float | None = 1.0,
    cap: float | None = None,
    chunk: int | None = None,
    precision: str = "auto",
) -> SDFGrid:
    """Coarse-to-fine decoding of only the cells that can hold surface (see the module docstring).

    coarse : ~points per axis of the first lattice (its stride is a power of two)
    safety : a cell is refined when all its corners are within ``safety`` × its diagonal
             of zero (or their signs differ); > 1 tolerates a decoder steeper than 1
    band   : coarse points farther than this outside the sphere union are set to +τ
             undecoded (None: decode the whole coarse lattice)
    narrow : decode a new point of an active cell only where the interpolation of the cell's
             corners is within ``narrow`` × half its diagonal of zero (≥ 1 keeps every skipped
             point's sign for a 1-Lipschitz SDF); None: every new point of an active cell
    cap    : set the grid's six outer faces to at least this value (> 0) before the repair pass, so a
             surface that reaches the box is closed there and the cells that close it are decoded like
             any other surface cell (:func:`cap_at_box` on a finished grid leaves their inner corners at
             ±τ where they were not decoded); ``clipped`` in the result says whether it happened
    returns: :class:`SDFGrid` whose ``num_queries`` counts decoded points only; values at
             undecoded points are ±τ (their sign is exact under the Lipschitz assumption).
    """
    _check(model, latent, resolution)
    if not safety > 0:
        raise SkellabError(f"safety must be > 0, got {safety}")
    if narrow is not None and not (isinstance(narrow, (int, float)) and not isinstance(narrow, bool) and narrow > 0):
        raise SkellabError(f"narrow must be a number > 0 or None, got {narrow!r}")
    if isinstance(coarse, bool) or not isinstance(coarse, (int, np.integer)) or coarse < 2:
        raise SkellabError(f"coarse must be an integer >= 2, got {coarse!r}")
    if cap is not None and (isinstance(cap, bool) or not isinstance(cap, (int, float)) or not cap > 0):
        raise SkellabError(f"cap must be a number > 0 or None, got {cap!r}")
    t0 = time.perf_counter()
    R, tau = int(resolution), float(model.config.truncation)
    h = 2.0 * box / (R - 1)
    axis = np.linspace(-box, box, R)
    stride = 1
    while (R - 1) // (stride * 2) >= max(coarse - 1, 1):
        stride *= 2
    values = np.full((R, R, R), np.nan, dtype=np.float32)
    decoded = np.zeros((R, R, R), dtype=bool)
    n_queries = 0

    def decode_at(i: np.ndarray, j: np.ndarray, k: np.ndarray) -> int:
        if len(i):
            p = np.stack([axis[i], axis[j], axis[k]], -1)
            values[i, j, k] = decode_points(model, latent, p, chunk, precision=precision)
            decoded[i, j, k] = True
        return len(i)

    # 1. the coarse lattice, minus points far outside the sphere union
    L = _lattice(R, stride)
    pts = np.stack(np.meshgrid(axis[L], axis[L], axis[L], indexing="ij"), -1).reshape(-1, 3)
    todo = np.ones(len(pts), dtype=bool)
    sub = np.full(len(pts), tau, dtype=np.float32)
    if band is not None and model.config.sphere_prior:
        with torch.no_grad():
            prior = sphere_union_sdf(torch.as_tensor(pts, dtype=torch.float32)[None],
                                     latent.centers.float().cpu(), latent.radii.float().cpu())[0].numpy()
        todo = prior <= band
    sub[todo] = decode_points(model, latent, pts[todo], chunk, precision=precision)
    n_queries += int(todo.sum())
    values[np.ix_(L, L, L)] = sub.reshape(len(L), len(L), len(L))
    decoded[np.ix_(L, L, L)] = todo.reshape(len(L), len(L), len(L))

    while stride > 1:
        # 2. active cells of the current lattice
        V = values[np.ix_(L, L, L)]
        n = len(L)
        corners = [V[i : n - 1 + i, j : n - 1 + j, k : n - 1 + k] for i in (0, 1) for j in (0, 1) for k in (0, 1)]
        cmin, cmax = np.minimum.reduce(corners), np.maximum.reduce(corners)
        far = np.maximum.reduce([np.abs(c) for c in corners])  # max over corners of |sdf|
        active = ((cmin < 0) & (cmax >= 0)) | (far <= safety * np.sqrt(3.0) * stride * h)
        # 3. the finer lattice: decode new points inside active cells, fill the rest with the cell's sign
        half_diagonal = 0.5 * np.sqrt(3.0) * stride * h
        stride //= 2
        L2 = _lattice(R, stride)
        lo, alt = _cells_of(L2, L)
        # a new point lies in the cells (lo or alt along each axis) around it: OR over the 8 choices,
        # done one axis at a time (the same set, without gathering the whole fine lattice 8 times)
        inside = active
        for ax in range(3):
            inside = inside.take(lo, axis=ax) | inside.take(alt, axis=ax)
        fine = values if stride == 1 else values[np.ix_(L2, L2, L2)]  # stride 1: the grid itself (a view)
        known = ~np.isnan(fine)
        ii, jj, kk = np.nonzero(inside & ~known)
        gi, gj, gk = L2[ii], L2[jj], L2[kk]
        if narrow is not None and len(gi):
            est = _trilinear(V, L, (gi, gj, gk))
            skip = np.abs(est) > narrow * half_diagonal
            values[gi[skip], gj[skip], gk[skip]] = np.where(est[skip] < 0, -tau, tau)
            gi, gj, gk = gi[~skip], gj[~skip], gk[~skip]
        n_queries += decode_at(gi, gj, gk)
        # the rest takes the sign of a corner of its (inactive, single-signed) cell: corner lo along each axis
        negative = V < 0
        for ax in range(3):
            negative = negative.take(lo, axis=ax)
        rest = ~inside & ~known
        if stride == 1:
            np.copyto(values, np.where(negative, np.float32(-tau), np.float32(tau)), where=rest)
        else:
            fine = values[np.ix_(L2, L2, L2)]
            np.copyto(fine, np.where(negative, np.float32(-tau), np.float32(tau)), where=rest)
            values[np.ix_(L2, L2, L2)] = fine
        L = L2
    clipped = False
    if cap is not None:  # close a surface that reaches the box; the capped faces are final values
        for face in (np.s_[0], np.s_[-1], np.s_[:, 0], np.s_[:, -1], np.s_[:, :, 0], np.s_[:, :, -1]):
            clipped = clipped or bool((values[face] < 0).any())
            values[face] = np.maximum(values[face], cap)
            decoded[face] = True
    # 5. repair: every corner of a sign-changing finest cell decoded
    for _ in range(4 * R):
        gi, gj, gk = np.nonzero(_corners_of_crossing_cells(values < 0) & ~decoded)
        if not len(gi):
            break
        n_queries += decode_at(gi, gj, gk)
    return SDFGrid(values, float(box), n_queries, time.perf_counter() - t0, clipped)


def extract_mesh(grid: SDFGrid | np.ndarray, box: float | None = None, *, level: float = 0.0,
                 largest_component: bool = False, min_piece_cells: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """Marching cubes on a grid: vertices (V, 3) float64 in the grid's frame, faces (F, 3) int64.

    grid : :class:`SDFGrid`, or an (R, R, R) array over [-box, box]^3 (``box`` default 1.1),
           negative inside. Faces are oriented outward (positive enclosed volume).
    largest_component : keep only the connected component with the most faces.
    min_piece_cells   : drop pieces that enclose less than this many grid cells (h³ each): 1 removes
                        the sub-voxel specks marching cubes makes around an isolated grid value
                        below ``level``, which no grid of this resolution can resolve (the largest
                        piece is always kept).
    Raises :class:`SkellabError` when the grid has no zero crossing (no surface).
    """
    if isinstance(grid, SDFGrid):
        vals, box = grid.values, grid.box if box is None else box
    else:
        vals, box = np.asarray(grid, dtype=np.float32), 1.1 if box is None else box
    if vals.ndim != 3 or len(set(vals.shape)) != 1 or vals.shape[0] < 2:
        raise SkellabError(f"grid must be a cubic (R, R, R) array, got {vals.shape}")
    if not np.isfinite(vals).all():
        raise SkellabError("grid contains NaN or infinite values")
    if not (vals.min() < level < vals.max()):
        raise SkellabError("the decoded SDF has no zero crossing in the grid: there is no surface to mesh")
    R = vals.shape[0]
    h = 2.0 * box / (R - 1)
    verts, faces, _, _ = marching_cubes(vals, level=level, spacing=(h, h, h))
    verts = verts.astype(np.float64) - box
    faces = faces.astype(np.int64)
    mesh = trimesh.Trimesh(verts, faces, process=False)
    if (largest_component or min_piece_cells > 0) and count_components(verts, faces) > 1:
        parts = mesh.split(only_watertight=False)
        if len(parts) > 1:
            big = max(parts, key=lambda m: len(m.faces))
            if largest_component:
                mesh = big
            else:
                keep = [m for m in parts if m is big or abs(m.volume) >= min_piece_cells * h**3]
                if len(keep) < len(parts):
                    mesh = trimesh.util.concatenate(keep)
    if signed_volume(mesh.vertices, mesh.faces) < 0:  # SDF negative inside: make the faces point outward
        mesh.invert()
    return np.asarray(mesh.vertices, dtype=np.float64), np.asarray(mesh.faces, dtype=np.int64)


def cap_at_box(grid: SDFGrid, outside: float) -> tuple[np.ndarray, bool]:
    """The grid's values with its six outer faces set to at least ``outside`` (> 0): a surface that
    reaches the box is closed there, so marching cubes gives a closed mesh. Returns (values, whether
    any face was inside before)."""
    values = grid.values.copy()
    faces_of_box = [values[0], values[-1], values[:, 0], values[:, -1], values[:, :, 0], values[:, :, -1]]
    clipped = any(bool((side < 0).any()) for side in faces_of_box)
    for side in faces_of_box:
        side[...] = np.maximum(side, outside)
    return values, clipped


def signed_volume(vertices: np.ndarray, faces: np.ndarray) -> float:
    """Signed volume enclosed by a closed triangle mesh (positive when its faces point outward), by the divergence
    theorem on the x component, Σ_f n_x (x0 + x1 + x2) / 6 with n = (v1 − v0) × (v2 − v0): the value
    ``trimesh.Trimesh.volume`` gives (open meshes included), without its other mass integrals."""
    v = np.asarray(vertices, dtype=np.float64)[np.asarray(faces, dtype=np.int64)]
    e1, e2 = v[:, 1] - v[:, 0], v[:, 2] - v[:, 0]
    nx = e1[:, 1] * e2[:, 2] - e1[:, 2] * e2[:, 1]
    return float((nx * v[:, :, 0].sum(axis=1)).sum() / 6.0)


def count_components(vertices: np.ndarray, faces: np.ndarray) -> int:
    """Connected pieces of a triangle mesh: faces joined through edges that exactly two faces share —
    trimesh's ``face_adjacency`` rule, so the pieces are those of ``Trimesh.split`` — computed without building
    a Trimesh (a sort of the 3F edges and one sparse connected-components pass); 0 for no faces. ``vertices``
    is not read (pieces depend on the faces alone)."""
    faces = np.asarray(faces, dtype=np.int64)
    F = len(faces)
    if F == 0:
        return 0
    a, b = faces.reshape(-1), faces[:, [1, 2, 0]].reshape(-1)  # the 3F directed edges, face by face
    key = np.minimum(a, b) * (int(faces.max()) + 1) + np.maximum(a, b)
    order = np.argsort(key)  # which of an edge's two faces comes first does not matter
    ks = key[order]
    starts = np.flatnonzero(np.r_[True, ks[1:] != ks[:-1]])
    counts = np.diff(np.r_[starts, len(ks)])
    pair = starts[counts == 2]  # edges shared by exactly two faces join them
    a, b = order[pair] // 3, order[pair + 1] // 3
    graph = coo_matrix((np.ones(len(a), dtype=np.int8), (a, b)), shape=(F, F))
    return int(connected_components(graph, directed=False, return_labels=False))


def sphere_union_mesh(centers: torch.Tensor, radii: torch.Tensor, resolution: int = 128,
                      box: float = 1.1) -> tuple[np.ndarray, np.ndarray]:
    """Mesh of the union of spheres (K, 3), (K,) by marching cubes on a dense grid (normalised frame):
    the decoder's prior alone, the baseline every reconstruction is measured against."""
    g = torch.as_tensor(grid_points(resolution, box), dtype=torch.float32)[None]
    sdf = sphere_union_sdf(g, centers.reshape(1, -1, 3).float(), radii.reshape(1, -1).float())
    return extract_mesh(sdf[0].numpy().reshape((resolution,) * 3), box=box)


def decode_mesh(model: SkeletalAutoencoder, latent: Latent, resolution: int = 128, *, guided: bool = True,
                box: float = 1.1, largest_component: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Latent (batch size 1) → mesh (vertices (V, 3), faces (F, 3)) in the normalised frame."""
    dec = decode_grid_guided if guided else decode_grid_dense
    return extract_mesh(dec(model, latent, resolution, box=box), largest_component=largest_component)


def check_mesh_path(path: str | os.PathLike) -> Path:
    """``path`` if its suffix is a mesh format :func:`export_mesh` writes; else a one-line SkellabError."""
    p = Path(path)
    if p.suffix.lower() not in MESH_FORMATS:
        raise SkellabError(f"{p}: unsupported mesh format {p.suffix!r}; use .ply, .stl or .obj")
    return p


def export_mesh(path: str | os.PathLike, vertices: np.ndarray, faces: np.ndarray,
                normalization: Normalization | None = None) -> Path:
    """Write a mesh as PLY, STL or OBJ (by suffix), atomically.

    vertices : (V, 3) normalised frame; with ``normalization`` they are mapped back to
               original units (``normalization.invert``) before writing.
    """
    p = check_mesh_path(path)
    v, f = np.asarray(vertices, dtype=np.float64), np.asarray(faces, dtype=np.int64)
    if v.ndim != 2 or v.shape[1] != 3 or f.ndim != 2 or f.shape[1] != 3 or len(f) == 0:
        raise SkellabError(f"export_mesh needs vertices (V, 3) and a non-empty faces (F, 3), got {v.shape}, {f.shape}")
    if normalization is not None:
        v = normalization.invert(v)
    mesh = trimesh.Trimesh(v, f, process=False)
    with atomic_path(p) as tmp:
        mesh.export(tmp, file_type=p.suffix.lower()[1:])
    return p
