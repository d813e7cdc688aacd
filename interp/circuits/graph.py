"""The circuit graph format: one JSON file per found circuit, written by every method, read by the site.

This module imports neither torch nor the methods, so a reader (the static site, a notebook, issue 12's
attribution graphs) loads a graph cheaply. Files are written atomically through :mod:`interp.io`.

File layout (``schema_version`` 1)::

    {"format": "interp-circuit-graph", "schema_version": 1,
     "metadata": {...},                      # free-form, JSON-ready; keys below are the ones interp writes
     "nodes": [{"id", "kind", "layer", "head", "position", "feature", "label", "score", "in_circuit", "attrs"}, ...],
     "edges": [{"source", "target", "slot", "position", "score", "in_circuit"}, ...]}

Contracts:
- **Node order** is forward (topological) order: a node appears after every node that can write into it.
  For the component graph of a transformer: ``input`` (token + position embeddings), then per layer
  ``a{l}.h0`` .. ``a{l}.h{H-1}`` (attention heads), then ``m{l}`` (the MLP), and last ``logits``.
- **Edge direction** is the direction of computation: ``source`` writes into the residual stream,
  ``target`` reads it. ``slot`` says which input of the target: ``q``, ``k`` or ``v`` for a head, None for
  an MLP or the logits. Every edge's source comes before its target in node order.
- **Scores** are signed floats in the task metric's units (None where a method gives none); importance is
  ``abs(score)``. A node method's edge scores and an edge method's node scores are derived (see
  ``metadata["score_origin"]``).
- ``kind`` is ``embed``, ``head``, ``mlp`` or ``logits`` for component graphs; feature graphs (issue 12) add
  their own kinds (``feature``, ``error``, ``token`` ...) and use ``position`` / ``feature``.
- ``in_circuit`` marks a selected circuit (e.g. ACDC's at one threshold); None when the method only ranks.

Metadata written by interp: ``method``, ``model`` (name, fingerprint, n_layers, n_heads ...), ``task``
(:meth:`Task.metadata`), ``config``, ``runtime_s``, ``peak_memory_mb``, ``score_origin`` (``node`` or
``edge``), ``created_by``, and, after scoring against ground truth, ``evaluation``; attribution graphs add
``dictionaries`` (model layer -> :func:`dictionary_digest` of its transcoder) and may hold ``supernodes``
(:mod:`interp.circuits.supernodes`).
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from interp.errors import InterpError
from interp.io import atomic_write_json, read_json

FORMAT = "interp-circuit-graph"
SCHEMA_VERSION = 1


@dataclass
class Node:
    """One component (or feature) of the graph."""

    id: str
    """Unique within the graph, e.g. ``a1.h2``, ``m0``, ``input``, ``logits``."""
    kind: str
    """``embed``, ``head``, ``mlp``, ``logits`` (component graphs); other kinds for feature graphs."""
    layer: int
    """Block index; -1 for embeddings, ``n_layers`` for the logits."""
    head: int | None = None
    """Head index for ``head`` nodes."""
    position: int | None = None
    """Token position, for position-resolved graphs."""
    feature: int | None = None
    """Dictionary latent index, for feature graphs."""
    label: str = ""
    """Display name, e.g. ``L1H2``."""
    score: float | None = None
    """Signed importance in metric units (see the module docstring)."""
    in_circuit: bool | None = None
    """Whether a selected circuit contains the node."""
    attrs: dict[str, Any] = field(default_factory=dict)
    """Extra JSON-ready facts (e.g. a feature's dictionary path)."""


@dataclass
class Edge:
    """A directed edge: ``source`` writes what ``target`` reads through input ``slot``."""

    source: str
    """Id of the upstream node."""
    target: str
    """Id of the downstream node."""
    slot: str | None = None
    """``q``, ``k``, ``v`` for a head target; None for MLP and logits targets."""
    score: float | None = None
    """Signed importance in metric units."""
    position: int | None = None
    """Token position, for position-resolved graphs."""
    in_circuit: bool | None = None
    """Whether a selected circuit contains the edge."""

    @property
    def key(self) -> str:
        """``source->target<slot>`` (EAP-IG's edge naming; no ``<slot>`` when there is none)."""
        return f"{self.source}->{self.target}" + (f"<{self.slot}>" if self.slot else "")


@dataclass
class CircuitGraph:
    """Nodes in forward order, edges, and metadata. Build with a method; save with :func:`save_graph`."""

    nodes: list[Node]
    """All nodes, in forward (topological) order."""
    edges: list[Edge]
    """All scored edges (the method's whole candidate set, not only a selected circuit)."""
    metadata: dict[str, Any] = field(default_factory=dict)
    """Method, model, task, config, runtime, evaluation ... (JSON-ready)."""

    def __post_init__(self) -> None:
        order = {n.id: i for i, n in enumerate(self.nodes)}
        if len(order) != len(self.nodes):
            raise InterpError("A circuit graph has two nodes with one id.")
        for e in self.edges:
            if e.source not in order or e.target not in order:
                raise InterpError(f"Edge {e.key} names a node the graph does not have.")
            if order[e.source] >= order[e.target]:
                raise InterpError(f"Edge {e.key} runs against node order; nodes must be in forward order.")

    def node(self, node_id: str) -> Node:
        """The node with this id (InterpError if absent)."""
        for n in self.nodes:
            if n.id == node_id:
                return n
        raise InterpError(f"The graph has no node {node_id!r}.")

    def node_scores(self) -> dict[str, float]:
        """id -> score for nodes that have one."""
        return {n.id: n.score for n in self.nodes if n.score is not None}

    def edge_scores(self) -> dict[str, float]:
        """edge key -> score for edges that have one."""
        return {e.key: e.score for e in self.edges if e.score is not None}

    def top_edges(self, k: int) -> list[Edge]:
        """The ``k`` edges of largest ``abs(score)`` (ties in edge order)."""
        scored = [e for e in self.edges if e.score is not None]
        return sorted(scored, key=lambda e: -abs(e.score or 0.0))[: max(k, 0)]

    def to_dict(self) -> dict[str, Any]:
        return {"format": FORMAT, "schema_version": SCHEMA_VERSION, "metadata": self.metadata,
                "nodes": [_compact(asdict(n)) for n in self.nodes], "edges": [_compact(asdict(e)) for e in self.edges]}

    @classmethod
    def from_dict(cls, raw: dict[str, Any], where: str = "graph") -> CircuitGraph:
        if raw.get("format") != FORMAT:
            raise InterpError(f"{where} is not an interp circuit graph (format {raw.get('format')!r}).")
        version = raw.get("schema_version")
        if not isinstance(version, int) or version > SCHEMA_VERSION:
            raise InterpError(f"{where} has schema_version {version!r}; this interp reads up to {SCHEMA_VERSION}. "
                              "Upgrade interp.")
        try:
            nodes = [Node(**n) for n in raw["nodes"]]
            edges = [Edge(**e) for e in raw["edges"]]
        except (KeyError, TypeError) as err:
            raise InterpError(f"{where} has malformed nodes or edges ({err}).") from err
        return cls(nodes, edges, dict(raw.get("metadata", {})))


def _compact(d: dict[str, Any]) -> dict[str, Any]:
    """Drop None/empty optional fields so files stay small; ``from_dict`` restores the defaults."""
    keep = {"id", "kind", "layer", "source", "target", "score"}
    return {k: v for k, v in d.items() if k in keep or v not in (None, "", {})}


def save_graph(graph: CircuitGraph, path: str | Path) -> Path:
    """Write ``graph`` as JSON to ``path`` (a ``.json`` file), atomically; returns the path."""
    path = Path(path)
    atomic_write_json(path, graph.to_dict())
    return path


def load_graph(path: str | Path) -> CircuitGraph:
    """Read a graph written by :func:`save_graph` (InterpError for a missing, malformed or newer file)."""
    return CircuitGraph.from_dict(read_json(path, "circuit graph"), str(path))


def component_nodes(n_layers: int, n_heads: int) -> list[Node]:
    """The nodes of a transformer's component graph, in forward order (scores unset)."""
    nodes = [Node("input", "embed", -1, label="embed")]
    for layer in range(n_layers):
        nodes += [Node(f"a{layer}.h{h}", "head", layer, head=h, label=f"L{layer}H{h}") for h in range(n_heads)]
        nodes.append(Node(f"m{layer}", "mlp", layer, label=f"MLP{layer}"))
    nodes.append(Node("logits", "logits", n_layers, label="logits"))
    return nodes


def parse_node_id(name: str) -> str:
    """Accept ``a1.h2`` / ``L1H2`` / ``m0`` / ``MLP0`` / ``embed`` / ``input`` / ``logits``; return the graph id."""
    text = name.strip()
    if m := re.fullmatch(r"[Ll](\d+)[Hh](\d+)|a(\d+)\.h(\d+)", text):
        layer, head = (m.group(1), m.group(2)) if m.group(1) is not None else (m.group(3), m.group(4))
        return f"a{int(layer)}.h{int(head)}"
    if m := re.fullmatch(r"(?:m|MLP|mlp)(\d+)", text):
        return f"m{int(m.group(1))}"
    if text in ("input", "embed", "embeddings"):
        return "input"
    if text in ("logits", "output"):
        return "logits"
    raise InterpError(f"Cannot read node name {name!r}; use a1.h2 / L1H2 (heads), m0 / MLP0, embed, logits.")


def edge_key(source: str, target: str, slot: str | None) -> str:
    """``source->target<slot>`` with ids normalised by :func:`parse_node_id`."""
    s, t = parse_node_id(source), parse_node_id(target)
    return f"{s}->{t}" + (f"<{slot}>" if slot else "")


def feature_node_order(node: Node) -> tuple[int, bool, int, int]:
    """Sort key that puts an attribution graph's nodes in forward order: by layer (embeddings -1 first, logits
    last), then features before the layer's errors, then position and index. Features of layer L read only what
    layers below L wrote, so every edge runs forward in this order."""
    return node.layer, node.kind == "error", node.position or 0, node.feature or 0


def dictionary_digest(cfg: dict[str, Any]) -> str:
    """A short fingerprint of a dictionary's config (``asdict(dictionary.cfg)``, or a feature store manifest's
    ``dictionary``): an attribution graph records its transcoders' (``metadata["dictionaries"]``), and the site
    links a feature node to a feature store's pages only when the two agree."""
    text = json.dumps(cfg, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]
