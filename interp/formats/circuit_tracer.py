"""circuit-tracer's graph JSON (what its viewer and Neuronpedia open), to and from interp's attribution graphs.

A circuit-tracer graph file (``<slug>.json``, schema_version 1, as written by ``create_graph_files`` in
circuit-tracer 0.5) holds ``metadata`` (slug, scan, transcoder_list, prompt_tokens, prompt, node_threshold,
schema_version), ``qParams`` (the viewer's pinned nodes, supernodes, link type, clicked node, subgraph positions;
interp writes the graph's supernodes there and reads them back, see :mod:`interp.circuits.supernodes`),
``nodes`` and ``links`` (``{source, target, weight}``); ``graph-metadata.json`` beside it lists every graph's
metadata (``{"graphs": [...]}``). Node ids and kinds:

=============  ==========================  ===========================  ==========================
interp kind    interp id                   circuit-tracer ``node_id``   ``feature_type``
=============  ==========================  ===========================  ==========================
``feature``    ``f{L}.{i}@{t}``            ``{L}_{i}_{t}``              ``cross layer transcoder``
``error``      ``err{L}@{t}``              ``0_{L}_{t}``                ``mlp reconstruction error``
``token``      ``embed@{t}``               ``E_{token id}_{t}``         ``embedding``
``logit``      ``logit{token id}@{t}``     ``{n_layers + 1}_{id}_{t}``  ``logit``
=============  ==========================  ===========================  ==========================

A feature's ``feature`` field is the Cantor pairing of (layer, index), as circuit-tracer writes it; ``influence`` is
the node's cumulative influence share (the viewer's pruning scale). This module reads and writes JSON only (no
torch).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from interp.circuits.graph import CircuitGraph, Edge, Node, feature_node_order
from interp.circuits.supernodes import Supernode, group_nodes, supernodes_of
from interp.errors import InterpError
from interp.io import atomic_write_json, read_json

SCHEMA_VERSION = 1
INDEX = "graph-metadata.json"
_TYPES = {"feature": "cross layer transcoder", "error": "mlp reconstruction error", "token": "embedding",
          "logit": "logit"}


def cantor(a: int, b: int) -> int:
    """The Cantor pairing of two naturals (circuit-tracer's feature id of (layer, index))."""
    return (a + b) * (a + b + 1) // 2 + b


def _ct_node(node: Node, n_layers: int, target: bool) -> dict[str, Any]:
    """One interp node as a circuit-tracer node (fields and ids as circuit-tracer's ``Node`` builders make them)."""
    pos = int(node.position or 0)
    prob, clerp = 0.0, ""
    if node.kind == "feature":
        index = int(node.feature or 0)
        node_id, layer, feature, js = f"{node.layer}_{index}_{pos}", str(node.layer), cantor(node.layer, index), \
            f"{node.layer}_{index}-0"
    elif node.kind == "error":
        node_id, layer, feature, js = f"0_{node.layer}_{pos}", str(node.layer), -1, f"{node.layer}_{pos}-0"
    elif node.kind == "token":
        tok = int(node.attrs["token"])
        node_id, layer, feature, js = f"E_{tok}_{pos}", "E", pos, f"E_{tok}-{pos}"
    elif node.kind == "logit":
        tok = int(node.attrs["token"])
        prob = float(node.attrs.get("probability", 0.0))
        node_id, layer, feature, js = f"{n_layers + 1}_{tok}_{pos}", str(n_layers + 1), tok, f"L_{tok}-{pos}"
        clerp = f'Output "{node.label}" (p={prob:.3f})'
    else:
        raise InterpError(f"Node {node.id} has kind {node.kind!r}; circuit-tracer graphs hold features, errors, "
                          "embeddings and logits (export an attribution graph).")
    return {"node_id": node_id, "feature": feature, "layer": layer, "ctx_idx": pos,
            "feature_type": _TYPES[node.kind], "token_prob": prob, "is_target_logit": target, "run_idx": 0,
            "reverse_ctx_idx": 0, "jsNodeId": js, "clerp": clerp,
            "influence": node.attrs.get("cumulative_influence"), "activation": node.attrs.get("activation")}


def to_circuit_tracer(graph: CircuitGraph, slug: str, scan: str | None = None) -> dict[str, Any]:
    """The circuit-tracer graph JSON of an interp attribution graph (kept nodes and edges)."""
    meta = graph.metadata
    if meta.get("method") != "attribution-graph":
        raise InterpError(f"Only attribution graphs export to circuit-tracer (this one is {meta.get('method')!r}).")
    n_layers = int(meta["model"]["n_layers"])
    logits = [n for n in graph.nodes if n.kind == "logit"]
    first = max(logits, key=lambda n: n.attrs.get("probability", 0.0)).id if logits else None
    nodes = {n.id: _ct_node(n, n_layers, n.id == first) for n in graph.nodes}
    links = [{"source": nodes[e.source]["node_id"], "target": nodes[e.target]["node_id"], "weight": e.score}
             for e in graph.edges]
    tokens = meta.get("prompt_tokens", [])
    config = meta.get("config", {})
    metadata = {"slug": slug, "scan": scan or f"interp-{meta['model']['name']}",
                "transcoder_list": list(meta.get("transcoders", [])), "prompt_tokens": tokens,
                "prompt": config.get("prompt", "".join(tokens)), "node_threshold": config.get("node_threshold"),
                "schema_version": SCHEMA_VERSION}
    return {"metadata": metadata, "qParams": _qparams(graph, nodes), "nodes": list(nodes.values()), "links": links}


def _qparams(graph: CircuitGraph, nodes: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The viewer state: an imported graph's (``metadata["qParams"]``) with the graph's supernodes in circuit-tracer's
    form (``[name, node_id, ...]``); their members are pinned, as the viewer draws only pinned nodes' groups."""
    kept = graph.metadata["qParams"] if isinstance(graph.metadata.get("qParams"), dict) else {}
    qparams = {"pinnedIds": [], "supernodes": [], "linkType": "both", "clickedId": "", "sg_pos": "", **kept}
    groups = supernodes_of(graph)
    if groups or "supernodes" in graph.metadata:
        qparams["supernodes"] = [[sn.name, *(nodes[m]["node_id"] for m in sn.members)] for sn in groups]
        pinned = list(qparams["pinnedIds"])
        pinned += [i for sn in qparams["supernodes"] for i in sn[1:] if i not in pinned]
        qparams["pinnedIds"] = pinned
    return qparams


def export_circuit_tracer(graph: CircuitGraph, out_dir: str | Path, slug: str, scan: str | None = None) -> Path:
    """Write ``out_dir/<slug>.json`` and add (or replace) its entry in ``out_dir/graph-metadata.json``; returns the
    graph file's path. Both writes are atomic."""
    if not re.fullmatch(r"[A-Za-z0-9_.-]+", slug):
        raise InterpError(f"Slug {slug!r} must be letters, digits, '.', '_' or '-' (it names the file).")
    out = Path(out_dir)
    data = to_circuit_tracer(graph, slug, scan)
    path = out / f"{slug}.json"
    atomic_write_json(path, data)
    index_path = out / INDEX
    index = read_json(index_path, "graph index") if index_path.exists() else {"graphs": []}
    graphs = [g for g in index.get("graphs", []) if g.get("slug") != slug] + [data["metadata"]]
    atomic_write_json(index_path, {"graphs": graphs})
    return path


def _interp_node(raw: dict[str, Any]) -> Node:
    kind = {v: k for k, v in _TYPES.items()}.get(raw.get("feature_type", ""))
    if kind is None and raw.get("feature_type") in ("transcoder", "per layer transcoder"):
        kind = "feature"
    node_id, pos = str(raw["node_id"]), int(raw.get("ctx_idx", 0))
    parts = node_id.split("_")
    attrs: dict[str, Any] = {"circuit_tracer_id": node_id, "cumulative_influence": raw.get("influence")}
    score = raw.get("influence")
    if kind == "feature":
        layer, index = int(parts[0]), int(parts[1])
        attrs["activation"] = raw.get("activation")
        return Node(f"f{layer}.{index}@{pos}", "feature", layer, position=pos, feature=index,
                    label=raw.get("clerp") or f"L{layer} F{index} @{pos}", score=score, in_circuit=True, attrs=attrs)
    if kind == "error":
        layer = int(parts[1])
        return Node(f"err{layer}@{pos}", "error", layer, position=pos, label=f"err L{layer} @{pos}", score=score,
                    in_circuit=True, attrs=attrs)
    if kind == "token":
        attrs["token"] = int(parts[1])
        return Node(f"embed@{pos}", "token", -1, position=pos, label=raw.get("clerp", ""), score=score,
                    in_circuit=True, attrs=attrs)
    if kind == "logit":
        tok = int(parts[1])
        attrs.update(token=tok, probability=raw.get("token_prob"))
        return Node(f"logit{tok}@{pos}", "logit", int(parts[0]) - 1, position=pos, feature=tok,
                    label=raw.get("clerp", ""), score=score, in_circuit=True, attrs=attrs)
    raise InterpError(f"circuit-tracer node {node_id} has feature_type {raw.get('feature_type')!r}, which interp "
                      "does not know.")


def from_circuit_tracer(data: dict[str, Any], where: str = "circuit-tracer graph") -> CircuitGraph:
    """An interp :class:`CircuitGraph` from circuit-tracer graph JSON (nodes re-ided as in the module table, the
    original id kept in ``attrs['circuit_tracer_id']``; edges scored by their weight)."""
    try:
        raw_nodes, raw_links, meta = data["nodes"], data["links"], data["metadata"]
        nodes = [_interp_node(n) for n in raw_nodes]
        by_id = {n.attrs["circuit_tracer_id"]: n.id for n in nodes}
        edges = [Edge(by_id[link["source"]], by_id[link["target"]], score=float(link["weight"]), in_circuit=True)
                 for link in raw_links]
    except (KeyError, TypeError, ValueError, IndexError) as err:
        raise InterpError(f"{where} is not a circuit-tracer graph file ({type(err).__name__}: {err}).") from err
    nodes.sort(key=feature_node_order)
    logits = [n.layer for n in nodes if n.kind == "logit"]
    qparams = data["qParams"] if isinstance(data.get("qParams"), dict) else {}
    metadata = {"method": "attribution-graph", "imported_from": "circuit-tracer", "circuit_tracer": meta,
                "qParams": qparams, "prompt_tokens": meta.get("prompt_tokens", []),
                "model": {"name": meta.get("scan", ""), "n_layers": logits[0] if logits else None},
                "config": {"prompt": meta.get("prompt", ""), "node_threshold": meta.get("node_threshold")}}
    graph = CircuitGraph(nodes, edges, metadata)
    return group_nodes(graph, _imported_supernodes(qparams.get("supernodes"), by_id, where), where)


def _imported_supernodes(raw: Any, by_id: dict[str, str], where: str) -> list[Supernode]:
    """circuit-tracer's ``qParams.supernodes`` (``[[name, node_id, ...], ...]``) in interp's node ids; members the
    graph lacks are dropped, as circuit-tracer's viewer drops them, and so are groups left empty; a node in two groups
stays in the first (interp's groups do not overlap)."""
    if raw is None:
        return []
    if not isinstance(raw, list) or not all(isinstance(s, list) and s and all(isinstance(x, str) for x in s)
                                            for s in raw):
        raise InterpError(f"{where}: qParams.supernodes must be a list of [name, node_id, ...] lists.")
    seen: set[str] = set()
    out = []
    for name, *ids in raw:
        members = [by_id[i] for i in ids if i in by_id and by_id[i] not in seen]
        seen.update(members)
        if members:
            out.append(Supernode(name or "supernode", tuple(members)))
    return out


def import_circuit_tracer(path: str | Path) -> CircuitGraph:
    """Read a circuit-tracer graph file (``<slug>.json``) into an interp graph."""
    return from_circuit_tracer(read_json(path, "circuit-tracer graph"), str(path))
