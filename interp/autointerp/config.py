"""What an auto-interpretation run does: which explainer, which scorers, on which features."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from interp.errors import InterpError

SCORERS = ("detection", "fuzzing", "simulation", "surprisal", "embedding", "intervention")
"""Every scorer, in the order a run computes them."""
OFFLINE_SCORERS = ("detection", "fuzzing", "simulation")
"""The scorers that also run without an LLM (on the n-gram simulator)."""


@dataclass(frozen=True)
class AutointerpConfig:
    """An explain / score run over a feature store."""

    explainer: Literal["ngram", "llm"] = "ngram"
    """Who writes explanations: token / n-gram patterns (offline, the baseline) or the configured LLM."""
    run_name: str | None = None
    """Name of the run: its directory under <feature store>/explanations/; default the explainer's name."""
    scorers: str = "detection,fuzzing,simulation"
    """Comma-separated scorers (detection, fuzzing, simulation, surprisal, embedding, intervention) or 'all'.
    Without an LLM, detection, fuzzing and simulation use the n-gram simulator."""
    feature_ids: str | None = None
    """Features to process, e.g. '0-99,120'; default every feature with enough examples."""
    max_features: int | None = None
    """Process at most this many of the selected features (lowest indices first)."""
    control: bool = True
    """Also score a random explanation (another feature's, from the same run) for every feature and scorer."""
    n_per_prompt: int = 5
    """Texts per detection / fuzzing / intervention prompt."""
    threshold: float = 0.3
    """A token is marked when its activation exceeds threshold x its example's max (explainer, fuzzing)."""
    show_activations: bool = True
    """Show the LLM explainer an 'Activations:' line under each example."""
    n_simulation: int = 10
    """Texts simulated per feature (half activating, half not)."""
    simulation: Literal["auto", "all_at_once", "chat"] = "auto"
    """How the LLM simulates activations. all_at_once (Bills et al.): one /completions request per text
    with echo and logprobs, the expected value 0..10 read at every token's slot in the prompt, nothing
    generated (vLLM serves it; OpenAI chat models, Ollama and llama.cpp do not, and the run stops before any
    work with a message saying so). chat: the LLM answers a JSON list of 0..10, expected values from the
    answer's top logprobs. auto: all_at_once with --api completions, chat with --api chat."""
    simulation_fallback: bool = False
    """With all_at_once: simulate on chat when the server cannot (instead of stopping the run)."""
    simulation_logprobs: int = 15
    """Top log-probabilities per prompt token asked for in all_at_once mode (vLLM allows up to its
    --max-logprobs, 20 by default)."""
    parse_retries: int = 2
    """Re-asks of a malformed answer before it is counted as failed."""
    explain_max_tokens: int = 400
    """Longest explanation answer, in tokens."""
    feature_slots: int | None = None
    """Features worked on at once; default 2 x the LLM concurrency (4 without an LLM)."""

    def __post_init__(self) -> None:
        self.scorer_list()
        if self.n_per_prompt < 1 or self.n_simulation < 2 or self.parse_retries < 0:
            raise InterpError("Need n_per_prompt >= 1, n_simulation >= 2 and parse_retries >= 0.")
        if not 1 <= self.simulation_logprobs <= 100:
            raise InterpError(f"simulation_logprobs must be in 1..100, got {self.simulation_logprobs}.")
        if not 0 <= self.threshold < 1:
            raise InterpError(f"threshold must be in [0, 1), got {self.threshold}.")

    def scorer_list(self) -> list[str]:
        """The selected scorers in run order."""
        names = SCORERS if self.scorers.strip() == "all" else [s.strip() for s in self.scorers.split(",") if s.strip()]
        bad = [s for s in names if s not in SCORERS]
        if bad:
            raise InterpError(f"Unknown scorer(s) {', '.join(bad)}; choose from {', '.join(SCORERS)} or 'all'.")
        return [s for s in SCORERS if s in names]

    def name(self) -> str:
        """The run's directory name."""
        return self.run_name or self.explainer


def parse_features(spec: str | None, n_features: int) -> list[int] | None:
    """'0-9,12' -> [0, ..., 9, 12] (checked against ``n_features``); None for None."""
    if spec is None or not spec.strip():
        return None
    out: set[int] = set()
    for part in spec.split(","):
        part = part.strip()
        try:
            a, _, b = part.partition("-")
            lo, hi = int(a), int(b) if b else int(a)
        except ValueError:
            raise InterpError(f"Feature list {spec!r}: {part!r} is not an index or a range like 10-19.") from None
        if not 0 <= lo <= hi < n_features:
            raise InterpError(f"Feature range {part!r} is outside 0..{n_features - 1}.")
        out.update(range(lo, hi + 1))
    return sorted(out)
