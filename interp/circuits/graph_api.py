"""One call from a prompt to a pruned attribution graph: :class:`AttributionGraphConfig` (the flags of
``interp circuit attribution-graph``) and :func:`attribution_graph`.

Feature rows are computed in the order of their influence on the logits, estimated from the rows computed so far
(circuit-tracer's scheme): the logit rows first, then, batch by batch, the unvisited active features of largest
estimated influence, until ``max_feature_nodes`` rows exist or no unvisited feature has influence. The graph keeps
those features (the others are dropped with their edges), every error and embedding node and the logits, then is
pruned by influence (:func:`interp.circuits.influence.prune`).

Memory is linear in the prompt length for a fixed ``max_feature_nodes``: the adjacency is (rows x sources); the
trace runs on the module path's fused attention and keeps no attention pattern (the rows recompute them a block of
query positions at a time, from the residual stream or, on rotary models, the rotated queries and keys); a pass
holds a few (row batch x positions x d_model) buffers. Only the passes' time is quadratic (``A^T`` per head).
Models the module path does not run are traced on the bridge, whose eager attention forms n_heads x P x P patterns
per layer (which the trace keeps on rotary models). Measured by ``bench/attribution_memory.py`` (docs/benchmarks.md).
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import NamedTuple

import torch
from tqdm.auto import tqdm

from interp.circuits.attribution import Linearised, Nodes, Rows, Target, active_nodes
from interp.circuits.decompose import Component
from interp.circuits.graph import CircuitGraph, Edge, Node, dictionary_digest, feature_node_order, save_graph
from interp.circuits.influence import Pruned, Scores, graph_scores, influence, normalize, prune
from interp.circuits.replacement import Trace, TranscoderSet, trace
from interp.configs import config_to_dict
from interp.errors import InterpError
from interp.model import Model

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class AttributionGraphConfig:
    """Which logits to explain, how many feature rows to compute, and how hard to prune."""

    prompt: str = ""
    """The prompt (BOS is prepended)."""
    max_n_logits: int = 10
    """Explain at most this many of the most probable next tokens."""
    desired_logit_prob: float = 0.95
    """... and no more than needed to reach this cumulative probability."""
    max_feature_nodes: int = 1024
    """Feature rows to compute (one backward row each), most influential first."""
    row_batch_size: int = 32
    """Target rows per transposed pass."""
    node_threshold: float = 0.8
    """Keep the nodes holding this share of the influence on the logits, in (0, 1]."""
    edge_threshold: float = 0.98
    """Keep the edges holding this share of the edge influence, in (0, 1]."""
    demean_logits: bool = True
    """Logit targets are the logit minus the mean logit over the vocabulary (as circuit-tracer)."""

    def __post_init__(self) -> None:
        if not self.prompt:
            raise InterpError("Give a prompt to explain (--prompt).")
        for name in ("node_threshold", "edge_threshold", "desired_logit_prob"):
            value = getattr(self, name)
            if not 0 < value <= 1:
                raise InterpError(f"{name} must be in (0, 1]; got {value}.")
        if self.max_n_logits < 1 or self.row_batch_size < 1 or self.max_feature_nodes < 0:
            raise InterpError("max_n_logits and row_batch_size must be >= 1 and max_feature_nodes >= 0.")


class AttributionGraph(NamedTuple):
    """What :func:`attribution_graph` computed."""

    trace: Trace
    nodes: Nodes
    """Every node of the prompt (all active features, before selection)."""
    selected: torch.Tensor
    """(n_selected,) indices into ``nodes.features`` of the features with rows, sorted."""
    rows: Rows
    """Adjacency rows of the selected features, then of the logits, over the graph's sources."""
    pruned: Pruned
    scores: Scores
    """Scores of the unpruned graph (selected features, errors, embeddings, logits)."""
    graph: CircuitGraph
    """The pruned graph (kept nodes and edges; node and edge scores as in the module docstring)."""


def _targets(nodes: Nodes, which: torch.Tensor) -> list[Target]:
    return [Target("feature", int(l), int(p), int(f)) for l, p, f in nodes.features[which]]


def _compute_rows(engine: Linearised, targets: list[Target], row_batch_size: int, bar: tqdm) -> Rows:
    """Rows of ``targets`` in their order, batched by position so that each pass runs on few positions."""
    order = sorted(range(len(targets)), key=lambda i: targets[i].position)
    parts: list[tuple[list[int], Rows]] = []
    for i in range(0, len(order), row_batch_size):
        idx = order[i : i + row_batch_size]
        parts.append((idx, engine.rows([targets[j] for j in idx])))
        bar.update(len(idx))
    edges = torch.zeros(len(targets), engine.nodes.n_sources)
    bias, values = torch.zeros(len(targets)), torch.zeros(len(targets))
    for idx, r in parts:
        edges[idx], bias[idx], values[idx] = r.edges, r.bias, r.values
    return Rows(edges, bias, values)


