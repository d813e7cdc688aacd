"""Explainers: from a feature's train examples to a one-line explanation.

- ``ngram`` (offline, the default and the baseline): :func:`interp.autointerp.ngram.explain_ngrams`;
- ``llm``: the prompt of :func:`interp.autointerp.prompts.explainer_messages`, the answer's last
  ``[EXPLANATION]:`` line. An answer without one is re-asked ``parse_retries`` times, then counted as
  failed; the feature then gets no explanation (it is retried by the next run).
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from interp.autointerp.asking import ask
from interp.autointerp.client import LLMClient
from interp.autointerp.config import AutointerpConfig
from interp.autointerp.examples import FeatureExamples
from interp.autointerp.ngram import explain_ngrams
from interp.autointerp.prompts import explainer_messages, parse_explanation


async def explain(client: LLMClient | None, cfg: AutointerpConfig, ex: FeatureExamples) -> dict[str, Any] | None:
    """``{"explanation", "train", "raw", "failures"}`` for one feature, or None if the LLM never answered
    in the asked-for form."""
    train = [[e.context, e.start] for e in ex.train]
    if cfg.explainer == "ngram":
        return {"explanation": explain_ngrams(ex.train, cfg.threshold), "train": train, "raw": None,
                "failures": {}}
    if client is None:
        raise ValueError("the llm explainer needs a client")
    failures: Counter[str] = Counter()
    msgs = explainer_messages([(e.tokens, e.acts) for e in ex.train], ex.max_act, cfg.threshold,
                              cfg.show_activations)
    got = await ask(client, msgs, lambda c: (parse_explanation(c.text), c.text), purpose="explain",
                    failures=failures, retries=cfg.parse_retries, max_tokens=cfg.explain_max_tokens)
    if got is None:
        return {"explanation": None, "train": train, "raw": None, "failures": dict(failures)}
    return {"explanation": got[0], "train": train, "raw": got[1], "failures": dict(failures)}
