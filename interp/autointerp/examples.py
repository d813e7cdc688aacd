"""Examples to explain a feature from and to score its explanation on, drawn from the feature store.

Train (what the explainer sees) and test (what scorers see) never share a context: a context is one
stretch of the corpus, and the store's top and quantile windows of a context hold the same tokens.

- activating examples come from the store's ``top`` (ranked by activation) and ``quant`` (uniform
  sample cut into equal-count bands, band 0 the weakest) windows; train takes ``train`` of them
  (delphi's ``top`` / ``quantiles`` / ``mix`` / ``random``), test takes the rest stratified over bands,
  strongest band first, so scores reflect the whole activation range (Paulo et al. 2024);
- non-activating examples are the store's ``rand`` windows (contexts where the feature never fires)
  plus, when a model and dictionary are at hand, *hard negatives*: windows where a neighbouring feature
  (by co-occurrence or decoder cosine, as analyze found them) fires most and this one does not, checked
  by running the window through the model and the dictionary (see :mod:`interp.autointerp.local`).
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, NamedTuple

from interp.errors import InterpError


@dataclass(frozen=True)
class Example:
    """One window of tokens with the feature's activation on each token."""

    tokens: tuple[str, ...]
    """Token strings, in order (each id decoded on its own)."""
    ids: tuple[int, ...]
    """Token ids."""
    acts: tuple[float, ...]
    """This feature's activation on each token (0 where it does not fire)."""
    context: int
    """Index of the store context the window comes from."""
    start: int
    """Position of the window's first token in its context."""
    group: str
    """``top``, ``q<band>`` (quantile band, 0 = weakest), ``random`` or ``neighbour``."""
    activating: bool
    """Whether the feature fires anywhere in the window."""
    source: int | None = None
    """For a hard negative: the neighbouring feature whose window it is."""
    source_acts: tuple[float, ...] | None = None
    """For a hard negative: the neighbour's activations (what a contrastive fuzzing example marks)."""

    @property
    def max_act(self) -> float:
        return max(self.acts, default=0.0)

    @property
    def text(self) -> str:
        return "".join(self.tokens)

    def to_json(self) -> dict[str, object]:
        out: dict[str, object] = {"tokens": list(self.tokens), "acts": [round(a, 4) for a in self.acts],
                                  "context": self.context, "start": self.start, "group": self.group,
                                  "activating": self.activating}
        if self.source is not None:
            out["source"] = self.source
        return out


class FeatureExamples(NamedTuple):
    """Everything sampled for one feature."""

    feature: int
    train: list[Example]
    """What the explainer sees (activating)."""
    test: list[Example]
    """Activating examples to score on; no context in common with ``train``."""
    negatives: list[Example]
    """Non-activating examples to score on (random, then hard negatives)."""
    max_act: float
    """The feature's largest activation over the store (scale for highlighting and simulation)."""


@dataclass(frozen=True)
class SampleConfig:
    """How examples are drawn from the feature store for explaining and scoring."""

    n_train: int = 20
    """Activating examples shown to the explainer."""
    train: Literal["mix", "top", "quantiles", "random"] = "mix"
    """Which activating examples the explainer sees: half top half quantiles, top only, spread over the
    quantile bands, or uniformly at random."""
    n_test: int = 20
    """Activating examples to score on (stratified over quantile bands, strongest first)."""
    n_non_activating: int = 20
    """Non-activating examples to score on."""
    hard_negatives: float = 0.5
    """Fraction of the non-activating examples taken from neighbouring features' windows (needs the model
    and dictionary; 0 = random contexts only)."""
    min_examples: int = 4
    """Skip features with fewer activating examples in the store than this."""
    seed: int = 0
    """Seed of every random choice (same seed, same examples)."""

    def __post_init__(self) -> None:
        for name in ("n_train", "n_test", "min_examples"):
            if getattr(self, name) < 1:
                raise InterpError(f"SampleConfig.{name} must be >= 1, got {getattr(self, name)}.")
        if self.n_non_activating < 0:
            raise InterpError(f"SampleConfig.n_non_activating must be >= 0, got {self.n_non_activating}.")
        if not 0 <= self.hard_negatives <= 1:
            raise InterpError(f"SampleConfig.hard_negatives must be in [0, 1], got {self.hard_negatives}.")


def store_examples(fs: object, feature: int, kind: str) -> list[Example]:
    """The store's windows of one kind (``top``, ``quant``, ``rand``) for ``feature`` as :class:`Example`."""
    out = []
    for ex in fs.examples(feature, kind):  # type: ignore[attr-defined]
        acts = tuple(float(a) for a in ex["acts"])
        group = {"top": "top", "rand": "random"}.get(kind) or f"q{ex.get('band', 0)}"
        out.append(Example(tuple(ex["tokens"]), tuple(int(i) for i in ex["ids"]), acts, int(ex["context"]),
                           int(ex["start"]), group, any(a > 0 for a in acts)))
    return out


