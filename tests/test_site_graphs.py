"""Circuit graphs on the static site without a browser: which files are graphs, the layered layout, the page
data (strongest edges first, capped, no NaN), graph-only and combined sites, and ``interp dashboard --graphs``."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from cli.main import main
from interp.circuits.graph import CircuitGraph, Edge, Node, component_nodes, save_graph
from interp.errors import InterpError
from interp.features import AnalyzeConfig
from interp.site.build import build_dashboard
from interp.site.graphs import SiteGraph, collect_graphs, graph_payload, layout


def _component_graph(n_layers: int = 2, n_heads: int = 3) -> CircuitGraph:
    nodes = component_nodes(n_layers, n_heads)
    ids = [n.id for n in nodes]
    edges = []
    for i, source in enumerate(ids[:-1]):
        for target in ids[i + 1 :]:
            slots = ("q", "k", "v") if target.startswith("a") else (None,)
            edges += [Edge(source, target, slot, score=(-1) ** len(edges) * (len(edges) % 7) / 7) for slot in slots]
    for n in nodes:
        n.score = 0.5 if n.kind == "head" else None
    return CircuitGraph(nodes, edges, {"method": "eap", "task": {"name": "induction"}, "model": {"name": "m"}})


def _js(path: Path, name: str) -> dict:
    text = path.read_text()
    prefix = f"window.{name} = "
    assert text.startswith(prefix) and text.endswith(";\n")
    return json.loads(text[len(prefix) : -2])


def test_component_layout_rows_by_layer_heads_in_order_mlp_beside():
    graph = _component_graph(n_layers=3, n_heads=4)
    coords, grid = layout(graph)
    at = {n.id: xy for n, xy in zip(graph.nodes, coords)}
    assert grid["rows"] == ["embed", "L0 attn", "L0 mlp", "L1 attn", "L1 mlp", "L2 attn", "L2 mlp", "logits"]
    assert grid["columns"] == [] and grid["height"] == 8
    for layer in range(3):
        xs = [at[f"a{layer}.h{h}"][0] for h in range(4)]
        assert xs == sorted(xs) and len(set(xs)) == 4  # heads in index order, one column each
        assert {at[f"a{layer}.h{h}"][1] for h in range(4)} == {1 + 2 * layer}
        assert at[f"m{layer}"][1] == 2 + 2 * layer and at[f"m{layer}"][0] > max(xs)  # MLP right of its heads
    assert at["input"][1] == 0 and at["logits"][1] == 7
    assert at["input"][0] == at["logits"][0] == pytest.approx(2.0)  # centred over the heads
    assert grid["width"] == 5  # four heads and the MLP column


def test_position_resolved_layout_columns_are_positions():
    nodes = [Node(f"t{p}", "embed", -1, position=p) for p in range(3)]
    nodes += [Node(f"f{p}.{k}", "feature", 0, position=p, feature=k) for p in range(3) for k in range(p + 1)]
    nodes += [Node("out", "logits", 1)]
    graph = CircuitGraph(nodes, [Edge("t0", "f2.1", score=1.0), Edge("f2.1", "out", score=-2.0)])
    coords, grid = layout(graph)
    at = {n.id: xy for n, xy in zip(graph.nodes, coords)}
    assert grid["columns"] == [0, 1, 2] and grid["width"] == 6 and grid["rows"] == ["embed", "L0 feature", "logits"]
    # Position p's column is as wide as its fullest cell; its nodes sit side by side in file order.
    assert [at[f"f2.{k}"][0] for k in range(3)] == [3.5, 4.5, 5.5]
    assert at["t0"][0] == 0.5 and at["t1"][0] == 2.0 and at["t2"][0] == 4.5
    assert [at["f1.0"][0], at["f1.1"][0]] == [1.5, 2.5]
    assert at["out"] == (3.0, 2.0)  # no position: centred


def test_payload_keeps_the_strongest_finite_edges_in_order():
    graph = _component_graph()
    graph.edges[0].score = math.nan
    graph.edges[1].score = None
    graph.nodes[1].score = math.inf
    payload = graph_payload(SiteGraph(graph, "g.json"), max_edges=10)
    scores = [abs(e["score"]) for e in payload["edges"]]
    assert len(scores) == 10 and scores == sorted(scores, reverse=True)
    finite = [abs(e.score) for e in graph.edges if e.score is not None and math.isfinite(e.score) and e.score != 0]
    assert scores == sorted(finite, reverse=True)[:10]
    assert payload["n_edges"] == len(graph.edges) and payload["n_unscored"] == len(graph.edges) - len(finite)
    assert payload["nodes"][1]["score"] is None  # inf is not JSON; shown as no score
    ids = [n["id"] for n in payload["nodes"]]
    first = payload["edges"][0]
    match = [e for e in graph.edges if e.score == first["score"]][0]
    assert (ids[first["s"]], ids[first["t"]], first["slot"]) == (match.source, match.target, match.slot)
    json.dumps(payload, allow_nan=False)


def test_collect_graphs_reads_files_and_searches_directories(tmp_path):
    graph = _component_graph()
    save_graph(graph, tmp_path / "cmp" / "graphs" / "eap.json")
    save_graph(graph, tmp_path / "cmp" / "graphs" / "acdc.json")
    (tmp_path / "cmp" / "comparison.json").write_text(json.dumps({"rows": []}))
    (tmp_path / "cmp" / "notes.json").write_text("{not json")
    found = collect_graphs([tmp_path / "cmp", graph])
    assert [Path(g.source).name for g in found] == ["acdc.json", "eap.json", ""]
    with pytest.raises(InterpError, match="not an interp circuit graph"):
        collect_graphs([tmp_path / "cmp" / "comparison.json"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(InterpError, match="No circuit graph"):
        collect_graphs([tmp_path / "empty"])
    with pytest.raises(InterpError, match="does not exist"):
        collect_graphs([tmp_path / "nowhere"])


def test_graph_only_site(tmp_path):
    graph = _component_graph()
    graph.nodes[1].label = "</script><img src=x onerror=alert(1)>"
    save_graph(graph, tmp_path / "graphs" / "eap.json")
    index = build_dashboard(None, tmp_path / "site", graphs=[tmp_path / "graphs"], graph_edges=20)
    site = index.parent
    assert sorted(p.name for p in site.iterdir()) == ["common.js", "data", "graph.html", "graph.js", "index.html",
                                                      "index.js", "style.css", "supernodes.js"]  # no plotly
    meta = _js(site / "data" / "meta.js", "INTERP_META")
    assert meta["has_features"] is False and meta["model_name"] == "m"
    assert meta["graphs"][0]["title"] == "eap \u00b7 induction" and meta["graphs"][0]["n_edges"] == len(graph.edges)
    text = (site / "data" / "graphs" / "0.js").read_text()
    assert "<" not in text and ">" not in text  # the hostile label is escaped inside the script
    payload = _js(site / "data" / "graphs" / "0.js", "INTERP_GRAPH")
    assert payload["nodes"][1]["label"] == graph.nodes[1].label and len(payload["edges"]) == 20
    with pytest.raises(InterpError, match="Nothing to build"):
        build_dashboard(None, tmp_path / "site2")
    with pytest.raises(InterpError, match="feature store"):
        build_dashboard(None, tmp_path / "site2", {"0": "x"}, graphs=[graph])


def test_feature_site_with_graphs_and_the_cli(tiny_model_dir, tiny_model, corpus_dir, tmp_path, make_feature_store,
                                              capsys):
    cfg = AnalyzeConfig(n_top=2, quantile_pool=10, n_quantiles=2, per_quantile=1, window=8, n_random=1)
    fs = make_feature_store(tiny_model_dir, corpus_dir, tmp_path / "fs", tiny_model, 8, cfg, n_tokens=320)[1]
    save_graph(_component_graph(), tmp_path / "g" / "graph.json")
    out = tmp_path / "site"
    assert main(["dashboard", "--features", str(fs.path), "--graphs", str(tmp_path / "g"), "--out", str(out),
                 "--no-progress"]) == 0
    meta = _js(out / "data" / "meta.js", "INTERP_META")
    assert meta["has_features"] is True and meta["n_features"] == 8 and len(meta["graphs"]) == 1
    assert all((out / name).exists() for name in ("feature.html", "graph.html", "data/graphs/0.js"))
    assert main(["dashboard", "--graphs", str(tmp_path / "g" / "graph.json"), "--out", str(tmp_path / "only")]) == 0
    assert not (tmp_path / "only" / "feature.html").exists()
    assert main(["dashboard", "--out", str(tmp_path / "none")]) == 2
    assert "Nothing to build" in capsys.readouterr().err
