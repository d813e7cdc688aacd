"""Influence, pruning and scores of an attribution graph: pure functions on tensors (circuit-tracer's ``graph.py``
definitions, on a rectangular adjacency).

An attribution graph's adjacency is kept as rows: ``A[r, c]`` is the direct effect of source node ``c`` on the
target node ``rows[r]`` (a node index). Only features and logits are targets, and logits are never sources, so the
square matrix circuit-tracer builds (nodes x nodes) has all its other rows zero; the rectangular form holds
(features + logits) x (features + errors + tokens) and grows linearly with the prompt for a fixed number of
feature rows.

- ``normalize``: ``|A|`` with every row divided by its sum;
- influence seeded from the logit weights w (their probabilities): ``I = w (Â + Â² + ...)``, iterated (the graph is
  a DAG, so the series ends);
- pruning: keep the nodes holding ``node_threshold`` of the total influence (embeddings and logits always), then
  the (non-zero) edges holding ``edge_threshold`` of the edge influence ``Â[r, c] (I + w)[rows[r]]``, then
  repeatedly drop feature and error nodes left without outgoing edges and features left without incoming ones;
- scores: the *replacement score* is the share of the influence on the logits that comes from embeddings rather
  than errors; the *completeness score* is the share of every node's incoming (normalised) weight that does not
  come from error nodes, weighted by its influence plus its logit weight.
"""

from __future__ import annotations

from typing import NamedTuple

import torch


def normalize(A: torch.Tensor) -> torch.Tensor:
    """``|A|`` with rows scaled to sum to one (all-zero rows stay zero)."""
    a = A.abs()
    return a / a.sum(1, keepdim=True).clamp(min=1e-10)


def influence(Ahat: torch.Tensor, rows: torch.Tensor, seed: torch.Tensor, max_iter: int = 1000) -> torch.Tensor:
    """(n_nodes,) ``seed (Â + Â² + ...)``: the total normalised influence of every node on the seeded nodes.

    ``Ahat`` (R, n_sources) normalised rows of the targets ``rows`` (R,) (node indices); ``seed`` (n_nodes,)."""
    total = torch.zeros_like(seed)
    current = seed
    for _ in range(max_iter):
        step = torch.zeros_like(seed)
        step[: Ahat.shape[1]] = current[rows] @ Ahat
        if not step.any():
            return total
        total += step
        current = step
    raise RuntimeError("Influence did not converge: the adjacency has a cycle.")


def find_threshold(scores: torch.Tensor, threshold: float) -> torch.Tensor:
    """The smallest score among the largest ones that hold ``threshold`` of the total."""
    ordered = scores.flatten().sort(descending=True).values
    cumulative = ordered.cumsum(0) / ordered.sum().clamp(min=1e-30)
    index = min(int(torch.searchsorted(cumulative, torch.tensor(threshold))), len(ordered) - 1)
    return ordered[index]


class Pruned(NamedTuple):
    """What :func:`prune` keeps."""

    node_mask: torch.Tensor
    """(n_nodes,) bool."""
    edge_mask: torch.Tensor
    """(R, n_sources) bool, aligned with the adjacency rows."""
    influence: torch.Tensor
    """(n_nodes,) each node's influence on the logits (unpruned graph)."""
    cumulative: torch.Tensor
    """(n_nodes,) share of the total influence held by the nodes at least as influential (the viewer's scale)."""


def prune(A: torch.Tensor, rows: torch.Tensor, seed: torch.Tensor, n_features: int, n_kept: int,
          node_threshold: float = 0.8, edge_threshold: float = 0.98) -> Pruned:
    """Prune by influence (module docstring). ``n_kept`` trailing nodes (embeddings and logits) are always kept;
    nodes are ordered features, errors, embeddings, logits, and ``rows`` are the features' then the logits'."""
    Ahat = normalize(A)
    node_influence = influence(Ahat, rows, seed)
    node_mask = node_influence >= find_threshold(node_influence, node_threshold)
    node_mask[-n_kept:] = True
    n_sources = A.shape[1]
    kept = A * node_mask[rows, None] * node_mask[None, :n_sources]
    Khat = normalize(kept)
    weight = influence(Khat, rows, seed) + seed
    edge_scores = Khat * weight[rows, None]
    edge_mask = (edge_scores >= find_threshold(edge_scores, edge_threshold)) & (edge_scores > 0)
    free = node_mask.numel() - n_kept  # features and errors
    is_feature_row = rows < n_features
    while True:
        before = node_mask.clone()
        edge_mask &= node_mask[rows, None] & node_mask[None, :n_sources]
        node_mask[:free] &= edge_mask[:, :free].any(0)
        incoming = torch.zeros(n_features, dtype=torch.bool)
        incoming[rows[is_feature_row]] = edge_mask[is_feature_row].any(1)
        node_mask[:n_features] &= incoming
        if torch.equal(before, node_mask):
            break
    order = node_influence.sort(descending=True)
    cumulative = torch.zeros_like(node_influence)
    cumulative[order.indices] = order.values.cumsum(0) / order.values.sum().clamp(min=1e-30)
    return Pruned(node_mask, edge_mask, node_influence, cumulative)


class Scores(NamedTuple):
    """circuit-tracer's graph scores (both in [0, 1]; 1 when no error node carries influence)."""

    replacement: float
    """Influence from embeddings / influence from embeddings and errors."""
    completeness: float
    """Influence-weighted share of incoming weight not from errors."""


def graph_scores(A: torch.Tensor, rows: torch.Tensor, seed: torch.Tensor, errors: slice, tokens: slice) -> Scores:
    """Replacement and completeness scores of the adjacency rows ``A`` (module docstring); ``errors`` and
    ``tokens`` are the node ranges of the error and embedding nodes."""
    Ahat = normalize(A)
    node_influence = influence(Ahat, rows, seed)
    token_part, error_part = float(node_influence[tokens].sum()), float(node_influence[errors].sum())
    replacement = token_part / max(token_part + error_part, 1e-30)
    non_error = torch.ones_like(seed)
    non_error[rows] = 1 - Ahat[:, errors].sum(1)
    weight = node_influence + seed
    return Scores(replacement, float((non_error * weight).sum() / weight.sum().clamp(min=1e-30)))
