"""Scoring a found circuit: ROC AUC against a ground-truth circuit, faithfulness, and the faithfulness curve.

Definitions (specs/methods.md §10):
- **ROC AUC** (auto-circuit ``measure_roc``): rank items by ``abs(score)``; for every threshold take the items
  at or above it (tied items enter together); TPR = TP / |true|, FPR = FP / |false|; prepend (0, 0), append
  (1, 1), trapezoid area. Edges: every edge of the graph, true when the ground truth lists it. Nodes: the graph's
  nodes of the ground truth's ``node_kinds`` (heads by default), scored by their node score (for edge methods:
  the largest ``abs`` score of an edge touching the node, i.e. "in the circuit when any of its edges is").
- **Faithfulness** of a circuit C (EAP-IG's ``evaluate``): every edge outside C is patched from the corrupted
  run; ``(m(C) - m(empty)) / (m(M) - m(empty))`` with metric means over prompts; m(M) is the clean run and
  m(empty), every edge patched, the corrupted run.
- **Faithfulness curve** (MIB circuit track): circuits of the top ``int(f * n_edges)`` edges by ``abs(score)``
  for f in ``MIB_FRACTIONS``; **CPR** is the trapezoid area under faithfulness over f (higher is better),
  **CMD** the trapezoid area of ``|1 - faithfulness|`` (lower is better), both over the fraction axis as in
  MIB's code (so with f up to 0.5 the best CPR is about 0.5).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch

from interp.circuits.components import ComponentGraph, capture_sources, patched_logits
from interp.circuits.graph import CircuitGraph, edge_key, parse_node_id
from interp.circuits.scoring import edge_matrix
from interp.circuits.tasks import Baseline, Task, check_task, task_batches
from interp.errors import InterpError

MIB_FRACTIONS = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5)
"""Circuit sizes, as fractions of all edges, of the MIB circuit track: 0.1% .. 50%."""


@dataclass(frozen=True)
class GroundTruth:
    """A known circuit: node ids, optionally edge keys, and which node kinds node ROC ranks."""

    nodes: frozenset[str]
    """Node ids in the circuit (``a1.h2``, ``m0`` ...)."""
    edges: frozenset[str] | None = None
    """Edge keys ``source->target<slot>`` in the circuit; None when only nodes are known."""
    node_kinds: tuple[str, ...] = ("head",)
    """Node kinds ranked by node ROC (``head``, ``mlp``); the rest of the graph is not scored."""
    name: str = ""
    """Where the ground truth comes from (shown in reports)."""


def ground_truth(
    nodes: Iterable[str],
    edges: Iterable[tuple[str, str, str | None]] | None = None,
    node_kinds: Sequence[str] = ("head",),
    name: str = "",
) -> GroundTruth:
    """A :class:`GroundTruth` from node names (``L1H2``, ``a1.h2``, ``MLP0`` ...) and (source, target, slot)
    edges (slot ``q``/``k``/``v``, or None / "" for MLP and logits targets)."""
    node_set = frozenset(parse_node_id(n) for n in nodes)
    edge_set = None if edges is None else frozenset(edge_key(s, t, slot or None) for s, t, slot in edges)
    return GroundTruth(node_set, edge_set, tuple(node_kinds), name)


def roc_curve(scores: Sequence[float], labels: Sequence[bool]) -> tuple[list[float], list[float]]:
    """(FPR, TPR) points of the ROC of ``abs(scores)`` against ``labels``, from (0, 0) to (1, 1)."""
    s = torch.tensor([abs(float(x)) for x in scores], dtype=torch.float64)
    y = torch.tensor([bool(v) for v in labels])
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        raise InterpError(f"ROC AUC needs true and false items (got {n_pos} true, {n_neg} false); check the "
                          "ground truth against the graph's node and edge names.")
    fpr, tpr = [0.0], [0.0]
    for threshold in torch.unique(s).flip(0):
        chosen = s >= threshold
        tpr.append(int((chosen & y).sum()) / n_pos)
        fpr.append(int((chosen & ~y).sum()) / n_neg)
    return fpr + [1.0], tpr + [1.0]


def roc_auc(scores: Sequence[float], labels: Sequence[bool]) -> float:
    """Trapezoid area under :func:`roc_curve`."""
    fpr, tpr = roc_curve(scores, labels)
    return sum((fpr[i + 1] - fpr[i]) * (tpr[i + 1] + tpr[i]) / 2 for i in range(len(fpr) - 1))


def _average_ranks(x: torch.Tensor) -> torch.Tensor:
    """Ranks 1..n of a 1-D tensor, tied values sharing their mean rank."""
    values, inverse, counts = torch.unique(x, return_inverse=True, return_counts=True)
    first = torch.cumsum(counts, 0) - counts  # rank - 1 of each distinct value's first member
    return (first + (counts + 1) / 2).double()[inverse]


def spearman(a: Sequence[float] | torch.Tensor, b: Sequence[float] | torch.Tensor) -> float:
    """Spearman rank correlation (Pearson correlation of average ranks) of two equal-length sequences."""
    ra = _average_ranks(torch.as_tensor(a, dtype=torch.float64).flatten())
    rb = _average_ranks(torch.as_tensor(b, dtype=torch.float64).flatten())
    ra, rb = ra - ra.mean(), rb - rb.mean()
    return float((ra * rb).sum() / (ra.norm() * rb.norm()).clamp_min(1e-300))


def node_auc(graph: CircuitGraph, truth: GroundTruth) -> float:
    """Node ROC AUC over the graph's nodes of ``truth.node_kinds``."""
    nodes = [n for n in graph.nodes if n.kind in truth.node_kinds]
    return roc_auc([n.score or 0.0 for n in nodes], [n.id in truth.nodes for n in nodes])


