"""``interp circuit``: one method and ``compare``, as a user runs them."""

from __future__ import annotations

import json
from pathlib import Path

from cli.main import main
from interp.circuits.config import METHODS, NODE_METHODS
from interp.circuits.graph import load_graph

TORCH_THREADS = 1  # see conftest.py

SMALL = ["--task", "induction", "--n-prompts", "6", "--seq-len", "4", "--acdc-thresholds", "0.001", "0.1",
         "--sae-epochs", "20", "--sae-latents", "8", "--ig-steps", "2"]


def test_one_method_writes_a_graph(tiny_model_dir: Path, tmp_path: Path, capsys):
    out = tmp_path / "eap"
    code = main(["circuit", "eap", "--model", str(tiny_model_dir), "--out", str(out), *SMALL,
                 "--truth-nodes", "L1H0,L1H1", "--truth-edges", "L0H0>L1H0:k,L1H0>logits"])
    assert code == 0
    graph = load_graph(out / "graph.json")
    assert graph.metadata["method"] == "eap" and graph.metadata["config"]["n_prompts"] == 6
    assert len(graph.edges) == 110 and 0.0 <= graph.metadata["evaluation"]["edge_auc"] <= 1.0
    printed = capsys.readouterr().out
    assert "node AUC" in printed and str(out / "graph.json") in printed


def test_compare_writes_table_plot_and_graphs(tiny_model_dir: Path, tmp_path: Path):
    out = tmp_path / "cmp"
    assert main(["circuit", "compare", "--model", str(tiny_model_dir), "--out", str(out), *SMALL,
                 "--truth-nodes", "L1H0"]) == 0
    data = json.loads((out / "comparison.json").read_text())
    assert [r["method"] for r in data["rows"]] == list(METHODS)
    assert all(r["runtime_s"] > 0 and r["node_auc"] is not None for r in data["rows"])
    assert [r["spearman"] is None for r in data["rows"]] == [m in NODE_METHODS for m in METHODS]
    assert sorted(p.stem for p in (out / "graphs").glob("*.json")) == sorted(METHODS)
    assert "| eap |" in (out / "comparison.md").read_text()
    html = (out / "comparison.html").read_text()
    assert "plotly" in html and "faithfulness" in html


def test_bad_task_is_a_clear_error(tiny_model_dir: Path, tmp_path: Path, capsys):
    assert main(["circuit", "eap", "--model", str(tiny_model_dir), "--out", str(tmp_path), "--task", "ioi"]) == 2
    assert "names are single tokens" in capsys.readouterr().err


def test_transcoder_commands_need_transcoders(tiny_model_dir: Path, tmp_path: Path, capsys):
    for command in ("attribution-graph", "transcoder-paths"):
        argv = ["circuit", command, "--model", str(tiny_model_dir), "--prompt", "x", "--out", str(tmp_path / command)]
        assert main(argv) == 2
        assert f"{command} needs --transcoders" in capsys.readouterr().err
        assert not (tmp_path / command).exists()


def test_card_truth_takes_a_threshold(tmp_path: Path, capsys):
    small = ["--task", "induction", "--n-prompts", "4", "--seq-len", "4"]
    for truth, name in (("card", ">= 0.3"), ("card:0.5", ">= 0.5")):
        out = tmp_path / truth.replace(":", "-")
        assert main(["circuit", "attribution-patching", "--model", "demo", "--out", str(out), *small,
                     "--truth-nodes", truth]) == 0
        evaluation = load_graph(out / "graph.json").metadata["evaluation"]
        assert evaluation["ground_truth"].endswith(f"{name})") and 0.0 <= evaluation["node_auc"] <= 1.0
    assert main(["circuit", "eap", "--model", "demo", "--out", str(tmp_path / "bad"), *small,
                 "--truth-nodes", "card:half"]) == 2
    assert "card:THRESHOLD needs a number, got 'half'" in capsys.readouterr().err
