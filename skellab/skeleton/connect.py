"""Connecting a set of skeletal spheres: attach stray islands to the main body.

Every encoded training shape of MedSDF is one piece, and so is the union of its skeletal
spheres: the overlap graph (spheres i, j joined when they overlap) is connected. Sampled
token sets break this in a way no per-token error measure sees: a diffusion model places
most spheres along the organ but leaves a few small groups floating beside it (measured on
the shipped denoiser: 11–21 overlap components per generated vessel tree, 1 for every
encoded training tree). The mesh inherits each island as a separate bead.

:func:`connect_spheres` restores the property directly: islands — connected groups of the
overlap graph other than the largest (by sphere volume) — are moved rigidly, nearest first,
along their shortest gap until they overlap the main body by a margin. An island's own
shape (relative positions, radii) is unchanged, so its decoded detail is too; only where
it sits changes. Spheres of radius ≤ 0 are empty and left alone.
"""

from __future__ import annotations

import numpy as np
import torch
from scipy.sparse import csr_matrix
from scipy.sparse.csgraph import connected_components

from ..errors import SkellabError

__all__ = ["DEFAULT_OVERLAP", "overlap_components", "connect_spheres", "connect_sphere_sets"]

#: the margin every generator and interpolation joins islands to (chosen on fresh references: benchmarks/README.md)
DEFAULT_OVERLAP = 0.1


def _joined(c: np.ndarray, r: np.ndarray, overlap: float) -> tuple[np.ndarray, np.ndarray]:
    """(K, K) gap to being joined, d_ij − (1 − overlap)(r_i + r_j) (≤ 0: joined), and the distances."""
    d = np.linalg.norm(c[:, None] - c[None], axis=-1)
    return d - (1.0 - overlap) * (r[:, None] + r[None]), d


def _numpy(x: torch.Tensor | np.ndarray) -> np.ndarray:
    return x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


def _check(centers: torch.Tensor | np.ndarray, radii: torch.Tensor | np.ndarray, overlap: float
           ) -> tuple[np.ndarray, np.ndarray]:
    c = np.array(_numpy(centers), dtype=np.float64)  # a copy: the caller's array is never changed
    r = np.array(_numpy(radii), dtype=np.float64)
    if c.ndim != 2 or c.shape[1] != 3 or r.shape != (c.shape[0],) or len(c) == 0:
        raise SkellabError(f"centers must be (K, 3) and radii (K,), K >= 1, got {c.shape}, {r.shape}")
    if not (np.isfinite(c).all() and np.isfinite(r).all()):
        raise SkellabError("centers and radii must be finite")
    if not 0.0 <= overlap < 1.0:
        raise SkellabError(f"overlap must be in [0, 1), got {overlap}")
    return c, r


def overlap_components(centers: torch.Tensor | np.ndarray, radii: torch.Tensor | np.ndarray, *,
                       overlap: float = 0.0) -> np.ndarray:
    """(K,) int64 component label of each sphere in the overlap graph; −1 for empty spheres (r ≤ 0).

    Spheres i and j are joined when |c_i − c_j| ≤ (1 − overlap)(r_i + r_j): ``overlap`` = 0 is plain
    overlap; a positive margin asks for a neck between them (0.1 keeps the junction's radius
    ≥ ~0.4 r for equal spheres), so the join survives marching cubes and a decoder's residual.
    """
    c, r = _check(centers, radii, overlap)
    live = np.flatnonzero(r > 0)
    labels = np.full(len(c), -1, dtype=np.int64)
    if len(live) == 0:
        return labels
    gap, _ = _joined(c[live], r[live], overlap)
    _, lab = connected_components(csr_matrix(gap <= 0), directed=False)
    labels[live] = lab
    return labels


def connect_spheres(centers: torch.Tensor | np.ndarray, radii: torch.Tensor | np.ndarray, *,
                    overlap: float = DEFAULT_OVERLAP, anchored: torch.Tensor | np.ndarray | None = None
                    ) -> tuple[torch.Tensor, dict]:
    """Move every island of the overlap graph onto the main body; radii are unchanged.

    centers : (K, 3), radii : (K,) (normalised frame)
    overlap : the margin of :func:`overlap_components` an island is moved to (0 ≤ overlap < 1)
    anchored: optional (K,) bool — spheres that must not move (e.g. tokens a user kept): every
              component holding one belongs to the main body
    returns : (new centers (K, 3) float32 tensor, info) with info = ``{"islands": islands moved,
              "spheres_moved": spheres in them, "max_shift": largest move, "mean_shift": mean move of
              the moved spheres}``. Spheres of the main body never move; a connected set is returned
              unchanged. Deterministic.

    The main body is the component with the largest total volume (Σ r³), plus every anchored one.
    Each round moves the island whose gap to the main body is smallest along the line between its
    two closest spheres (i in the island, j in the body), by exactly that gap, so that
    d_ij = (1 − overlap)(r_i + r_j); the island then belongs to the body, and islands it now
    touches join with it. At most K rounds.
    """
    c, r = _check(centers, radii, overlap)
    fixed = np.zeros(len(c), dtype=bool)
    if anchored is not None:
        fixed = np.asarray(_numpy(anchored))
        if fixed.shape != (len(c),) or fixed.dtype != np.bool_:
            raise SkellabError(f"anchored must be a ({len(c)},) bool mask, got {fixed.shape} {fixed.dtype}")
    c0 = c.copy()
    live = np.flatnonzero(r > 0)
    islands = 0
    for _ in range(len(c)):
        if len(live) < 2:
            break
        cl, rl = c[live], r[live]
        gap, d = _joined(cl, rl, overlap)
        n, lab = connected_components(csr_matrix(gap <= 0), directed=False)
        if n == 1:
            break
        volume = np.bincount(lab, weights=rl**3, minlength=n)
        main = (lab == int(np.argmax(volume))) | np.isin(lab, lab[fixed[live]])
        if main.all():  # the rest are anchored pieces: nothing may move
            break
        g = gap[np.ix_(~main, main)]
        a, b = np.unravel_index(int(np.argmin(g)), g.shape)
        i, j = np.flatnonzero(~main)[a], np.flatnonzero(main)[b]
        if d[i, j] > 0:
            u = (cl[i] - cl[j]) / d[i, j]
        else:  # coincident centres are joined already; kept for safety
            u = np.zeros(3)
        island = live[lab == lab[i]]
        c[island] -= (g[a, b] + 1e-5) * u  # 1e-5 past the margin: still joined after rounding to float32
        islands += 1
    shift = np.linalg.norm(c - c0, axis=1)
    moved = shift > 0
    info = {"islands": int(islands), "spheres_moved": int(moved.sum()), "max_shift": float(shift.max()),
            "mean_shift": float(shift[moved].mean()) if moved.any() else 0.0}
    return torch.from_numpy(c.astype(np.float32)), info


def connect_sphere_sets(centers: torch.Tensor, radii: torch.Tensor, *, overlap: float = DEFAULT_OVERLAP,
                        anchored: torch.Tensor | np.ndarray | None = None) -> tuple[torch.Tensor, list[dict]]:
    """:func:`connect_spheres` on each of B sets: centers (B, K, 3), radii (B, K) → (new centers (B, K, 3)
    with the input's dtype and device, one info dict per set). ``anchored`` (K,) applies to every set."""
    out = centers.clone()
    infos = []
    for b in range(centers.shape[0]):
        joined, info = connect_spheres(centers[b], radii[b], overlap=overlap, anchored=anchored)
        out[b] = joined.to(out)
        infos.append(info)
    return out, infos