def edge_auc(graph: CircuitGraph, truth: GroundTruth) -> float:
    """Edge ROC AUC over every edge of the graph."""
    if truth.edges is None:
        raise InterpError(f"The ground truth {truth.name!r} lists no edges; only node ROC AUC can be computed.")
    return roc_auc([e.score or 0.0 for e in graph.edges], [e.key in truth.edges for e in graph.edges])


@torch.no_grad()
def circuit_metric(model: Any, task: Task, baseline: Baseline, keep: torch.Tensor, batch_size: int = 32
                   ) -> torch.Tensor:
    """Mean metric (K,) of K circuits ``keep`` (K, n_src, n_dst) bool, edges outside each patched from corrupted."""
    cg = ComponentGraph.of(model)
    total = torch.zeros(keep.shape[0], dtype=torch.float64)
    for batch in task_batches(task, baseline, batch_size, model.device):
        corrupted, _ = capture_sources(model, cg, batch.corrupted, batch.corrupted_pos)
        final = patched_logits(model, cg, batch.clean, corrupted, keep, batch.clean_pos)
        total += batch.values(final).view(keep.shape[0], batch.size).sum(1).double().cpu()
    return total / task.n


def faithfulness(model: Any, task: Task, baseline: Baseline, keep: torch.Tensor, batch_size: int = 32
                 ) -> torch.Tensor:
    """(m(C) - m(empty)) / (m(M) - m(empty)) for each circuit of ``keep`` (K, n_src, n_dst); (K,) float64."""
    full, empty = float(baseline.m_clean.mean()), float(baseline.m_corrupted.mean())
    return (circuit_metric(model, task, baseline, keep, batch_size) - empty) / (full - empty)


class Curve(NamedTuple):
    """Faithfulness at circuit sizes, and its MIB areas."""

    fractions: list[float]
    """Circuit sizes as fractions of all edges."""
    n_edges: list[int]
    """Edges kept at each size: ``int(fraction * total)``."""
    faithfulness: list[float]
    """Faithfulness of the top-``n_edges`` circuit."""
    cpr: float
    """Area under the curve over the fraction axis (higher is better)."""
    cmd: float
    """Area between the curve and 1 over the fraction axis (lower is better)."""


def top_edge_masks(cg: ComponentGraph, graph: CircuitGraph, counts: Sequence[int]) -> torch.Tensor:
    """(len(counts), n_src, n_dst) bool: the top ``count`` edges by ``abs(score)`` (ties in edge order)."""
    index = cg.edge_index()
    scores = edge_matrix(cg, graph).abs()[index[:, 0], index[:, 1]]
    order = torch.sort(scores, descending=True, stable=True).indices
    keep = torch.zeros(len(counts), cg.n_src, cg.n_dst, dtype=torch.bool)
    for i, k in enumerate(counts):
        chosen = index[order[:k]]
        keep[i, chosen[:, 0], chosen[:, 1]] = True
    return keep


def faithfulness_curve(model: Any, task: Task, graph: CircuitGraph, baseline: Baseline | None = None,
                       fractions: Sequence[float] = MIB_FRACTIONS, batch_size: int = 32) -> Curve:
    """Faithfulness of the graph's top edges at each fraction of the edge count (one batched forward each batch)."""
    baseline = baseline or check_task(model, task)
    cg = ComponentGraph.of(model)
    counts = [int(f * cg.n_edges) for f in fractions]
    values = faithfulness(model, task, baseline, top_edge_masks(cg, graph, counts), batch_size).tolist()
    xs = list(fractions)
    cpr = sum((xs[i + 1] - xs[i]) * (values[i] + values[i + 1]) / 2 for i in range(len(xs) - 1))
    cmd = sum((xs[i + 1] - xs[i]) * (abs(1 - values[i]) + abs(1 - values[i + 1])) / 2 for i in range(len(xs) - 1))
    return Curve(xs, counts, values, cpr, cmd)


def evaluate_graph(model: Any, task: Task, graph: CircuitGraph, truth: GroundTruth | None = None,
                   baseline: Baseline | None = None, fractions: Sequence[float] = MIB_FRACTIONS,
                   batch_size: int = 32) -> dict[str, Any]:
    """Node / edge ROC AUC (when ``truth`` is given) and the faithfulness curve; also stored in
    ``graph.metadata["evaluation"]``. Returns the JSON-ready dict."""
    curve = faithfulness_curve(model, task, graph, baseline, fractions, batch_size)
    result: dict[str, Any] = {"faithfulness": curve._asdict()}
    if truth is not None:
        result["ground_truth"] = truth.name
        result["node_auc"] = node_auc(graph, truth)
        result["edge_auc"] = edge_auc(graph, truth) if truth.edges is not None else None
    graph.metadata["evaluation"] = result
    return result
