"""Skeletal graph: priors, spanning forest, loop closing, bridging."""

import networkx as nx
import numpy as np
import torch

from skellab.skeleton.graph import GraphConfig, candidate_edges, skeleton_edges


def _tube_surface(axis: np.ndarray, radius: float, per_point: int = 12) -> np.ndarray:
    """Rings of surface points around a polyline in the xy-plane (z is the ring's other axis)."""
    tangent = np.gradient(axis, axis=0)
    tangent /= np.linalg.norm(tangent, axis=1, keepdims=True)
    side = np.cross(tangent, [0, 0, 1.0])
    t = np.linspace(0, 2 * np.pi, per_point, endpoint=False)
    ring = np.cos(t)[None, :, None] * side[:, None] + np.sin(t)[None, :, None] * np.array([0, 0, 1.0])
    return (axis[:, None] + radius * ring).reshape(-1, 3)


def _graph(edges, k):
    g = nx.Graph(edges.tolist())
    g.add_nodes_from(range(k))
    return g


def test_line_gives_a_path():
    centers = np.stack([np.linspace(-1, 1, 50), np.zeros(50), np.zeros(50)], 1)
    surface = _tube_surface(np.stack([np.linspace(-1, 1, 200), np.zeros(200), np.zeros(200)], 1), 0.1)
    perm = np.random.default_rng(0).permutation(50)
    edges = skeleton_edges(torch.tensor(centers[perm]), torch.tensor(surface))
    assert edges.dtype == torch.long and edges.shape == (49, 2)
    assert bool((edges[:, 0] < edges[:, 1]).all()) and len(np.unique(edges.numpy(), axis=0)) == 49
    g = _graph(edges, 50)
    assert nx.is_tree(g) and max(d for _, d in g.degree) == 2


def test_circle_keeps_its_loop_and_tree_mode_drops_it():
    t = np.linspace(0, 2 * np.pi, 80, endpoint=False)
    centers = np.stack([0.7 * np.cos(t), 0.7 * np.sin(t), 0 * t], 1)
    tt = np.linspace(0, 2 * np.pi, 400, endpoint=False)
    surface = _tube_surface(np.stack([0.7 * np.cos(tt), 0.7 * np.sin(tt), 0 * tt], 1), 0.15)
    g = _graph(skeleton_edges(centers, surface), 80)
    assert nx.is_connected(g) and [len(c) for c in nx.cycle_basis(g)] == [80]
    g_tree = _graph(skeleton_edges(centers, surface, config=GraphConfig(keep_cycles=False)), 80)
    assert nx.is_tree(g_tree)


def test_y_junction_is_a_tree_with_one_branch_point():
    arms = [np.array([0, -1.0, 0]), np.array([0.8, 0.6, 0]), np.array([-0.8, 0.6, 0])]
    centers = np.concatenate([np.linspace(0, 1, 20)[1:, None] * a for a in arms] + [np.zeros((1, 3))])
    surface = np.concatenate([_tube_surface(np.linspace(0, 1, 100)[:, None] * a, 0.05) for a in arms])
    g = _graph(skeleton_edges(centers, surface), len(centers))
    assert nx.is_tree(g)
    assert sorted(d for _, d in g.degree if d > 2) == [3]


def test_far_apart_parts_stay_separate_and_near_pieces_are_bridged():
    line = np.stack([np.linspace(0, 1, 30), np.zeros(30), np.zeros(30)], 1)
    two = np.concatenate([line, line + [0, 2.0, 0]])
    g = _graph(skeleton_edges(two, None), 60)  # nearest-neighbour prior only
    assert nx.number_connected_components(g) == 2
    # Two stray points just past the end of a line join it (bridge), not a separate piece.
    stray = np.concatenate([line, [[1.06, 0, 0], [1.09, 0, 0]]])
    cfg = GraphConfig(nearest_prior=True, surface_prior=False)
    assert nx.is_connected(_graph(skeleton_edges(stray, None, config=cfg), 32))


def test_candidates_are_unique_and_ordered():
    rng = np.random.default_rng(1)
    cand = candidate_edges(rng.random((40, 3)), rng.random((300, 3)))
    assert cand.shape[1] == 2 and (cand[:, 0] < cand[:, 1]).all()
    assert len(np.unique(cand, axis=0)) == len(cand)
