"""Auto-interpretation: explain every feature of a feature store in words and score the explanations.

``run_autointerp`` (the ``interp explain`` / ``interp score`` commands) samples examples from the store,
explains each feature (an LLM on any OpenAI-compatible server, or the offline n-gram explainer), scores
the explanations (detection, fuzzing, simulation, surprisal, embedding, intervention) against a
random-explanation control, and writes one JSON record per feature into the feature store, where
``interp dashboard`` finds them. See ``docs/autointerp.md``.

Names are imported on first use, so reading explanations (the site builder) does not load the client.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "AutointerpConfig": "config",
    "SCORERS": "config",
    "Completion": "wire",
    "LLMClient": "client",
    "LLMConfig": "client",
    "LLMError": "client",
    "Usage": "client",
    "Example": "examples",
    "FeatureExamples": "examples",
    "SampleConfig": "examples",
    "sample_feature": "examples",
    "load_explanations": "explanations",
    "read_record": "explanations",
    "run_dir": "explanations",
    "LocalConfig": "local",
    "auroc": "metrics",
    "classification_metrics": "metrics",
    "pearson": "metrics",
    "NgramSimulator": "ngram",
    "explain_ngrams": "ngram",
    "RunSummary": "runner",
    "run_autointerp": "runner",
    "select_features": "runner",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        value = getattr(importlib.import_module(f"interp.autointerp.{_EXPORTS[name]}"), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'interp.autointerp' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(list(globals()) + __all__)
