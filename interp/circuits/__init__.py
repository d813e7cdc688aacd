"""Circuit discovery over model components: tasks, patching, attribution, EAP, EAP-IG, ACDC and discrete-SAE circuits,
their scores against ground truth, and the graph format every method writes.

A ten-line analysis::

    import interp
    model = interp.load_model("demo")
    task = interp.make_task("induction", model, n_prompts=32)
    graph = interp.find_circuit(model, task, "eap")
    print([e.key for e in graph.top_edges(5)], graph.metadata["evaluation"]["faithfulness"]["cpr"])
    interp.save_graph(graph, "runs/eap.json")

Names are imported on first use (reading a graph with :mod:`interp.circuits.graph` does not import torch).
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "Task": "interp.circuits.tasks",
    "task_from_text": "interp.circuits.tasks",
    "check_task": "interp.circuits.tasks",
    "TASKS": "interp.circuits.generators",
    "make_task": "interp.circuits.generators",
    "CircuitConfig": "interp.circuits.config",
    "METHODS": "interp.circuits.config",
    "find_circuit": "interp.circuits.api",
    "CircuitGraph": "interp.circuits.graph",
    "Node": "interp.circuits.graph",
    "Edge": "interp.circuits.graph",
    "save_graph": "interp.circuits.graph",
    "load_graph": "interp.circuits.graph",
    "GroundTruth": "interp.circuits.evaluate",
    "ground_truth": "interp.circuits.evaluate",
    "evaluate_graph": "interp.circuits.evaluate",
    "faithfulness_curve": "interp.circuits.evaluate",
    "roc_auc": "interp.circuits.evaluate",
    "card_ground_truth": "interp.circuits.truth",
    "literature_ground_truth": "interp.circuits.truth",
    "compare_methods": "interp.circuits.compare",
    "write_comparison": "interp.circuits.compare",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'interp.circuits' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(list(globals()) + __all__)