def select_features(engine: Linearised, cfg: AttributionGraphConfig) -> tuple[torch.Tensor, Rows, Rows]:
    """(selected feature indices (sorted), their rows (same order), the logit rows)."""
    nodes = engine.nodes
    P, n_f = nodes.n_positions, nodes.n_features
    logits = [Target("logit", engine.tr.n_layers, P - 1, int(t)) for t in nodes.logit_tokens]
    seed = torch.zeros(nodes.n_nodes)
    seed[nodes.n_sources :] = nodes.logit_probs
    budget = min(cfg.max_feature_nodes, n_f)
    with tqdm(total=len(logits) + budget, desc="attribution rows", unit="row", disable=None) as bar:
        logit_rows = _compute_rows(engine, logits, cfg.row_batch_size, bar)
        visited = torch.zeros(n_f, dtype=torch.bool)
        chosen: list[torch.Tensor] = []
        feature_rows: list[Rows] = []
        while int(visited.sum()) < budget:
            A = torch.cat([logit_rows.edges, *[r.edges for r in feature_rows]])
            rows = torch.cat([torch.arange(nodes.n_sources, nodes.n_nodes), *chosen])
            estimate = influence(normalize(A), rows, seed)[:n_f].masked_fill(visited, -1.0)
            k = min(cfg.row_batch_size * 4, budget - int(visited.sum()))
            top = estimate.topk(k)
            pick = top.indices[top.values > 0]
            if not len(pick):
                break
            visited[pick] = True
            chosen.append(pick)
            feature_rows.append(_compute_rows(engine, _targets(nodes, pick), cfg.row_batch_size, bar))
    if not chosen:
        return torch.zeros(0, dtype=torch.long), Rows(torch.zeros(0, nodes.n_sources), torch.zeros(0),
                                                      torch.zeros(0)), logit_rows
    picked = torch.cat(chosen)
    order = picked.argsort()
    merged = Rows(*(torch.cat(parts)[order] for parts in zip(*feature_rows)))
    return picked[order], merged, logit_rows


def attribution_graph(model: Model, transcoders: TranscoderSet, cfg: AttributionGraphConfig,
                      tokens: torch.Tensor | None = None) -> AttributionGraph:
    """Trace ``cfg.prompt`` (or the token ids ``tokens`` (P,), BOS included, when given), compute the rows of the
    logits and the most influential features, prune, and build the graph (InterpError for transcoders of another
    model, a wrong hook pair, or a prompt longer than the context)."""
    started = time.perf_counter()
    if transcoders.model.info.fingerprint != model.info.fingerprint:
        raise InterpError("These transcoders were loaded for another model; load them with this one.")
    prompt = cfg.prompt if tokens is None else tokens
    tr = trace(model, prompt, transcoders, patterns=not _recomputes_patterns(model))
    nodes = active_nodes(model, tr, cfg.max_n_logits, cfg.desired_logit_prob)
    engine = Linearised(model, tr, nodes, demean=cfg.demean_logits)
    selected, feature_rows, logit_rows = select_features(engine, cfg)
    # the graph's columns: selected features, errors, embeddings (unselected features are dropped)
    cols = torch.cat([selected, torch.arange(nodes.n_features, nodes.n_sources)])
    A = torch.cat([feature_rows.edges, logit_rows.edges])[:, cols]
    n_sel, n_src = len(selected), len(cols)
    rows = torch.cat([torch.arange(n_sel), torch.arange(n_src, n_src + len(nodes.logit_tokens))])
    seed = torch.zeros(n_src + len(nodes.logit_tokens))
    seed[n_src:] = nodes.logit_probs
    errors = slice(n_sel, n_sel + len(nodes.error_layers) * nodes.n_positions)
    n_kept = nodes.n_positions + len(nodes.logit_tokens)
    scores = graph_scores(A, rows, seed, errors, slice(errors.stop, n_src))
    pruned = prune(A, rows, seed, n_sel, n_kept, cfg.node_threshold, cfg.edge_threshold)
    all_rows = Rows(*(torch.cat(pair) for pair in zip(feature_rows, logit_rows)))
    graph = _to_graph(model, tr, nodes, selected, A, all_rows, pruned)
    pruned_scores = graph_scores(A * pruned.edge_mask, rows, seed, errors, slice(errors.stop, n_src))
    graph.metadata.update(
        config=config_to_dict(cfg), runtime_s=time.perf_counter() - started,
        transcoders=sorted({str(transcoders.dictionary(layer).cfg.hook_in) for layer in transcoders.layers}),
        dictionaries={str(layer): dictionary_digest(asdict(transcoders.dictionary(layer).cfg))
                      for layer in transcoders.layers},
        replacement_score=scores.replacement, completeness_score=scores.completeness,
        pruned_replacement_score=pruned_scores.replacement, pruned_completeness_score=pruned_scores.completeness,
        n_active_features=nodes.n_features, n_feature_rows=n_sel, n_backward_rows=n_sel + len(nodes.logit_tokens),
    )
    log.info("attribution graph: %d active features, %d rows, %d nodes and %d edges kept, replacement %.3f, "
             "completeness %.3f", nodes.n_features, n_sel, len(graph.nodes), len(graph.edges), scores.replacement,
             scores.completeness)
    return AttributionGraph(tr, nodes, selected, all_rows, pruned, scores, graph)


