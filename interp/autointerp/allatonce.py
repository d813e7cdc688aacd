"""Bills et al.'s "all at once" simulation: one /completions request per text, read from prompt logprobs.

The prompt lists the text one token per line as ``token<TAB>?`` after a description of the feature and
two few-shot features whose lines carry their activations (0..10). The request asks the server to echo
the prompt with the top log-probabilities of every prompt token (``echo`` + ``logprobs``, no generation
that matters). At the slot right after each tab the model has told us what it expected there; the
probabilities of the tokens "0".."10" among the top alternatives, renormalised over those values, give
the expected activation of that token. vLLM serves this; OpenAI's chat models, Ollama and llama.cpp do
not, which :func:`check_server` finds out with one request before a run does any work.

Constraints this module was designed under:
- slots are found by counting tab characters in the echoed tokens, not by text offsets (servers differ in
  how they count offsets of byte-level tokens): inside a token a tab is written ``\\t`` (and a newline
  ``\\n``, a backslash ``\\\\``, as everywhere in interp's prompts), so the prompt holds exactly one real tab
  per listed token and the k-th tab of the echo belongs to the k-th line, however the simulator's
  tokenizer splits the token text before it;
- a slot whose tab is not the last character of its echoed token (the tokenizer merged it with what
  follows) cannot be read, nor a slot with no value 0..10 among its top alternatives; a text with such a
  slot is counted under that kind, and an answer without logprobs or without the echoed prompt is re-asked
  and then counted; none of them stops a run.
"""

from __future__ import annotations

import logging
import math
from collections import Counter
from collections.abc import Sequence
from typing import NamedTuple

from interp.autointerp.client import LLMClient, LLMError
from interp.autointerp.config import AutointerpConfig
from interp.autointerp.prompts import Malformed, description_line, one_line
from interp.autointerp.wire import Completion
from interp.errors import InterpError

log = logging.getLogger(__name__)

SLOT = "?"
"""What every slot of the simulated text holds. Not a word (Bills' "unknown"): BPE pre-tokenizers of the
GPT-4 / Llama 3 / Qwen families glue a tab to the letters after it, which would hide the slot, but keep it
apart from punctuation and digits."""
MAX_VALUE = 10

SYSTEM = f"""We study features of a language model. A feature becomes active on some tokens of a text, \
with a strength from 0 (not active) to {MAX_VALUE} (as active as it ever gets). Given a description of a \
feature, predict how strongly it is active on each token of a text.

A text is written between <start> and <end>, one token per line, as the token, a tab, and the \
activation. Inside a token a newline is written \\n, a tab \\t and a backslash \\\\. "{SLOT}" stands for an \
activation that is not known yet. Most activations are 0."""

SHOTS: list[tuple[str, list[tuple[str, int]], int]] = [
    ('The name of a loop variable, right after the keyword "for".',
     [("for", 0), (" i", 10), (" in", 0), (" range", 0), ("(", 0), ("n", 0), ("):", 0), ("\n       ", 0),
      (" total", 0), (" +=", 0), (" i", 0), ("\n", 0), ("for", 0), (" key", 8), (",", 0), (" value", 0),
      (" in", 0), (" items", 0), (":", 0)], 3),
    ("Plural nouns counted by a number just before them.",
     [("She", 0), (" bought", 0), (" three", 0), (" apples", 8), (" and", 0), (" a", 0), (" pear", 0),
      (".", 0), (" We", 0), (" walked", 0), (" 12", 0), (" miles", 10), (" before", 0), (" noon", 0)], 2),
]
"""(description, (token, activation 0..10) lines, how many leading lines show the slot instead of the
value: as in Bills' few-shot examples, so that the model has seen slots before real values)."""


class SimulationPrompt(NamedTuple):
    """One text's prompt and where its slots are."""

    text: str
    n_before: int
    """Tabs in the prompt before the text's first slot (the few-shot lines)."""
    n_slots: int
    """One per token of the text, in order."""


def escape_token(token: str) -> str:
    """A token on one line, with no real tab: ``\\n``, ``\\t``, ``\\r`` and ``\\\\`` escaped; ``<|x|>`` written
    ``<\\|x|>`` so that a server does not read a special token (``<|endoftext|>``) in the prompt."""
    return one_line(token).replace("<|", "<\\|")


def _block(lines: Sequence[tuple[str, str]]) -> str:
    return "<start>\n" + "".join(f"{escape_token(t)}\t{v}\n" for t, v in lines) + "<end>\n"


def _feature(n: int, description: str, lines: Sequence[tuple[str, str]]) -> str:
    return f"\nFeature {n}\nDescription: {description_line(description)}\nActivations:\n{_block(lines)}"


def simulation_prompt(explanation: str, tokens: Sequence[str]) -> SimulationPrompt:
    """The prompt that simulates ``explanation`` on ``tokens``: system text, the few-shot features, then
    the text with a slot on every token."""
    parts, n_before = [SYSTEM, "\n"], 0
    for k, (description, lines, hidden) in enumerate(SHOTS, 1):
        shown = [(t, SLOT if j < hidden else str(v)) for j, (t, v) in enumerate(lines)]
        parts.append(_feature(k, description, shown))
        n_before += len(lines)
    parts.append(_feature(len(SHOTS) + 1, explanation, [(t, SLOT) for t in tokens]))
    return SimulationPrompt("".join(parts), n_before, len(tokens))


def _value(token: str) -> int | None:
    s = token.lstrip(" ")
    return int(s) if s.isdigit() and int(s) <= MAX_VALUE and s == str(int(s)) else None


