"""Circuit discovery over model components: tasks, patching, attribution, EAP, EAP-IG, ACDC and discrete-SAE circuits,
their scores against ground truth, and the graph format every method writes.

A ten-line analysis::

    import interp
    model = interp.load_model("demo")
    task = interp.make_task("induction", model, n_prompts=32)
    graph = interp.find_circuit(model, task, "eap")
    print([e.key for e in graph.top_edges(5)], graph.metadata["evaluation"]["faithfulness"]["cpr"])
    interp.save_graph(graph, "runs/eap.json")

Through dictionaries (issue 12): transcoder circuits (Dunefsky et al. 2024: pullbacks, attributions, greedy paths
through per-layer, skip or cross-layer transcoders) and attention-SAE direct feature attribution (Kissane et al.
2024); see docs/circuits.md::

    from interp.circuits import TranscoderSet, trace, logit_root, greedy_paths, paths_graph
    transcoders = TranscoderSet.load(["runs/demo/dicts/clt"], model)      # per-layer transcoders or one CLT
    tr = trace(model, "def add(a, b):\n    return a + b", transcoders)
    search = greedy_paths(model, tr, logit_root(model, tr, token=int(tr.tokens[-1])), num_iters=3)
    graph = paths_graph(model, tr, search)                                 # with error nodes

Attribution graphs (Ameisen et al. 2025, circuit-tracer) and QK attribution::

    from interp.circuits import AttributionGraphConfig, attribution_graph, qk_attribution
    result = attribution_graph(model, transcoders, AttributionGraphConfig(prompt="def add(a, b):"))
    qk = qk_attribution(model, result.trace, layer=1, head=2, query_position=5, key_position=2)

Supernodes (named groups drawn as one node; by hand, from a file saved in the graph view, or by decoder-direction
clusters)::

    from interp.circuits import SupernodeConfig, auto_supernodes, collapse_supernodes, group_nodes
    graph = group_nodes(result.graph, auto_supernodes(result.graph, transcoders, SupernodeConfig(0.9)))
    view = collapse_supernodes(graph)                                      # each group one node, edges summed

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
    "TranscoderSet": "interp.circuits.replacement",
    "Trace": "interp.circuits.replacement",
    "trace": "interp.circuits.replacement",
    "affine_encoder": "interp.circuits.replacement",
    "Site": "interp.circuits.decompose",
    "Component": "interp.circuits.decompose",
    "Decomposition": "interp.circuits.decompose",
    "decompose": "interp.circuits.decompose",
    "child": "interp.circuits.decompose",
    "ln_pullback": "interp.circuits.decompose",
    "pullback": "interp.circuits.decompose",
    "deembedding": "interp.circuits.decompose",
    "ov_pullback": "interp.circuits.decompose",
    "Root": "interp.circuits.pathsearch",
    "feature_root": "interp.circuits.pathsearch",
    "logit_root": "interp.circuits.pathsearch",
    "vector_root": "interp.circuits.pathsearch",
    "PathNode": "interp.circuits.pathsearch",
    "PathSearch": "interp.circuits.pathsearch",
    "greedy_paths": "interp.circuits.pathsearch",
    "paths_graph": "interp.circuits.pathsearch",
    "MeanAttribution": "interp.circuits.mean_attribution",
    "mean_attribution": "interp.circuits.mean_attribution",
    "replacement_logits": "interp.circuits.replacement",
    "TranscoderPathsConfig": "interp.circuits.paths_api",
    "transcoder_paths": "interp.circuits.paths_api",
    "FeatureDFA": "interp.circuits.dfa",
    "attention_dfa": "interp.circuits.dfa",
    "recursive_dfa": "interp.circuits.dfa",
    "attention_feature_root": "interp.circuits.dfa",
    "AttributionGraphConfig": "interp.circuits.graph_api",
    "AttributionGraph": "interp.circuits.graph_api",
    "attribution_graph": "interp.circuits.graph_api",
    "save_attribution_graph": "interp.circuits.graph_api",
    "QKAttribution": "interp.circuits.qk",
    "qk_attribution": "interp.circuits.qk",
    "Supernode": "interp.circuits.supernodes",
    "group_nodes": "interp.circuits.supernodes",
    "collapse_supernodes": "interp.circuits.supernodes",
    "save_supernodes": "interp.circuits.supernodes",
    "load_supernodes": "interp.circuits.supernodes",
    "SupernodeConfig": "interp.circuits.auto_supernodes",
    "auto_supernodes": "interp.circuits.auto_supernodes",
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
