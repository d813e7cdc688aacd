"""Circuit graphs on the static site: which graph files to show, their layered layout, and the page data.

The site builder (:mod:`interp.site.build`) writes, for graph ``i`` of a site, ``data/graphs/<i>.js``
assigning :func:`graph_payload` to ``window.INTERP_GRAPH``; ``graph.html?g=<i>`` draws it
(``dashboards/graph.js``) and the index lists :func:`graph_summary` of each (in ``INTERP_META.graphs``).
Graphs are read only through :mod:`interp.circuits.graph` (no torch is imported).

**Layout.** Rows are the model's layers, read bottom to top: the embeddings, then per layer its heads and,
half a step above, its MLP (and any other node kind a layer has, e.g. the features of issue 12's attribution
graphs), last the logits; only rows that hold a node take space. In a graph whose nodes carry token positions
the columns are the positions, and the nodes of one (row, position) cell sit side by side in file order;
otherwise each row is centred and a layer's MLP sits right of its heads. Coordinates are in cells (x: column
units from the left, y: rows from the bottom); the page scales them to pixels.

Why no layout library: the order inside a layer is the model's (head index, token position), which a
reader looks up by eye, so a layered-layout engine's crossing minimisation (dagre, Graphviz ``dot``, ELK)
would scramble heads and positions, and re-running it as the threshold slider hides edges would move nodes
under the reader. With rows and order fixed by the model, what remains is the arithmetic below.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

from interp.circuits.graph import FORMAT, CircuitGraph, Node, load_graph
from interp.circuits.supernodes import graph_key, supernodes_of
from interp.errors import InterpError
from interp.io import read_json

MAX_EDGES = 5000
"""Edges a graph page holds at most (the largest by ``abs(score)``); the page says how many were left out."""

_SUB_ROW = {"embed": 0, "head": 0, "logits": 0}
"""Within one layer, heads come first (sub-row 0); an MLP and any other kind sit half a step above."""


class SiteGraph(NamedTuple):
    """A graph to put on a site and where it came from."""

    graph: CircuitGraph
    """The graph, as read by :func:`interp.circuits.graph.load_graph`."""
    source: str
    """Its file (as given, or found in a given directory); empty for a graph passed as an object."""


def collect_graphs(items: Iterable[CircuitGraph | str | Path]) -> list[SiteGraph]:
    """The graphs of ``items``: graph objects, graph JSON files, and directories searched recursively for graph
    JSON files (other JSON files there, e.g. ``comparison.json``, are skipped; files in sorted path order).

    A named file that is not a graph, a malformed graph, or a directory without graphs is an InterpError.
    """
    out = []
    for item in items:
        if isinstance(item, CircuitGraph):
            out.append(SiteGraph(item, ""))
            continue
        path = Path(item)
        if not path.exists():
            raise InterpError(f"Graph path {path} does not exist.")
        if path.is_file():
            out.append(SiteGraph(load_graph(path), str(path)))
            continue
        found = [p for p in sorted(path.rglob("*.json")) if _is_graph_file(p)]
        if not found:
            raise InterpError(f"No circuit graph (JSON with format {FORMAT!r}) under {path}; write one with "
                              "`interp circuit METHOD --out DIR` or interp.save_graph.")
        out += [SiteGraph(load_graph(p), str(p)) for p in found]
    return out


def _is_graph_file(path: Path) -> bool:
    try:
        raw = read_json(path, "JSON file")
    except InterpError:
        return False
    return isinstance(raw, dict) and raw.get("format") == FORMAT


def _row_key(node: Node) -> tuple[int, int]:
    return node.layer, _SUB_ROW.get(node.kind, 1)


def layout(graph: CircuitGraph) -> tuple[list[tuple[float, float]], dict[str, Any]]:
    """Cell coordinates ``(x, y)`` of each node (in node order) and the grid: ``width`` and ``height`` in cells,
    ``rows`` (one label per row, bottom first) and ``columns`` (token positions, empty when there are none)."""
    rows = sorted({_row_key(n) for n in graph.nodes})
    row_of = {key: r for r, key in enumerate(rows)}
    positions = sorted({n.position for n in graph.nodes if n.position is not None})
    cells: dict[tuple[int, int | None], list[int]] = {}
    for i, n in enumerate(graph.nodes):
        cells.setdefault((row_of[_row_key(n)], n.position if positions else None), []).append(i)
    coords: list[tuple[float, float]] = [(0.0, 0.0)] * len(graph.nodes)
    if positions:
        widths = [max(len(ids) for (_, p), ids in cells.items() if p == pos) for pos in positions]
        starts = [sum(widths[:c]) for c in range(len(positions))]
        width = float(sum(widths))
        column = dict(zip(positions, zip(starts, widths)))
        for (r, pos), ids in cells.items():
            start, w = column[pos] if pos is not None else (0.0, width)
            for k, i in enumerate(ids):
                coords[i] = (start + (w - len(ids)) / 2 + k + 0.5, float(r))
    else:
        side = [i for (r, _), ids in cells.items() for i in ids if _is_side(graph, ids)]
        width = float(max((len(ids) for ids in cells.values() if ids[0] not in side), default=1))
        for (r, _), ids in cells.items():
            for k, i in enumerate(ids):
                left = width if i in side else (width - len(ids)) / 2
                coords[i] = (left + k + 0.5, float(r))
        width += 1.0 if side else 0.0
    grid = {"width": max(width, 1.0), "height": float(len(rows)), "rows": [_row_label(k, graph) for k in rows],
            "columns": positions}
    return coords, grid


def _is_side(graph: CircuitGraph, ids: Sequence[int]) -> bool:
    """A row holding only MLPs goes right of the heads (edges between layers then pass beside it)."""
    return all(graph.nodes[i].kind == "mlp" for i in ids)


def _row_label(key: tuple[int, int], graph: CircuitGraph) -> str:
    layer = key[0]
    kinds = {n.kind for n in graph.nodes if _row_key(n) == key}
    if kinds <= {"embed"} or layer < 0:
        return "embed"
    if kinds <= {"logits"}:
        return "logits"
    if kinds <= {"head"}:
        return f"L{layer} attn"
    if kinds <= {"mlp"}:
        return f"L{layer} mlp"
    return f"L{layer} {kinds.pop()}" if len(kinds) == 1 else f"L{layer}"


def _finite(x: Any) -> float | None:
    """``x`` if it is a finite number, else None."""
    return x if isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) else None


def _json_ready(obj: Any) -> Any:
    """``obj`` with every non-finite float replaced by None (the site's JSON has no NaN)."""
    if isinstance(obj, float):
        return _finite(obj)
    if isinstance(obj, dict):
        return {k: _json_ready(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_ready(v) for v in obj]
    return obj


def graph_title(sg: SiteGraph) -> str:
    """``method · task`` from the metadata, else the file name."""
    meta = sg.graph.metadata
    task = meta.get("task") or {}
    parts = [str(meta.get("method") or ""), str(task.get("name") or "") if isinstance(task, dict) else str(task)]
    title = " \u00b7 ".join(p for p in parts if p)
    return title or (Path(sg.source).stem if sg.source else "graph")


def graph_summary(index: int, sg: SiteGraph) -> dict[str, Any]:
    """One row of the site's list of graphs (``INTERP_META.graphs``)."""
    meta = sg.graph.metadata
    ev = meta.get("evaluation") or {}
    model = meta.get("model") or {}
    faith = ev.get("faithfulness") or {}
    return _json_ready({
        "id": index,
        "title": graph_title(sg),
        "source": sg.source,
        "model": model.get("name") if isinstance(model, dict) else str(model),
        "n_nodes": len(sg.graph.nodes),
        "n_edges": len(sg.graph.edges),
        "node_auc": _finite(ev.get("node_auc")),
        "edge_auc": _finite(ev.get("edge_auc")),
        "cpr": _finite(faith.get("cpr")),
        "runtime_s": _finite(meta.get("runtime_s")),
    })


def graph_payload(sg: SiteGraph, max_edges: int = MAX_EDGES, pages: Mapping[str, tuple[int, int]] | None = None
                  ) -> dict[str, Any]:
    """What ``graph.html`` draws (``window.INTERP_GRAPH``).

    ``nodes``: every node's fields plus its cell coordinates ``x``, ``y`` and, for the ids in ``pages`` (node id ->
    (store, feature), :func:`interp.site.feature_links.site_links`), ``page`` (the feature page it links to) and,
    when that page is not in the site's first feature store, ``store``; non-finite scores become None.
    ``key``: :func:`~interp.circuits.supernodes.graph_key`; ``supernodes``: the graph's grouping (the view starts
    from it).
    ``edges``: the ``max_edges`` edges of largest ``abs(score)``, in that order (ties in file order), each
    ``{"s": source node index, "t": target node index, "slot", "score", "position", "in_circuit"}``; edges
    whose score is None, 0 or not finite are left out (``n_unscored`` counts them).
    """
    graph = sg.graph
    coords, grid = layout(graph)
    index = {n.id: i for i, n in enumerate(graph.nodes)}
    nodes = []
    for n, (x, y) in zip(graph.nodes, coords):
        nodes.append({"id": n.id, "kind": n.kind, "layer": n.layer, "head": n.head, "position": n.position,
                      "feature": n.feature, "label": n.label or n.id, "score": _finite(n.score),
                      "in_circuit": n.in_circuit, "attrs": n.attrs, "x": x, "y": y})
        if pages and n.id in pages:
            store, nodes[-1]["page"] = pages[n.id]
            if store:
                nodes[-1]["store"] = store
    scored = [e for e in graph.edges if _finite(e.score)]
    ranked = sorted(range(len(scored)), key=lambda k: -abs(scored[k].score or 0.0))[: max(max_edges, 0)]
    edges = [{"s": index[e.source], "t": index[e.target], "slot": e.slot, "score": e.score, "position": e.position,
              "in_circuit": e.in_circuit} for e in (scored[k] for k in ranked)]
    return _json_ready({
        "title": graph_title(sg),
        "source": sg.source,
        "key": graph_key(graph),
        "supernodes": [sn.to_dict() for sn in supernodes_of(graph)],
        "metadata": graph.metadata,
        "nodes": nodes,
        "edges": edges,
        "n_edges": len(graph.edges),
        "n_unscored": len(graph.edges) - len(scored),
        "grid": grid,
    })


def graphs_only_meta(graphs: Sequence[SiteGraph]) -> dict[str, Any]:
    """``INTERP_META`` of a site that has graphs and no feature store."""
    models = [(sg.graph.metadata.get("model") or {}) for sg in graphs]
    names = sorted({str(m.get("name")) for m in models if isinstance(m, dict) and m.get("name")})
    return {"has_features": False, "n_features": 0, "n_index_chunks": 0, "model_name": ", ".join(names) or "?",
            "hook": None, "served": False}
