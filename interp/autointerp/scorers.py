"""Detection, fuzzing and simulation scorers (Paulo et al. 2024; Bills et al. 2023), on an LLM or offline.

Each scorer takes a feature's examples and an explanation and returns a result dict: ``score`` (the
headline metric, see ``explanations.HEADLINE``), ``metrics``, ``examples`` (what was shown and what came
back), ``failures`` (malformed answers by kind) and ``backend`` (``llm`` or ``ngram``). With no LLM the
answers come from :class:`interp.autointerp.ngram.NgramSimulator`, so every scorer here runs offline.

- detection: activating test windows and non-activating windows, unmarked, ``n_per_prompt`` per prompt;
  the LLM says for each whether the feature fires in it. Probability of "1" from the top logprobs gives
  AUROC; the 0/1 answers give balanced accuracy, precision, recall and F1.
- fuzzing: the same windows with tokens marked: activating windows on their active tokens (> threshold x
  max), random non-activating windows on ceil(mean active tokens per activating window) tokens, one of
  them at position W - W // 4 where the peak sits in activating windows, hard negatives on their
  neighbour's active tokens. The LLM says whether every marked token is right.
- simulation: per text, the expected activation 0..10 of every token, either all at once from the
  prompt's own logprobs at a slot per token (Bills et al.; :mod:`interp.autointerp.allatonce`) or on chat
  from the top logprobs of the answer's numbers (the answer's own numbers when there are no logprobs);
  Pearson correlation with the true activations (unnormalised, as Bills: r does not change when they are
  scaled to 0..10) over all tokens of all texts (delphi's group -1), and over activating texts only.
"""

from __future__ import annotations

import asyncio
import math
import random
from collections import Counter
from collections.abc import Sequence
from typing import Any

from interp.autointerp import allatonce
from interp.autointerp.asking import ask
from interp.autointerp.client import LLMClient
from interp.autointerp.config import AutointerpConfig
from interp.autointerp.examples import Example, FeatureExamples
from interp.autointerp.metrics import auroc, classification_metrics, pearson
from interp.autointerp.ngram import NgramSimulator
from interp.autointerp.prompts import (
    DETECTION_SHOT,
    DETECTION_SYSTEM,
    FUZZING_SHOT,
    FUZZING_SYSTEM,
    classifier_messages,
    expected_values,
    mark,
    one_line,
    parse_int_list,
    simulation_messages,
    value_distributions,
)
from interp.autointerp.wire import Completion

TOP_LOGPROBS_BINARY = 5
TOP_LOGPROBS_SIMULATION = 20


class Shown:
    """One text as a classifier scorer shows it, with its label."""

    def __init__(self, example: Example, marked: list[bool] | None, label: bool):
        self.example, self.marked, self.label = example, marked, label
        self.text = mark(example.tokens, marked) if marked is not None else one_line(example.text)


def detection_texts(ex: FeatureExamples) -> list[Shown]:
    return [Shown(e, None, True) for e in ex.test] + [Shown(e, None, False) for e in ex.negatives]


def fuzzing_texts(ex: FeatureExamples, threshold: float, rng: random.Random) -> list[Shown]:
    shown = []
    for e in ex.test:
        shown.append(Shown(e, [a > threshold * e.max_act and a > 0 for a in e.acts], True))
    n_wrong = math.ceil(sum(sum(a > 0 for a in e.acts) for e in ex.test) / max(len(ex.test), 1)) or 1
    for e in ex.negatives:
        if e.source_acts is not None and max(e.source_acts) > 0:  # contrastive: the neighbour's tokens
            top = max(e.source_acts)
            shown.append(Shown(e, [a > threshold * top for a in e.source_acts], False))
            continue
        W = len(e.tokens)
        peak = W - W // 4
        others = [p for p in range(W) if p != peak]
        picks = ({peak} if peak < W else set()) | set(rng.sample(others, min(len(others), n_wrong - 1)))
        shown.append(Shown(e, [p in picks for p in range(W)], False))
    return shown


def _offline_answer(shown: Shown, sim: NgramSimulator) -> float:
    pred = sim.predict(shown.example.tokens)
    if shown.marked is None:
        return 1.0 if any(pred) else 0.0
    marked = [p for p, m in zip(pred, shown.marked) if m]
    return 1.0 if marked and all(marked) else 0.0


def _binary(c: Completion, n: int) -> tuple[list[int], list[float | None] | None]:
    answers = parse_int_list(c.text, n, 0, 1)
    dists = value_distributions(c.logprobs, n, 1)
    probs = expected_values(dists) if dists is not None else None
    return answers, probs


async def classify(client: LLMClient | None, cfg: AutointerpConfig, name: str, system: str,
                   shot: tuple[str, str] | None, explanation: str, shown: Sequence[Shown], label: str = "Text",
                   seed: int = 0) -> dict[str, Any]:
    """Ask which of ``shown`` fit ``explanation``; the classification result of detection-like scorers."""
    failures: Counter[str] = Counter()
    order = list(range(len(shown)))
    random.Random(f"{seed}:{name}:{explanation}").shuffle(order)
    preds: list[float | None] = [None] * len(shown)
    probs: list[float | None] = [None] * len(shown)
    if client is None:
        sim = NgramSimulator(explanation)
        for k in order:
            preds[k] = probs[k] = _offline_answer(shown[k], sim)
    else:
        batches = [order[a: a + cfg.n_per_prompt] for a in range(0, len(order), cfg.n_per_prompt)]

        async def one(batch: list[int]) -> None:
            msgs = classifier_messages(system, shot, explanation, [shown[k].text for k in batch], label)
            got = await ask(client, msgs, lambda c: _binary(c, len(batch)), purpose=name, failures=failures,
                            retries=cfg.parse_retries, max_tokens=8 + 4 * len(batch),
                            top_logprobs=TOP_LOGPROBS_BINARY)
            if got is not None:
                for j, k in enumerate(batch):
                    preds[k] = float(got[0][j])
                    probs[k] = got[1][j] if got[1] is not None else None

        await asyncio.gather(*(one(b) for b in batches))
    labels = [s.label for s in shown]
    metrics = classification_metrics(labels, preds)
    has_probs = any(p is not None for p in probs) and client is not None
    metrics["auroc"] = auroc(labels, probs if has_probs else preds)
    metrics["auroc_from"] = "logprobs" if has_probs else "answers"
    examples = [{"text": s.text, "group": s.example.group, "activating": s.label, "prediction": preds[k],
                 "probability": probs[k] if has_probs else None} for k, s in enumerate(shown)]
    return {"score": metrics["balanced_accuracy"], "metrics": metrics, "examples": examples,
            "failures": dict(failures), "backend": "llm" if client else "ngram"}


