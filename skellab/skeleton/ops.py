"""Batched point-cloud primitives in torch: farthest-point sampling, kNN, gather, normals.

Everything here runs on CPU or GPU alike (no CUDA-only kernels). Shapes follow the
``(B, N, 3)`` batch convention; ``estimate_normals`` works on a single ``(N, 3)`` cloud.
"""

from __future__ import annotations

import numpy as np
import torch
from scipy.sparse import coo_matrix
from scipy.spatial import cKDTree
from scipy.sparse.csgraph import breadth_first_order, connected_components, minimum_spanning_tree

from ..errors import SkellabError

__all__ = ["farthest_point_sampling", "knn", "NeighborIndex", "gather", "estimate_normals", "pairwise_sq_dist"]


def _check_batched(points: torch.Tensor, name: str) -> None:
    if not isinstance(points, torch.Tensor) or points.ndim != 3 or points.shape[-1] != 3:
        shape = tuple(points.shape) if hasattr(points, "shape") else type(points).__name__
        raise SkellabError(f"{name} must be a (B, N, 3) tensor, got {shape}")


def pairwise_sq_dist(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Squared Euclidean distances ``(B, M, N)`` between ``a (B, M, 3)`` and ``b (B, N, 3)``.

    Uses the matmul expansion (fast, clamped at 0); good to ~1e-6 relative, which is
    enough for ranking neighbours. Differentiable, but use exact differences when the
    distance values themselves carry gradients (as :func:`knn` does).
    """
    d2 = (a * a).sum(-1, keepdim=True) - 2.0 * a @ b.transpose(1, 2) + (b * b).sum(-1).unsqueeze(1)
    return d2.clamp_min_(0.0) if not d2.requires_grad else d2.clamp_min(0.0)


def _fps_numpy(pts: np.ndarray, k: int, first: int, allowed: np.ndarray | None) -> np.ndarray:
    """FPS of one (N, 3) cloud on the CPU: one (N, 5) @ (5,) product per step.

    ‖p − c‖² = [p, ‖p‖², 1] · [−2c, 1, ‖c‖²], so each step is a single small matmul,
    a running minimum and an argmax (about 3× faster than elementwise torch on CPU).
    """
    sq = (pts * pts).sum(1, keepdims=True)
    lhs = np.concatenate([pts, sq, np.ones_like(sq)], 1)  # (N, 5)
    rhs = np.ascontiguousarray(np.concatenate([-2.0 * pts, np.ones_like(sq), sq], 1))  # (N, 5)
    min_d2 = np.full(len(pts), np.inf, dtype=pts.dtype)
    if allowed is not None:
        min_d2[~allowed] = -np.inf  # never the farthest, never chosen
    idx = np.empty(k, dtype=np.int64)
    idx[0] = cur = first
    for i in range(1, k):
        np.minimum(min_d2, lhs @ rhs[cur], out=min_d2)
        cur = int(min_d2.argmax())
        idx[i] = cur
    return idx


def _fps_torch(pts: torch.Tensor, k: int, first: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Batched FPS in torch (any device): (B, N, 3), first (B,) → (B, k) indices."""
    B, N, _ = pts.shape
    device = pts.device
    idx = torch.empty(B, k, dtype=torch.long, device=device)
    idx[:, 0] = first
    x, y, z = pts.transpose(1, 2).contiguous().unbind(1)  # three (B, N): coordinate-major is faster
    batch = torch.arange(B, device=device)
    min_d2 = torch.full((B, N), float("inf"), dtype=pts.dtype, device=device)
    if mask is not None:
        min_d2.masked_fill_(~mask, float("-inf"))  # never the farthest, never chosen
    cur = first
    for i in range(1, k):
        c = pts[batch, cur]  # (B, 3), the point chosen last
        d2 = (x - c[:, 0:1]).square_() + (y - c[:, 1:2]).square_() + (z - c[:, 2:3]).square_()
        torch.minimum(min_d2, d2, out=min_d2)
        cur = min_d2.argmax(dim=1)
        idx[:, i] = cur
    return idx


def farthest_point_sampling(
    points: torch.Tensor,
    k: int,
    *,
    generator: torch.Generator | None = None,
    start: int | None = None,
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Greedy farthest-point sampling.

    points    : (B, N, 3) float
    k         : number of samples, 1 ≤ k ≤ N
    generator : if given (and ``start`` is None), the first index of each batch item is
                drawn from it; otherwise the first index is ``start`` (default 0).
                The result is deterministic given ``start`` or the generator's state.
    mask      : optional (B, N) bool; only points with ``True`` are ever chosen (each
                batch item needs at least k of them). With a mask, the first index is
                the first allowed point (or a random allowed one with ``generator``).
    returns   : (B, k) int64 indices into ``points``; all distinct.

    Not differentiable (indices). O(k·N) work per batch item, k sequential steps
    (numpy per item on CPU, batched torch elsewhere).
    """
    _check_batched(points, "points")
    B, N, _ = points.shape
    if not 1 <= k <= N:
        raise SkellabError(f"farthest_point_sampling needs 1 <= k <= N, got k={k} for N={N}")
    pts = points.detach()
    device = pts.device
    if start is not None:
        if not 0 <= start < N:
            raise SkellabError(f"farthest_point_sampling start index {start} outside [0, {N})")
        first = torch.full((B,), int(start), dtype=torch.long, device=device)
    elif generator is not None:
        first = torch.randint(N, (B,), generator=generator, device=generator.device).to(device)
    else:
        first = torch.zeros(B, dtype=torch.long, device=device)
    if mask is not None:
        if mask.shape != (B, N):
            raise SkellabError(f"farthest_point_sampling mask must have shape {(B, N)}, got {tuple(mask.shape)}")
        if int(mask.sum(1).min()) < k:
            raise SkellabError(f"farthest_point_sampling mask allows fewer than k={k} points")
        if start is None and generator is not None:
            noise = torch.rand(B, N, generator=generator, device=generator.device).to(device)
            first = torch.where(mask, noise, -1.0).argmax(1)
        elif start is None:
            first = mask.to(torch.int8).argmax(1)
    if device.type == "cpu":
        allowed = None if mask is None else mask.cpu().numpy()
        arr = pts.cpu().numpy()
        out = [_fps_numpy(arr[b], k, int(first[b]), None if allowed is None else allowed[b]) for b in range(B)]
        return torch.from_numpy(np.stack(out))
    return _fps_torch(pts, k, first, mask)


def gather(points: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """Index a batch of per-point features.

    points : (B, N, C)
    idx    : (B, M) or (B, M, k) int64 indices into N
    returns: (B, M, C) or (B, M, k, C). Differentiable wrt ``points``.
    """
    B, N, C = points.shape
    flat = idx.reshape(B, -1)
    if B > 1:  # rows of the flattened (B·N, C) table: index_select is several times faster than gather
        flat = flat + torch.arange(B, device=idx.device).unsqueeze(1) * N
    out = points.reshape(B * N, C).index_select(0, flat.reshape(-1))
    return out.reshape(*idx.shape, C)


def _dense_knn_index(query: torch.Tensor, ref: torch.Tensor, k: int, chunk: int) -> torch.Tensor:
    """(B, M, k) indices of the k nearest ``ref`` points, blockwise over the M queries."""
    parts = []
    for s in range(0, query.shape[1], chunk):
        d2 = pairwise_sq_dist(query[:, s : s + chunk], ref)
        parts.append(torch.topk(d2, k, dim=-1, largest=False, sorted=True).indices)
    return torch.cat(parts, dim=1)


class NeighborIndex:
    """A reusable nearest-neighbour index over a batch of reference clouds.

    ref     : (B, N, 3); only its detached values are indexed
    backend : ``"kdtree"`` (scipy k-d tree per batch item: fastest on CPU),
              ``"dense"`` (chunked torch distance matrix + top-k: any device), or
              ``"auto"`` (k-d tree on CPU, dense elsewhere)
    chunk   : queries per dense block, so memory stays at O(B·chunk·N)

    Build it once when the same reference is queried repeatedly (the shrinking-ball
    iterations do); :func:`knn` is the one-shot wrapper.
    """

    def __init__(self, ref: torch.Tensor, *, backend: str = "auto", chunk: int = 2048):
        _check_batched(ref, "ref")
        if backend not in ("auto", "kdtree", "dense"):
            raise SkellabError(f"unknown knn backend {backend!r}: use auto, kdtree or dense")
        if backend == "auto":
            backend = "kdtree" if ref.device.type == "cpu" else "dense"
        self.ref = ref
        self.backend = backend
        self.chunk = int(chunk)
        self._trees = None
        if backend == "kdtree":
            arr = ref.detach().cpu().numpy()
            self._trees = [cKDTree(a, leafsize=32) for a in arr]

    @property
    def num_points(self) -> int:
        return int(self.ref.shape[1])

    def query_index(self, query: torch.Tensor, k: int) -> torch.Tensor:
        """(B, M, k) int64 indices of the k nearest reference points, nearest first (no grad)."""
        _check_batched(query, "query")
        if query.shape[0] != self.ref.shape[0]:
            raise SkellabError(f"knn batch mismatch: query {query.shape[0]} vs ref {self.ref.shape[0]}")
        if not 1 <= k <= self.num_points:
            raise SkellabError(f"knn needs 1 <= k <= {self.num_points} reference points, got k={k}")
        if self._trees is not None:
            q = query.detach().cpu().numpy()
            out = np.empty(q.shape[:2] + (k,), dtype=np.int64)
            for b, tree in enumerate(self._trees):
                _, ib = tree.query(q[b], k=k)
                out[b] = ib.reshape(q.shape[1], k)
            return torch.from_numpy(out).to(query.device)
        return _dense_knn_index(query.detach(), self.ref.detach(), k, self.chunk)

    def query_index_flat(self, query: torch.Tensor, batch: torch.Tensor, k: int) -> torch.Tensor:
        """Ragged queries: ``query (L, 3)`` where row ``i`` belongs to batch item ``batch[i]``.

        Returns (L, k) int64 indices into that item's reference cloud (no grad). Used to
        re-query only the still-active rows of an iterative search.
        """
        if not 1 <= k <= self.num_points:
            raise SkellabError(f"knn needs 1 <= k <= {self.num_points} reference points, got k={k}")
        out = torch.empty(query.shape[0], k, dtype=torch.long, device=query.device)
        q_det = query.detach()
        for b in torch.unique(batch).tolist():
            rows = (batch == b).nonzero().squeeze(1)
            if self._trees is not None:
                _, ib = self._trees[b].query(q_det[rows].cpu().numpy(), k=k)
                out[rows] = torch.from_numpy(np.asarray(ib, dtype=np.int64).reshape(-1, k)).to(query.device)
            else:
                out[rows] = _dense_knn_index(q_det[rows][None], self.ref[b : b + 1].detach(), k, self.chunk)[0]
        return out

    def query(self, query: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """dist (B, M, k) unsquared and idx (B, M, k); ``dist`` is differentiable (see :func:`knn`)."""
        idx = self.query_index(query, k)
        dist = (query.unsqueeze(2) - gather(self.ref, idx)).norm(dim=-1)
        return dist, idx


def knn(
    query: torch.Tensor,
    ref: torch.Tensor,
    k: int,
    *,
    exclude_self: bool = False,
    backend: str = "auto",
    chunk: int = 2048,
) -> tuple[torch.Tensor, torch.Tensor]:
    """k nearest neighbours of each query point among the reference points.

    query        : (B, M, 3)
    ref          : (B, N, 3)
    k            : neighbours per query, 1 ≤ k ≤ N (N−1 with ``exclude_self``)
    exclude_self : drop the nearest neighbour (use when ``query is ref``)
    backend      : ``"auto"`` | ``"kdtree"`` | ``"dense"`` (see :class:`NeighborIndex`)
    chunk        : dense backend: queries per block (memory O(B·chunk·N))
    returns      : dist (B, M, k) unsquared, ascending; idx (B, M, k) int64 into N.

    The ranking is computed on detached data; ``dist`` is then recomputed from exact
    differences, so it is differentiable wrt both ``query`` and ``ref`` (indices are not).
    """
    index = NeighborIndex(ref, backend=backend, chunk=chunk)
    if exclude_self:
        if not 1 <= k < index.num_points:
            raise SkellabError(f"knn needs 1 <= k <= {index.num_points - 1} other points, got k={k}")
        idx = index.query_index(query, k + 1)[..., 1:]
        dist = (query.unsqueeze(2) - gather(ref, idx)).norm(dim=-1)
        return dist, idx
    return index.query(query, k)


def estimate_normals(points: torch.Tensor, k: int = 16) -> torch.Tensor:
    """Unit outward normals for an oriented-less point cloud (PCA + MST propagation).

    points  : (N, 3) float, a closed surface sample
    k       : neighbours for the local PCA plane fit and the propagation graph
    returns : (N, 3) unit normals, same dtype/device, **not differentiable** (detached).

    1. Local PCA: the normal is the eigenvector of the smallest eigenvalue of the
       covariance of each point's k nearest neighbours.
    2. Consistent orientation (Hoppe et al. 1992): propagate along a minimum spanning
       tree of the kNN graph weighted by ``1 − |n_i·n_j|`` (so flips cross nearly
       parallel planes first), flipping each child to agree with its parent.
    3. Global sign per connected component: the point with the largest ``x`` has an
       outward normal with positive ``x``; flip the component if it disagrees.
    """
    if not isinstance(points, torch.Tensor) or points.ndim != 2 or points.shape[1] != 3:
        raise SkellabError("estimate_normals expects an (N, 3) tensor")
    n = points.shape[0]
    if n < max(k, 4):
        raise SkellabError(f"estimate_normals needs at least {max(k, 4)} points, got {n}")
    pts = points.detach()
    _, idx = knn(pts[None], pts[None], k)  # includes self
    nbr = pts[idx[0]]  # (N, k, 3)
    centred = nbr - nbr.mean(dim=1, keepdim=True)
    cov = centred.transpose(1, 2) @ centred  # (N, 3, 3)
    _, vecs = torch.linalg.eigh(cov.double())
    normals = vecs[:, :, 0].to(pts.dtype)  # smallest eigenvalue's eigenvector

    nrm = normals.cpu().numpy().astype(np.float64)
    nb = idx[0, :, 1:].cpu().numpy()
    rows = np.repeat(np.arange(n), nb.shape[1])
    cols = nb.reshape(-1)
    w = 1.0 - np.abs((nrm[rows] * nrm[cols]).sum(1)) + 1e-6  # > 0 so edges survive
    graph = coo_matrix((w, (rows, cols)), shape=(n, n)).tocsr()
    graph = graph.maximum(graph.T)
    mst = minimum_spanning_tree(graph)
    mst = mst + mst.T
    n_comp, labels = connected_components(mst, directed=False)
    xyz = pts.cpu().numpy()
    for comp in range(n_comp):
        members = np.flatnonzero(labels == comp)
        root = members[np.argmax(xyz[members, 0])]
        order, pred = breadth_first_order(mst, root, directed=False, return_predecessors=True)
        if nrm[root, 0] < 0:
            nrm[root] *= -1
        for node in order[1:]:  # parents come before children in BFS order
            if np.dot(nrm[node], nrm[pred[node]]) < 0:
                nrm[node] *= -1
    return torch.as_tensor(nrm, dtype=pts.dtype, device=pts.device)