def split_examples(
    feature: int, top: Sequence[Example], quant: Sequence[Example], rand: Sequence[Example],
    hard: Sequence[Example], cfg: SampleConfig, max_act: float,
) -> FeatureExamples:
    """Split a feature's windows into train / test / negatives (see the module docstring).

    ``top`` is in rank order; ``quant`` carries its band in ``group``; ``hard`` are verified hard
    negatives (may be empty). Contexts are de-duplicated, and no context is in both train and test.
    """
    rng = random.Random(f"{cfg.seed}:{feature}")
    seen: set[int] = set()
    top_u, quant_u = _unique(top, seen), _unique(quant, seen)
    n_train = cfg.n_train
    if len(top_u) + len(quant_u) < cfg.n_train + cfg.n_test:  # too few: split what there is in proportion
        n_train = max(1, (len(top_u) + len(quant_u)) * cfg.n_train // (cfg.n_train + cfg.n_test))
    train = _take_train(top_u, quant_u, n_train, cfg.train, rng)
    used = {e.context for e in train}
    test = _stratified([e for e in quant_u if e.context not in used], cfg.n_test, rng)
    rest_top = [e for e in top_u if e.context not in used]
    test += rest_top[: cfg.n_test - len(test)]
    n_hard = min(len(hard), round(cfg.n_non_activating * cfg.hard_negatives))
    rand_ok = [e for e in rand if not e.activating and e.context not in used | {t.context for t in test}]
    negatives = rand_ok[: cfg.n_non_activating - n_hard] + list(hard[:n_hard])
    if len(negatives) < cfg.n_non_activating:  # too few random windows in the store: more neighbours
        negatives += list(hard[n_hard: n_hard + cfg.n_non_activating - len(negatives)])
    return FeatureExamples(feature, train, test, negatives, max_act)


def _unique(examples: Sequence[Example], seen: set[int]) -> list[Example]:
    """Activating examples whose context is not in ``seen`` (which they are added to), in order."""
    out = []
    for e in examples:
        if e.activating and e.context not in seen:
            seen.add(e.context)
            out.append(e)
    return out


def _take_train(top: list[Example], quant: list[Example], n: int, how: str, rng: random.Random) -> list[Example]:
    if how == "top":
        return top[:n]
    if how == "quantiles":
        return _stratified(quant, n, rng) or top[:n]
    if how == "random":
        pool = top + quant
        return rng.sample(pool, min(n, len(pool)))
    # mix: the strongest half from top, the other half across quantile bands (leaving the top ranks of
    # quantile sample to test), topped up from whichever source has more
    n_top = min(len(top), (n + 1) // 2)
    train = top[:n_top]
    taken = {e.context for e in train}
    train += _stratified([e for e in quant if e.context not in taken], n - n_top, rng)
    if len(train) < n:
        taken = {e.context for e in train}
        train += [e for e in top if e.context not in taken][: n - len(train)]
    return train


def _stratified(pool: list[Example], n: int, rng: random.Random) -> list[Example]:
    """Up to ``n`` examples, one band at a time round-robin (strongest band first), random within a band."""
    bands: dict[str, list[Example]] = {}
    for e in pool:
        bands.setdefault(e.group, []).append(e)
    for group in bands.values():
        rng.shuffle(group)
    order = sorted(bands, key=lambda g: -int(g[1:]) if g[1:].isdigit() else 1)
    out: list[Example] = []
    while len(out) < n and any(bands.values()):
        for g in order:
            if bands[g] and len(out) < n:
                out.append(bands[g].pop())
    return out


def sample_feature(fs: object, feature: int, cfg: SampleConfig, hard: Sequence[Example] = ()) -> FeatureExamples:
    """Sample train / test / negative examples of ``feature`` from a feature store (see the module docs)."""
    top = store_examples(fs, feature, "top")
    quant = store_examples(fs, feature, "quant")
    rand = store_examples(fs, feature, "rand")
    max_act = float(fs.tensors["max_act"][feature])  # type: ignore[attr-defined]
    return split_examples(feature, top, quant, rand, hard, cfg, max_act)


def n_activating(fs: object, feature: int) -> int:
    """How many distinct activating contexts the store holds for ``feature`` (top and quantile windows)."""
    t = fs.tensors  # type: ignore[attr-defined]
    ctx = set(t["top_ctx"][feature][t["top_start"][feature] >= 0].tolist())
    ctx |= set(t["quant_ctx"][feature][t["quant_start"][feature] >= 0].tolist())
    return len(ctx)
