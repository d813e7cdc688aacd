"""Every method on one task, side by side: ROC AUC, faithfulness area, agreement with exact edge patching,
runtime and peak memory.

:func:`compare_methods` runs the methods one after another on the same model, task and prompts (so the
runtimes are measured under the same load, in one process), and :func:`write_comparison` writes
``comparison.json`` (every row and curve), ``comparison.md`` (the table) and ``comparison.html`` (a plotly
figure: faithfulness curves, and runtime per method; plotly's bundle is embedded so it opens from ``file://``),
plus one graph per method under ``graphs/``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

import torch

from interp.circuits.api import find_circuit
from interp.circuits.components import ComponentGraph
from interp.circuits.config import METHODS, CircuitConfig
from interp.circuits.evaluate import GroundTruth, spearman
from interp.circuits.graph import CircuitGraph, save_graph
from interp.circuits.patching import edge_activation_patching
from interp.circuits.scoring import edge_matrix
from interp.circuits.tasks import Task, check_task
from interp.io import atomic_write_bytes, atomic_write_json


class MethodRow(NamedTuple):
    """One method's line of the comparison."""

    method: str
    """Method name."""
    node_auc: float | None
    """Node ROC AUC against the ground truth (None without one)."""
    edge_auc: float | None
    """Edge ROC AUC (None without edge ground truth)."""
    cpr: float
    """Area under the faithfulness curve (MIB CPR; higher is better)."""
    cmd: float
    """Area between the curve and 1 (MIB CMD; lower is better)."""
    runtime_s: float
    """Wall time of the method (task checks and evaluation excluded)."""
    peak_memory_mb: float
    """Peak memory growth during the method."""
    spearman: float | None = None
    """Spearman rank correlation of |edge scores| with |exact edge patching effects| (edge methods; None for
    node methods, whose edge scores are derived, or without the reference)."""


class Comparison(NamedTuple):
    """Rows in method order, and the graphs they came from."""

    rows: list[MethodRow]
    """One per method."""
    graphs: dict[str, CircuitGraph]
    """Method -> its graph (with ``metadata['evaluation']``)."""


def compare_methods(model: Any, task: Task | str, methods: Sequence[str] = METHODS,
                    config: CircuitConfig | None = None, *, truth: GroundTruth | None = None,
                    reference: bool = True, **overrides: Any) -> Comparison:
    """Run ``methods`` on one task (built once) and score each (see the module docstring). With ``reference``,
    every edge is also patched alone (one forward per edge, batched) and each edge method's ranking is compared
    with it by Spearman rank correlation of absolute values."""
    cfg = dataclasses.replace(config or CircuitConfig(), evaluate=True, **overrides)
    if isinstance(task, str):
        from interp.circuits.generators import make_task

        options = {"seq_len": cfg.seq_len} if task == "induction" else {}
        task = make_task(task, model, n_prompts=cfg.n_prompts, seed=cfg.seed, **options)
    exact = _exact_edges(model, task, cfg) if reference else None
    rows, graphs = [], {}
    for method in methods:
        graph = find_circuit(model, task, method, cfg, truth=truth)
        ev = graph.metadata["evaluation"]
        curve = ev["faithfulness"]
        rho = None
        if exact is not None and graph.metadata["score_origin"] == "edge":
            cg = ComponentGraph.of(model)
            rho = spearman(edge_matrix(cg, graph)[cg.valid].abs(), exact[cg.valid].abs())
            ev["spearman_vs_edge_patching"] = rho
        rows.append(MethodRow(method, ev.get("node_auc"), ev.get("edge_auc"), curve["cpr"], curve["cmd"],
                              graph.metadata["runtime_s"], graph.metadata["peak_memory_mb"], rho))
        graphs[method] = graph
    return Comparison(rows, graphs)


def _exact_edges(model: Any, task: Task, cfg: CircuitConfig) -> torch.Tensor:
    baseline = check_task(model, task, cfg.batch_size)
    return edge_activation_patching(model, task, baseline, batch_size=cfg.batch_size, max_rows=cfg.max_rows).double()


def _fmt(value: float | None, digits: int = 3) -> str:
    return "—" if value is None else f"{value:.{digits}f}"


def comparison_table(rows: Sequence[MethodRow]) -> str:
    """A markdown table of the rows."""
    lines = ["| method | node AUC | edge AUC | CPR | CMD | Spearman vs patching | runtime (s) | peak memory (MiB) |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r.method} | {_fmt(r.node_auc)} | {_fmt(r.edge_auc)} | {_fmt(r.cpr)} | {_fmt(r.cmd)} | "
                     f"{_fmt(r.spearman)} | {r.runtime_s:.2f} | {r.peak_memory_mb:.0f} |")
    return "\n".join(lines) + "\n"


def comparison_figure(comparison: Comparison, title: str = "Circuit methods") -> Any:
    """Plotly figure: faithfulness against circuit size per method (left), runtime per method (right)."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    fig = make_subplots(rows=1, cols=2, subplot_titles=("faithfulness of the top edges", "runtime"),
                        column_widths=[0.62, 0.38])
    for method, graph in comparison.graphs.items():
        curve = graph.metadata["evaluation"]["faithfulness"]
        fig.add_trace(go.Scatter(x=[100 * f for f in curve["fractions"]], y=curve["faithfulness"],
                                 mode="lines+markers", name=method), row=1, col=1)
    fig.add_trace(go.Bar(x=[r.method for r in comparison.rows], y=[r.runtime_s for r in comparison.rows],
                         name="runtime (s)", showlegend=False,
                         text=[f"AUC {_fmt(r.node_auc, 2)}" for r in comparison.rows]), row=1, col=2)
    fig.update_xaxes(type="log", title_text="circuit size (% of edges)", row=1, col=1)
    fig.update_yaxes(title_text="faithfulness", row=1, col=1)
    fig.update_yaxes(type="log", title_text="seconds", row=1, col=2)
    fig.update_layout(title=title, height=480)
    return fig


def write_comparison(comparison: Comparison, out_dir: str | Path, title: str = "Circuit methods") -> Path:
    """Write comparison.json / .md / .html and graphs/<method>.json into ``out_dir``; returns ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for method, graph in comparison.graphs.items():
        save_graph(graph, out / "graphs" / f"{method}.json")
    atomic_write_json(out / "comparison.json", {
        "rows": [r._asdict() for r in comparison.rows],
        "curves": {m: g.metadata["evaluation"]["faithfulness"] for m, g in comparison.graphs.items()},
        "task": next(iter(comparison.graphs.values())).metadata["task"] if comparison.graphs else None,
    })
    atomic_write_bytes(out / "comparison.md", comparison_table(comparison.rows).encode())
    html = comparison_figure(comparison, title).to_html(include_plotlyjs=True, full_html=True)
    atomic_write_bytes(out / "comparison.html", html.encode())
    return out
