"""interp: take a language model apart.

cache -> activation store -> train -> dictionary -> analyze -> feature store -> dashboards.

The public API is the names in ``__all__``; each is imported on first use, so ``import interp`` (and the
``interp`` CLI) start fast.
"""

from __future__ import annotations

from interp.lazy import lazy_exports

__version__ = "0.1.0"

_EXPORTS = {
    "InterpError": "interp.errors",
    "Model": "interp.model",
    "ModelInfo": "interp.model",
    "load_model": "interp.model",
    "CorpusConfig": "interp.model",
    "CacheConfig": "interp.activations",
    "cache_activations": "interp.activations",
    "ActivationStore": "interp.activations",
    "Dictionary": "interp.dictionaries",
    "REGISTRY": "interp.dictionaries",
    "create": "interp.dictionaries",
    "load_dictionary": "interp.dictionaries",
    "save_dictionary": "interp.dictionaries",
    "TrainConfig": "interp.training",
    "load_train_configs": "interp.training",
    "train_dictionary": "interp.training",
    "evaluate": "interp.training",
    "AnalyzeConfig": "interp.features",
    "analyze_features": "interp.features",
    "load_feature_store": "interp.features",
    "build_dashboard": "interp.site",
    "Task": "interp.circuits",
    "make_task": "interp.circuits",
    "CircuitConfig": "interp.circuits",
    "find_circuit": "interp.circuits",
    "CircuitGraph": "interp.circuits",
    "save_graph": "interp.circuits",
    "load_graph": "interp.circuits",
    "ground_truth": "interp.circuits",
    "evaluate_graph": "interp.circuits",
}

__all__ = sorted(_EXPORTS)


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, globals())
