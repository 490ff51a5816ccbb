"""The skeletal graph: stick-figure edges between skeletal points.

Candidate edges come from two priors (as in Point2Skeleton, Lin et al. 2021):

* recovery prior — every surface point links the two skeletal points nearest to it
  (two spheres that share surface support are neighbours along the skeleton);
* each skeletal point links its nearest other skeletal point (no point is left alone
  when the surface sample is sparse).

The candidates are pruned to a minimum spanning forest weighted by Euclidean length.
A tree cannot represent a loop (a torus, a vessel ring), so optionally each remaining
candidate, shortest first, is added back when it is short (≤ ``cycle_length_ratio`` ×
the median forest edge) and closes a *long* cycle: its ends are at least
``min_cycle_hops`` edges apart in the graph so far. Short detours (triangles in thick
regions) are never re-added. Finally, pieces of the forest that the priors left apart
are bridged by their shortest gap (Borůvka-style) when it is at most ``bridge_ratio`` ×
the median tree edge, so a stray pair of spheres joins its branch while truly separate
components (two vessels far apart) stay separate.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import networkx as nx
import numpy as np
import torch
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import minimum_spanning_tree
from scipy.spatial import cKDTree

from ..errors import SkellabError
from .ops import knn

__all__ = ["GraphConfig", "candidate_edges", "skeleton_edges"]


@dataclass(frozen=True)
class GraphConfig:
    """How skeletal points are linked into a stick figure."""

    surface_prior: bool = True  # link the 2 skeletal points nearest each surface point
    nearest_prior: bool = True  # link each skeletal point to its nearest other one
    keep_cycles: bool = True  # re-add short non-tree edges that close long loops
    cycle_length_ratio: float = 3.0  # a loop-closing edge is at most this × median tree edge long
    min_cycle_hops: int = 16  # ... and joins points at least this many edges apart
    bridge_ratio: float = 3.0  # join forest pieces whose gap is at most this × median tree edge

    def to_dict(self) -> dict:
        return asdict(self)


def _as_numpy(x: torch.Tensor | np.ndarray, name: str) -> np.ndarray:
    a = x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)
    if a.ndim != 2 or a.shape[1] != 3:
        raise SkellabError(f"{name} must have shape (n, 3), got {a.shape}")
    return a.astype(np.float64)


def candidate_edges(
    centers: torch.Tensor | np.ndarray,
    surface_points: torch.Tensor | np.ndarray | None = None,
    *,
    config: GraphConfig = GraphConfig(),
) -> np.ndarray:
    """Candidate edges (E, 2) int64 with i < j, unique, from the two priors above.

    centers        : (K, 3) skeletal points
    surface_points : (N, 3) surface samples for the recovery prior (skipped if None)
    """
    c = _as_numpy(centers, "centers")
    K = len(c)
    pairs = []
    ct = torch.from_numpy(c)[None]
    if config.nearest_prior and K >= 2:
        _, idx = knn(ct, ct, 1, exclude_self=True)
        pairs.append(np.stack([np.arange(K), idx[0, :, 0].numpy()], 1))
    if config.surface_prior and surface_points is not None and K >= 2:
        s = torch.from_numpy(_as_numpy(surface_points, "surface_points"))[None]
        _, idx = knn(s, ct, 2)
        pairs.append(idx[0].numpy())
    if not pairs:
        return np.zeros((0, 2), dtype=np.int64)
    e = np.sort(np.concatenate(pairs).astype(np.int64), axis=1)
    e = e[e[:, 0] != e[:, 1]]
    return np.unique(e, axis=0)


def _bridges(c: np.ndarray, tree: np.ndarray, limit: float) -> np.ndarray:
    """(e, 2) edges joining forest components through their shortest gaps no longer than ``limit``."""
    K = len(c)
    graph = nx.Graph([tuple(e) for e in tree])
    graph.add_nodes_from(range(K))
    added = []
    while True:
        comps = list(nx.connected_components(graph))
        if len(comps) < 2:
            break
        label = np.empty(K, dtype=np.int64)
        for i, comp in enumerate(comps):
            label[list(comp)] = i
        best = []
        for i, comp in enumerate(comps):  # shortest edge from this component to any other
            inside, outside = np.flatnonzero(label == i), np.flatnonzero(label != i)
            dist, j = cKDTree(c[outside]).query(c[inside])
            a = int(np.argmin(dist))
            if dist[a] <= limit:
                best.append((float(dist[a]), int(inside[a]), int(outside[j[a]])))
        if not best:
            break
        for _, a, b in sorted(best):
            if not nx.has_path(graph, a, b):
                graph.add_edge(a, b)
                added.append(sorted((a, b)))
    return np.asarray(added, dtype=np.int64).reshape(-1, 2)


def skeleton_edges(
    centers: torch.Tensor | np.ndarray,
    surface_points: torch.Tensor | np.ndarray | None = None,
    *,
    config: GraphConfig = GraphConfig(),
) -> torch.Tensor:
    """Edges of the skeletal graph: minimum spanning forest of the candidates (+ loops).

    centers        : (K, 3) skeletal points
    surface_points : (N, 3) surface samples (recovery prior); optional
    returns        : (E, 2) int64 tensor, i < j, unique rows, sorted. Not differentiable.
    """
    c = _as_numpy(centers, "centers")
    K = len(c)
    cand = candidate_edges(c, surface_points, config=config)
    if len(cand) == 0:
        return torch.zeros((0, 2), dtype=torch.long)
    length = np.linalg.norm(c[cand[:, 0]] - c[cand[:, 1]], axis=1) + 1e-12  # > 0 keeps zero-length edges
    forest = minimum_spanning_tree(coo_matrix((length, (cand[:, 0], cand[:, 1])), shape=(K, K))).tocoo()
    tree = np.sort(np.stack([forest.row, forest.col], 1).astype(np.int64), axis=1)
    median_edge = float(np.median(forest.data)) if forest.nnz else 0.0
    tree = np.concatenate([tree, _bridges(c, tree, config.bridge_ratio * median_edge)])
    edges = [tuple(int(v) for v in e) for e in tree]
    if config.keep_cycles and len(tree):
        graph = nx.Graph(edges)
        graph.add_nodes_from(range(K))
        limit = config.cycle_length_ratio * median_edge
        in_tree = set(edges)
        for i in np.argsort(length):
            if length[i] > limit:
                break
            a, b = int(cand[i, 0]), int(cand[i, 1])
            if (a, b) in in_tree:
                continue
            near = nx.single_source_shortest_path_length(graph, a, cutoff=config.min_cycle_hops - 1)
            if b not in near:  # closes a loop of at least min_cycle_hops + 1 edges
                graph.add_edge(a, b)
                edges.append((a, b))
    out = np.unique(np.asarray(edges, dtype=np.int64).reshape(-1, 2), axis=0)
    return torch.from_numpy(out)
