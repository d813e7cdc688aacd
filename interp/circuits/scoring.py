"""Between a method's score tensors and the graph format: every method's output becomes a CircuitGraph.

- An **edge method** gives (n_src, n_dst) edge scores. A node's derived score is the largest ``abs`` score of an
  edge touching it (auto-circuit: a node is in a circuit when any of its edges is).
- A **node method** gives one score per head / MLP. An edge's derived score is ``min(|s(u)|, |s(v)|)`` with the
  embeddings and logits counted as the largest node score, so the top-k edges are the edges among the top nodes
  (a node circuit, written as edges, for the faithfulness curve).

``metadata["score_origin"]`` says which of the two a graph's scores came from.
"""

from __future__ import annotations

from typing import Any

import torch

from interp.circuits.components import ComponentGraph
from interp.circuits.graph import CircuitGraph, Edge, component_nodes


def _edges(cg: ComponentGraph, scores: torch.Tensor) -> list[Edge]:
    out = []
    for s, d in cg.edge_index().tolist():
        node, slot = cg.dst_names[d]
        out.append(Edge(cg.src_names[s], node, slot, float(scores[s, d])))
    return out


def edge_graph(cg: ComponentGraph, scores: torch.Tensor, metadata: dict[str, Any]) -> CircuitGraph:
    """A graph from edge scores (n_src, n_dst); node scores derived (see the module docstring)."""
    nodes = component_nodes(cg.n_layers, cg.n_heads)
    edges = _edges(cg, scores)
    best: dict[str, float] = {}
    for e in edges:
        for name in (e.source, e.target):
            best[name] = max(best.get(name, 0.0), abs(e.score or 0.0))
    for n in nodes:
        n.score = best.get(n.id, 0.0)
    return CircuitGraph(nodes, edges, {**metadata, "score_origin": "edge"})


def node_graph(cg: ComponentGraph, node_scores: dict[str, float], metadata: dict[str, Any]) -> CircuitGraph:
    """A graph from node scores (ids as in :func:`component_nodes`); edge scores derived."""
    nodes = component_nodes(cg.n_layers, cg.n_heads)
    top = max((abs(v) for v in node_scores.values()), default=0.0)
    magnitude = {n.id: abs(node_scores.get(n.id, 0.0)) for n in nodes}
    magnitude["input"] = magnitude["logits"] = top
    for n in nodes:
        n.score = node_scores.get(n.id)
    matrix = torch.zeros(cg.n_src, cg.n_dst, dtype=torch.float64)
    for s, d in cg.edge_index().tolist():
        matrix[s, d] = min(magnitude[cg.src_names[s]], magnitude[cg.dst_names[d][0]])
    return CircuitGraph(nodes, _edges(cg, matrix), {**metadata, "score_origin": "node"})


def edge_matrix(cg: ComponentGraph, graph: CircuitGraph) -> torch.Tensor:
    """(n_src, n_dst) float64 edge scores of ``graph`` (0 for edges it does not score)."""
    index = {(cg.src_names[s], *cg.dst_names[d]): (s, d) for s, d in cg.edge_index().tolist()}
    matrix = torch.zeros(cg.n_src, cg.n_dst, dtype=torch.float64)
    for e in graph.edges:
        where = index.get((e.source, e.target, e.slot))
        if where is not None and e.score is not None:
            matrix[where] = e.score
    return matrix