async def detection(client: LLMClient | None, cfg: AutointerpConfig, ex: FeatureExamples, explanation: str,
                    seed: int = 0) -> dict[str, Any]:
    return await classify(client, cfg, "detection", DETECTION_SYSTEM, DETECTION_SHOT, explanation,
                          detection_texts(ex), seed=seed)


async def fuzzing(client: LLMClient | None, cfg: AutointerpConfig, ex: FeatureExamples, explanation: str,
                  seed: int = 0) -> dict[str, Any]:
    shown = fuzzing_texts(ex, cfg.threshold, random.Random(f"{seed}:fuzzing:{ex.feature}"))
    return await classify(client, cfg, "fuzzing", FUZZING_SYSTEM, FUZZING_SHOT, explanation, shown, seed=seed)


def simulation_texts(ex: FeatureExamples, n: int) -> list[Example]:
    """``n`` texts: activating ones spread evenly over the test set's activation range, then negatives."""
    act = sorted(ex.test, key=lambda e: -e.max_act)
    n_act = min(len(act), (n + 1) // 2)
    picked = [act[round(k * (len(act) - 1) / max(n_act - 1, 1))] for k in range(n_act)] if n_act else []
    picked = list(dict.fromkeys(picked))
    return picked + list(ex.negatives[: n - len(picked)])


def _simulated(c: Completion, n: int) -> list[float]:
    values = parse_int_list(c.text, n, 0, 10)
    dists = value_distributions(c.logprobs, n, 10)
    if dists is None:
        return [float(v) for v in values]
    ev = expected_values(dists)
    return [float(e) if e is not None else float(v) for e, v in zip(ev, values)]


def _correlation(true: list[float], pred: list[float]) -> float | None:
    """Pearson correlation; 0 when the prediction is constant but the truth is not (no information)."""
    if len(true) < 2 or len(set(true)) <= 1:
        return None
    return 0.0 if len(set(pred)) <= 1 else pearson(true, pred)


def bills_normalised(acts: Sequence[float], max_act: float) -> list[int]:
    """Bills et al.'s 0..10 scale: floor(10 relu(a) / max_act), at most 10 (0 everywhere when max_act <= 0)."""
    if max_act <= 0:
        return [0] * len(acts)
    return [min(10, math.floor(10 * max(a, 0.0) / max_act)) for a in acts]


async def simulation(client: LLMClient | None, cfg: AutointerpConfig, ex: FeatureExamples, explanation: str,
                     seed: int = 0, mode: str = "chat") -> dict[str, Any]:
    """``mode``: ``all_at_once`` or ``chat`` with a client (see ``AutointerpConfig.simulation``; the runner
    checks the server and resolves ``auto`` before any work), ignored without one (the n-gram simulator)."""
    texts = simulation_texts(ex, cfg.n_simulation)
    failures: Counter[str] = Counter()
    preds: list[list[float] | None]
    if client is None:
        mode = "ngram"
        sim = NgramSimulator(explanation)
        preds = [sim.predict(e.tokens) for e in texts]
    elif mode == "all_at_once":
        preds = list(await asyncio.gather(*(allatonce.simulate(client, cfg, explanation, e.tokens, failures)
                                            for e in texts)))
    else:
        mode = "chat"
        async def one(e: Example) -> list[float] | None:
            return await ask(client, simulation_messages(explanation, e.tokens),
                             lambda c: _simulated(c, len(e.tokens)), purpose="simulation", failures=failures,
                             retries=cfg.parse_retries, max_tokens=8 + 4 * len(e.tokens),
                             top_logprobs=TOP_LOGPROBS_SIMULATION)

        preds = list(await asyncio.gather(*(one(e) for e in texts)))
    ok = [(e, p) for e, p in zip(texts, preds) if p is not None]
    true_all = [a for e, _ in ok for a in e.acts]
    pred_all = [x for _, p in ok for x in p]
    true_act = [a for e, _ in ok if e.activating for a in e.acts]
    pred_act = [x for e, p in ok if e.activating for x in p]
    metrics = {"pearson": _correlation(true_all, pred_all), "pearson_activating": _correlation(true_act, pred_act),
               "constant_prediction": len(set(pred_all)) <= 1, "n_texts": len(ok), "n_failed": len(texts) - len(ok)}
    examples = [{"tokens": list(e.tokens), "acts": [round(a, 4) for a in e.acts],
                 "normalised": bills_normalised(e.acts, ex.max_act), "group": e.group, "activating": e.activating,
                 "predicted": [round(x, 3) for x in p] if p is not None else None}
                for e, p in zip(texts, preds)]
    return {"score": metrics["pearson"], "metrics": metrics, "examples": examples, "failures": dict(failures),
            "backend": "llm" if client else "ngram", "mode": mode}