def slot_distribution(top: dict[str, float]) -> dict[int, float]:
    """P(value) for values 0..10 among ``top`` (token -> logprob), renormalised over those values;
    {} when none is there. ``"7"`` and ``" 7"`` both count as 7."""
    probs: dict[int, float] = {}
    for tok, lp in top.items():
        v = _value(tok)
        if v is not None:
            probs[v] = probs.get(v, 0.0) + math.exp(lp)
    total = sum(probs.values())
    return {v: p / total for v, p in sorted(probs.items())} if total > 0 else {}


def read_slots(c: Completion, prompt: SimulationPrompt) -> list[dict[int, float]]:
    """The value distribution at each slot of ``prompt``'s text, from the echoed prompt's top logprobs.

    Raises :class:`Malformed`: ``no_logprobs`` (none came back), ``no_echo`` (fewer tabs than the
    prompt has: the server answered for the generated token only), ``slot_merged`` (a tab that is not the
    last character of its token), ``no_slot_values`` (no value 0..10 among a slot's alternatives).
    """
    if not c.logprobs:
        raise Malformed("no_logprobs")
    wanted = range(prompt.n_before, prompt.n_before + prompt.n_slots)
    out: list[dict[int, float]] = []
    tabs = 0
    for j, t in enumerate(c.logprobs):
        if "\t" not in t.token:
            continue
        for pos in (p for p, ch in enumerate(t.token) if ch == "\t"):
            if tabs in wanted:
                if pos != len(t.token) - 1 or j + 1 >= len(c.logprobs):
                    raise Malformed("slot_merged", repr(t.token))
                out.append(slot_distribution(c.logprobs[j + 1].top))
            tabs += 1
        if len(out) == prompt.n_slots:
            break
    if len(out) < prompt.n_slots:
        raise Malformed("no_echo", f"{tabs} tabs echoed, the prompt has {prompt.n_before + prompt.n_slots}")
    if any(not d for d in out):
        raise Malformed("no_slot_values", f"{sum(not d for d in out)} of {len(out)} slots")
    return out


def expected_value(dist: dict[int, float]) -> float:
    """Sum of value x probability."""
    return sum(v * p for v, p in dist.items())


ANSWER_KINDS = ("no_logprobs", "no_echo")
"""Malformed kinds that another try may fix; the slot kinds come from the tokenizer and would repeat."""


async def simulate(client: LLMClient, cfg: AutointerpConfig, explanation: str, tokens: Sequence[str],
                   failures: Counter[str]) -> list[float] | None:
    """Expected activation (0..10) of every token of ``tokens`` under ``explanation``; None (counted in
    ``failures``) when the answer could not be read."""
    prompt = simulation_prompt(explanation, tokens)
    for attempt in range(cfg.parse_retries + 1):
        try:
            c = await client.echo(prompt.text, purpose="simulation", top_logprobs=cfg.simulation_logprobs,
                                  fresh=attempt > 0)
        except LLMError as e:
            if e.fatal and e.status not in (400, 413, 422):  # a bad key or URL: every request would fail
                raise
            failures["request_failed" if not e.fatal else "request_refused"] += 1
            log.warning("simulation request failed for good: %s", e)
            return None
        try:
            return [expected_value(d) for d in read_slots(c, prompt)]
        except Malformed as e:
            failures[e.kind] += 1
            log.debug("unreadable simulation answer (%s), try %d", e, attempt + 1)
            if e.kind not in ANSWER_KINDS:
                return None
    return None


CHECK_EXPLANATION = 'The token " cat".'
CHECK_TOKENS = ("The", " cat", " sat", ".")

_WHY = {
    "no_logprobs": "answered without log-probabilities",
    "no_echo": "did not echo the prompt's tokens with their log-probabilities (llama.cpp and Ollama ignore echo)",
    "slot_merged": "tokenizes a tab together with the text after it, so the slots cannot be read",
    "no_slot_values": "listed none of the values 0..10 among the top log-probabilities of a slot "
                      "(raise --simulation-logprobs)",
}


async def check_server(client: LLMClient, cfg: AutointerpConfig) -> None:
    """One small all-at-once simulation, sent past the cache; raises :class:`InterpError` saying what the
    server does not do (refuses echo or logprobs, ignores echo, merges the slots) and what to use instead."""
    prompt = simulation_prompt(CHECK_EXPLANATION, CHECK_TOKENS)
    where = f"The LLM server at {client.cfg.base_url} (model {client.cfg.llm})"
    advice = ("All-at-once simulation (Bills et al.) needs /completions with echo and prompt logprobs, which "
              "vLLM serves. Use --simulation chat, or add --simulation-fallback to simulate on chat when the "
              "server cannot.")
    try:
        c = await client.echo(prompt.text, purpose="simulation_check", top_logprobs=cfg.simulation_logprobs,
                              fresh=True)
    except LLMError as e:
        raise InterpError(f"{where} refused a /completions request with echo and logprobs: {e} {advice}") from None
    try:
        read_slots(c, prompt)
    except Malformed as e:
        raise InterpError(f"{where} {_WHY.get(e.kind, e.kind)} ({e}). {advice}") from None


async def simulation_mode(client: LLMClient | None, cfg: AutointerpConfig) -> str:
    """``all_at_once`` or ``chat`` for this run (``ngram`` without an LLM), checking the server first when
    all at once is asked for; falls back to chat only with ``simulation_fallback``."""
    if client is None:
        return "ngram"
    wanted = cfg.simulation
    if wanted == "auto":
        wanted = "all_at_once" if client.cfg.api == "completions" else "chat"
    if wanted == "chat":
        return "chat"
    try:
        await check_server(client, cfg)
    except InterpError as e:
        if not cfg.simulation_fallback:
            raise
        log.warning("%s Falling back to chat simulation (--simulation-fallback).", e)
        return "chat"
    return "all_at_once"
