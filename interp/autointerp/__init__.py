"""Auto-interpretation: explain every feature of a feature store in words and score the explanations.

``run_autointerp`` (the ``interp explain`` / ``interp score`` commands) samples examples from the store,
explains each feature (an LLM on any OpenAI-compatible server, or the offline n-gram explainer), scores
the explanations (detection, fuzzing, simulation, surprisal, embedding, intervention) against a
random-explanation control, and writes one JSON record per feature into the feature store, where
``interp dashboard`` finds them. See ``docs/autointerp.md``.

Names are imported on first use, so reading explanations (the site builder) does not load the client.
"""

from __future__ import annotations

from interp.lazy import lazy_exports

_EXPORTS = {
    "AutointerpConfig": ".config",
    "SCORERS": ".config",
    "Completion": ".wire",
    "LLMClient": ".client",
    "LLMConfig": ".client",
    "LLMError": ".client",
    "Usage": ".client",
    "Example": ".examples",
    "FeatureExamples": ".examples",
    "SampleConfig": ".examples",
    "sample_feature": ".examples",
    "load_explanations": ".explanations",
    "read_record": ".explanations",
    "run_dir": ".explanations",
    "LocalConfig": ".local",
    "auroc": ".metrics",
    "classification_metrics": ".metrics",
    "pearson": ".metrics",
    "NgramSimulator": ".ngram",
    "explain_ngrams": ".ngram",
    "RunSummary": ".runner",
    "run_autointerp": ".runner",
    "select_features": ".runner",
}

__all__ = sorted(_EXPORTS)


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, globals())
