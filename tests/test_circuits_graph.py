"""The circuit graph format: symmetric save/load, validation, and a reader that needs no torch."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from interp.circuits.graph import (
    FORMAT,
    SCHEMA_VERSION,
    CircuitGraph,
    Edge,
    Node,
    component_nodes,
    load_graph,
    parse_node_id,
    save_graph,
)
from interp.errors import InterpError

TORCH_THREADS = 1  # see conftest.py


def _graph() -> CircuitGraph:
    nodes = component_nodes(2, 2)
    nodes[1].score = 0.5
    edges = [Edge("input", "a0.h1", "k", 0.25), Edge("a0.h1", "a1.h0", "v", -1.5, in_circuit=True),
             Edge("a1.h0", "logits", None, 2.0)]
    return CircuitGraph(nodes, edges, {"method": "eap", "task": {"name": "induction"}})


def test_save_load_round_trip(tmp_path: Path):
    g = _graph()
    path = save_graph(g, tmp_path / "g.json")
    raw = json.loads(path.read_text())
    assert raw["format"] == FORMAT and raw["schema_version"] == SCHEMA_VERSION
    assert [n["id"] for n in raw["nodes"]] == ["input", "a0.h0", "a0.h1", "m0", "a1.h0", "a1.h1", "m1", "logits"]
    back = load_graph(path)
    assert back == g
    assert [e.key for e in back.top_edges(2)] == ["a1.h0->logits", "a0.h1->a1.h0<v>"]
    assert back.node("a0.h0").score == 0.5 and back.node("a0.h0").label == "L0H0"
    assert not list(tmp_path.glob("*.tmp"))


def test_validation(tmp_path: Path):
    nodes = component_nodes(1, 1)
    with pytest.raises(InterpError, match="names a node"):
        CircuitGraph(nodes, [Edge("input", "a5.h0", "q", 1.0)])
    with pytest.raises(InterpError, match="against node order"):
        CircuitGraph(nodes, [Edge("logits", "a0.h0", "q", 1.0)])
    with pytest.raises(InterpError, match="two nodes with one id"):
        CircuitGraph(nodes + [Node("m0", "mlp", 0)], [])
    raw = _graph().to_dict()
    (tmp_path / "new.json").write_text(json.dumps({**raw, "schema_version": SCHEMA_VERSION + 1}))
    with pytest.raises(InterpError, match="schema_version"):
        load_graph(tmp_path / "new.json")
    (tmp_path / "other.json").write_text(json.dumps({**raw, "format": "something"}))
    with pytest.raises(InterpError, match="not an interp circuit graph"):
        load_graph(tmp_path / "other.json")
    with pytest.raises(InterpError, match="No circuit graph"):
        load_graph(tmp_path / "missing.json")


def test_node_names():
    assert parse_node_id("L1H2") == parse_node_id("a1.h2") == "a1.h2"
    assert parse_node_id("MLP0") == "m0" and parse_node_id("embed") == "input"
    with pytest.raises(InterpError, match="Cannot read node name"):
        parse_node_id("head 3")


def test_reading_a_graph_does_not_import_torch(tmp_path: Path):
    path = save_graph(_graph(), tmp_path / "g.json")
    code = ("import sys; from interp.circuits.graph import load_graph; g = load_graph(sys.argv[1]); "
            "assert 'torch' not in sys.modules, 'torch imported'; print(len(g.edges))")
    out = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "3"
