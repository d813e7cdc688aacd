"""The LLM-free explainer and simulator: token and bigram patterns.

The explainer describes a feature by the tokens it is active on in its train examples, chosen greedily
to cover as many examples as possible with tokens that are *specific* (mostly marked where they occur in
the windows), each with the token before it when one context token accounts for nearly every marked
occurrence and makes the pattern more specific. The explanation is plain text that a person and an LLM
can read and that :class:`NgramSimulator` can parse::

    Tokens: " return" after "\\n"; "self"

The simulator predicts 1 on a token that matches an item of an explanation (a quoted JSON string,
optionally ``after`` another), else 0. Matching ignores surrounding whitespace and case, except for
tokens that are only whitespace. It reads any explanation that quotes tokens, an LLM's included (for
``The token "er" at the end of comparatives`` it predicts 1 on "er"), which is what lets the whole
pipeline score offline: detection, fuzzing and simulation all run on this simulator when no LLM is
configured, and the random-explanation control is simulated the same way.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Sequence
from typing import NamedTuple

from interp.autointerp.examples import Example

_QUOTED = r'"(?:[^"\\]|\\.)*"'
_ITEM = re.compile(rf"({_QUOTED})(?:\s+after\s+({_QUOTED}))?")


class Item(NamedTuple):
    """One pattern: a token, optionally required to follow another."""

    token: str
    after: str | None = None


def _key(tok: str) -> str:
    s = tok.strip()
    return s.casefold() if s else tok


def format_items(items: Sequence[Item]) -> str:
    def q(s: str) -> str:
        return json.dumps(s, ensure_ascii=False)

    return "Tokens: " + "; ".join(q(i.token) + (f" after {q(i.after)}" if i.after is not None else "")
                                  for i in items)


def parse_items(explanation: str) -> list[Item]:
    """Every quoted token (and its ``after`` context) in an explanation, in order."""
    items = []
    for m in _ITEM.finditer(explanation):
        try:
            tok = json.loads(m.group(1))
            after = json.loads(m.group(2)) if m.group(2) else None
        except json.JSONDecodeError:
            continue
        if isinstance(tok, str) and tok:
            items.append(Item(tok, after if isinstance(after, str) else None))
    return items


class NgramSimulator:
    """Predicts, for each token of a text, whether an explanation's patterns match it (1.0) or not (0.0)."""

    def __init__(self, explanation: str):
        self.items = parse_items(explanation)
        self._plain = {_key(i.token) for i in self.items if i.after is None}
        self._after = {(_key(i.token), _key(i.after)) for i in self.items if i.after is not None}

    def predict(self, tokens: Sequence[str]) -> list[float]:
        out = []
        for n, tok in enumerate(tokens):
            k = _key(tok)
            hit = k in self._plain or (n > 0 and (k, _key(tokens[n - 1])) in self._after)
            out.append(1.0 if hit else 0.0)
        return out


def explain_ngrams(examples: Sequence[Example], threshold: float = 0.3, max_items: int = 4,
                   min_precision: float = 0.3, coverage: float = 0.9) -> str:
    """An n-gram explanation of ``examples`` (activating windows), or ``Tokens: (none)`` if none fire.

    A token occurrence is *marked* when its activation exceeds ``threshold`` x its example's max. Items
    are added greedily by (examples newly covered) x precision, where precision is marked occurrences /
    all occurrences in the windows, until ``coverage`` of the examples is covered or ``max_items``.
    """
    marked_in: dict[str, set[int]] = {}
    marked: Counter[str] = Counter()
    seen: Counter[str] = Counter()
    prev_marked: dict[str, Counter[str]] = {}
    prev_seen: dict[str, Counter[str]] = {}
    for n, ex in enumerate(examples):
        top = ex.max_act
        for pos, (tok, a) in enumerate(zip(ex.tokens, ex.acts)):
            k, prev = _key(tok), (ex.tokens[pos - 1] if pos else None)
            seen[k] += 1
            if prev is not None:
                prev_seen.setdefault(k, Counter())[_key(prev)] += 1
            if top > 0 and a > threshold * top:
                marked[k] += 1
                marked_in.setdefault(k, set()).add(n)
                if prev is not None:
                    prev_marked.setdefault(k, Counter())[_key(prev)] += 1
    if not marked:
        return "Tokens: (none)"
    spelled = _spellings(examples)
    covered: set[int] = set()
    items: list[Item] = []
    while len(items) < max_items and len(covered) < coverage * len(examples):
        used = {_key(i.token) for i in items}
        gains = {k: len(marked_in[k] - covered) * marked[k] / seen[k] for k in marked_in if k not in used}
        best = max(gains, key=lambda k: gains[k], default=None)
        if best is None or gains[best] == 0 or marked[best] / seen[best] < min_precision:
            break
        items.append(_with_context(best, spelled, marked, seen, prev_marked, prev_seen))
        covered |= marked_in[best]
    return format_items(items) if items else "Tokens: (none)"


def _spellings(examples: Sequence[Example]) -> dict[str, str]:
    """The most common raw spelling of each matching key (so the explanation shows a real token)."""
    counts: dict[str, Counter[str]] = {}
    for ex in examples:
        for tok in ex.tokens:
            counts.setdefault(_key(tok), Counter())[tok] += 1
    return {k: c.most_common(1)[0][0] for k, c in counts.items()}


def _with_context(k: str, spelled: dict[str, str], marked: Counter[str], seen: Counter[str],
                  prev_marked: dict[str, Counter[str]], prev_seen: dict[str, Counter[str]]) -> Item:
    """The item for key ``k``: with its preceding token when that context explains nearly all of its
    marked occurrences and is more precise than the token alone."""
    pm = prev_marked.get(k)
    if pm:
        p, count = pm.most_common(1)[0]
        precise = count / prev_seen[k][p] > marked[k] / seen[k] + 0.1
        if count >= 2 and count >= 0.8 * marked[k] and precise:
            return Item(spelled[k], spelled.get(p, p))
    return Item(spelled[k])