def _recomputes_patterns(model: Model) -> bool:
    """True when the rows can recompute attention patterns a block at a time (the trace then keeps none): learned
    position embeddings, or a rotary model whose rotated queries and keys the module path captures."""
    return model.W_pos is not None or model.capture_path(["blocks.0.attn.hook_rot_q"]) == "modules"


def _node_table(model: Model, tr: Trace, nodes: Nodes, selected: torch.Tensor) -> list[Node]:
    """Every node of the graph in graph order (selected features, errors, embeddings, logits), unscored."""
    tc = tr.transcoders
    assert tc is not None
    out = []
    for i in selected.tolist():
        layer, pos, f = (int(v) for v in nodes.features[i])
        out.append(Node(Component("feature", layer, pos, f).id, "feature", layer, position=pos, feature=f,
                        label=f"L{layer} F{f} @{pos}",
                        attrs={"activation": float(nodes.activations[i]), "latent": tc.latent(layer, f)}))
    covered = set(tc.layers)
    for layer in nodes.error_layers:
        kind = "error" if layer in covered else "mlp"
        out += [Node(Component("error", layer, p).id, "error", layer, position=p, label=f"err L{layer} @{p}",
                     attrs={"of": kind}) for p in range(nodes.n_positions)]
    strings = model.token_strings(nodes.tokens)
    out += [Node(Component("embed", -1, p).id, "token", -1, position=p, label=strings[p],
                 attrs={"token": int(nodes.tokens[p])}) for p in range(nodes.n_positions)]
    P = nodes.n_positions
    for tok, prob in zip(nodes.logit_tokens.tolist(), nodes.logit_probs.tolist()):
        out.append(Node(Component("logit", tr.n_layers, P - 1, tok).id, "logit", tr.n_layers, position=P - 1,
                        feature=tok, label=model.token_strings([tok])[0], attrs={"token": tok, "probability": prob}))
    return out


def _to_graph(model: Model, tr: Trace, nodes: Nodes, selected: torch.Tensor, A: torch.Tensor, rows: Rows,
              pruned: Pruned) -> CircuitGraph:
    """The kept nodes (forward order) and edges; a target's attrs hold its ``value``, ``bias`` and ``rest`` (the
    edges from dropped or pruned sources), so that kept incoming edges + bias + rest = value."""
    table = _node_table(model, tr, nodes, selected)
    n_sel = len(selected)
    row_of = {i: r for r, i in enumerate(range(n_sel))}
    row_of.update({len(table) - len(nodes.logit_tokens) + k: n_sel + k for k in range(len(nodes.logit_tokens))})
    keep = pruned.node_mask.tolist()
    for i, node in enumerate(table):
        node.score, node.in_circuit = float(pruned.influence[i]), bool(keep[i])
        node.attrs["cumulative_influence"] = float(pruned.cumulative[i])
    edges: list[Edge] = []
    for i, r in row_of.items():
        if not keep[i]:
            continue
        src = pruned.edge_mask[r].nonzero().flatten().tolist()
        kept = float(A[r, src].sum())
        total = float(rows.values[r])
        table[i].attrs.update(value=total, bias=float(rows.bias[r]), rest=total - float(rows.bias[r]) - kept)
        edges += [Edge(table[c].id, table[i].id, score=float(A[r, c]), position=table[c].position, in_circuit=True)
                  for c in src]
    kept_nodes = [n for n, k in zip(table, keep) if k]
    kept_nodes.sort(key=feature_node_order)
    meta = {"method": "attribution-graph", "prompt_tokens": model.token_strings(nodes.tokens),
            "tokens": nodes.tokens.tolist(), "model": {"name": model.info.name, "fingerprint": model.info.fingerprint,
                                                       "n_layers": tr.n_layers}}
    return CircuitGraph(kept_nodes, edges, meta)


def save_attribution_graph(result: AttributionGraph, out_dir: str | Path) -> Path:
    """Write ``graph.json`` into ``out_dir`` (atomically); returns its path."""
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    return save_graph(result.graph, Path(out_dir) / "graph.json")
