"""The prompts interp sends, and the parsers of what comes back.

Structure follows Paulo et al. 2024 / delphi (specs/methods.md section 9); the wording and few-shot
examples are interp's own. ``docs/autointerp.md`` shows every prompt for one feature and how it differs
from delphi's.

- explainer: a system prompt, two few-shot exchanges, then the examples with marked tokens ``<<like
  this>>`` (consecutive marked tokens merged; a token is marked when its activation exceeds
  ``threshold`` x the example's max) and optionally an ``Activations:`` line per example (at most
  ``MAX_SHOWN_ACTS`` tokens, values ceil(10 a / max_act) clamped to 0..10); the answer's last line is
  ``[EXPLANATION]: ...``;
- detection / fuzzing / intervention scoring: a system prompt, one few-shot exchange, then the
  explanation and numbered texts; the answer is a JSON list of 0/1, one per text;
- simulation: the explanation and the numbered tokens of one text; the answer is a JSON list of
  integers 0..10, one per token, whose expected values are read from the top log-probabilities.

Texts are shown on one line each: a newline is written ``\\n`` and a tab ``\\t``.
"""

from __future__ import annotations

import functools
import json
import math
import re
from collections.abc import Sequence

from interp.autointerp.wire import TokenLogprob

MAX_SHOWN_ACTS = 10

EXPLAINER_SYSTEM = """You study a feature of a language model: a direction inside the model that becomes active \
on some tokens. You will see text excerpts where the feature is active. In each excerpt the tokens it is \
active on are wrapped in << and >>; several active tokens in a row share one pair of markers. When an \
"Activations:" line follows an excerpt, it gives the strength (1 to 10) of the feature on its marked tokens.

Find what the marked tokens, and the text just before them, have in common, and describe it in one short \
phrase or sentence. Be specific: name the token or the kind of word, and the context when it matters.
- Do not mention the markers << >>.
- Do not give a list of alternatives; commit to the single best description.
- End your answer with one line of the form
[EXPLANATION]: <your description>"""

EXPLAINER_SHOTS = [
    ("""Excerpt 1: for <<i>> in range(n):\\n    total += i
Activations: ("i", 9)
Excerpt 2: ue\\n        for <<key>>, value in items:
Activations: ("key", 7)
Excerpt 3: [x * 2 for <<x>> in values if x]
Activations: ("x", 10)""",
     "[EXPLANATION]: The name of a loop variable, right after the keyword \"for\"."),
    ("""Excerpt 1: she bought three <<apples>> and a pear
Activations: ("apples", 8)
Excerpt 2: walked for 12 <<miles>> before
Activations: ("miles", 10)
Excerpt 3: about 40 <<people were>> there
Activations: ("people", 6), (" were", 2)""",
     "[EXPLANATION]: Plural nouns counted by a number just before them."),
]

DETECTION_SYSTEM = """You check a description of a feature of a language model against text. The feature \
becomes active on some tokens of some texts; the description says which.

You will get the description and numbered texts. For each text, in order, answer 1 if the feature would be \
active somewhere in that text according to the description, and 0 if it would not. Reply with a JSON list \
of 0s and 1s, one per text, and nothing else."""

DETECTION_SHOT = ("""Feature description: The name of a loop variable, right after the keyword "for".

Texts:
Text 1: def f(xs):\\n    for item in xs:
Text 2: The weather was mild for most of the year
Text 3: return sum(v for v in values)""", "[1, 0, 1]")

FUZZING_SYSTEM = """You check a description of a feature of a language model against marked text. The \
feature becomes active on some tokens; the description says which.

You will get the description and numbered texts in which some tokens are wrapped in << and >>. A text is \
correctly marked only if every marked token is one the feature is active on according to the description. \
For each text, in order, answer 1 if it is correctly marked and 0 if any marked token is wrong. Reply with \
a JSON list of 0s and 1s, one per text, and nothing else."""

FUZZING_SHOT = ("""Feature description: The name of a loop variable, right after the keyword "for".

Texts:
Text 1: def f(xs):\\n    for <<item>> in xs:
Text 2: The weather was <<mild>> for most of the year
Text 3: return sum(v for <<v>> in <<values>>)""", "[1, 0, 0]")

SIMULATION_SYSTEM = """You predict how strongly a feature of a language model is active on each token of a \
text, given a description of the feature. Activations go from 0 (not active) to 10 (as active as it ever \
gets); most tokens are 0.

You will get the description and the text's tokens, numbered, one per line. Reply with a JSON list of \
integers from 0 to 10, one per token, in order, and nothing else."""

SIMULATION_SHOT = ("""Feature description: The name of a loop variable, right after the keyword "for".

Tokens:
1 "for"
2 " x"
3 " in"
4 " xs"
5 ":"

Reply with a JSON list of 5 integers.""", "[0, 10, 0, 0, 0]")

INTERVENTION_EXPLAINER_SYSTEM = """You study a feature of a language model by turning it up while the \
model writes. You will see pairs of continuations of the same prompt: "clean" was written normally, \
"steered" with the feature turned up.

Describe in one short phrase or sentence what turning the feature up does to the text: which words, \
topics or patterns become more common. Do not list alternatives.
End your answer with one line of the form
[EXPLANATION]: <your description>"""

INTERVENTION_SCORER_SYSTEM = """You check a description of what turning up a feature of a language model \
does to the text it writes. You will get the description and numbered continuations; some were written \
with the feature turned up, some normally.

For each continuation, in order, answer 1 if it shows the described effect and 0 if it does not. Reply \
with a JSON list of 0s and 1s, one per continuation, and nothing else."""


def one_line(text: str) -> str:
    """Text on one line: newline written as \\n, tab as \\t, carriage return as \\r."""
    return text.replace("\\", "\\\\").replace("\n", "\\n").replace("\t", "\\t").replace("\r", "\\r")


def description_line(text: str) -> str:
    """A feature description on one line: its line breaks and tabs become spaces, and nothing else changes. A
    description is prose, often quoting tokens JSON-style (``"\\n"``); escaping it as :func:`one_line` escapes
    example text would double those backslashes."""
    return " ".join(part.strip() for part in re.split(r"[\r\n]+", text.strip())).replace("\t", " ")


def mark(tokens: Sequence[str], marked: Sequence[bool]) -> str:
    """Tokens joined, with each run of marked tokens wrapped in ``<<`` ``>>``."""
    out, inside = [], False
    for tok, m in zip(tokens, marked):
        if m and not inside:
            out.append("<<")
        if not m and inside:
            out.append(">>")
        inside = m
        out.append(tok)
    if inside:
        out.append(">>")
    return one_line("".join(out))


def normalised(act: float, max_act: float) -> int:
    """delphi's activation scale: ceil(10 a / max_act), clamped to 0..10."""
    if max_act <= 0 or act <= 0:
        return 0
    return min(10, max(0, math.ceil(10 * act / max_act)))


def explainer_messages(examples: Sequence[tuple[Sequence[str], Sequence[float]]], max_act: float,
                       threshold: float = 0.3, activations: bool = True) -> list[dict[str, str]]:
    """The explainer's chat: system, few-shot exchanges, then ``examples`` as (tokens, activations)."""
    lines = []
    for n, (tokens, acts) in enumerate(examples, 1):
        top = max(acts, default=0.0)
        marked = [a > threshold * top and a > 0 for a in acts]
        lines.append(f"Excerpt {n}: {mark(tokens, marked)}")
        if activations:
            shown = [(t, normalised(a, max_act)) for t, a, m in zip(tokens, acts, marked) if m][:MAX_SHOWN_ACTS]
            lines.append("Activations: " + ", ".join(f"({json.dumps(t, ensure_ascii=False)}, {v})"
                                                     for t, v in shown))
    messages = [{"role": "system", "content": EXPLAINER_SYSTEM}]
    for user, answer in EXPLAINER_SHOTS:
        messages += [{"role": "user", "content": user}, {"role": "assistant", "content": answer}]
    messages.append({"role": "user", "content": "\n".join(lines)})
    return messages


def classifier_messages(system: str, shot: tuple[str, str] | None, explanation: str, texts: Sequence[str],
                        label: str = "Text") -> list[dict[str, str]]:
    """Detection / fuzzing / intervention chat: the explanation, then ``texts`` (already on one line)."""
    body = f"Feature description: {description_line(explanation)}\n\n{label}s:\n" + "\n".join(
        f"{label} {n}: {t}" for n, t in enumerate(texts, 1))
    messages = [{"role": "system", "content": system}]
    if shot:
        messages += [{"role": "user", "content": shot[0]}, {"role": "assistant", "content": shot[1]}]
    messages.append({"role": "user", "content": body + f"\n\nReply with a JSON list of {len(texts)} numbers."})
    return messages


def simulation_messages(explanation: str, tokens: Sequence[str]) -> list[dict[str, str]]:
    """The simulator's chat for one text."""
    listed = "\n".join(f"{n} {json.dumps(t, ensure_ascii=False)}" for n, t in enumerate(tokens, 1))
    body = (f"Feature description: {description_line(explanation)}\n\nTokens:\n{listed}\n\n"
            f"Reply with a JSON list of {len(tokens)} integers.")
    return [{"role": "system", "content": SIMULATION_SYSTEM}, {"role": "user", "content": SIMULATION_SHOT[0]},
            {"role": "assistant", "content": SIMULATION_SHOT[1]}, {"role": "user", "content": body}]


def intervention_messages(pairs: Sequence[tuple[str, str, str]]) -> list[dict[str, str]]:
    """The intervention explainer's chat: (prompt, clean, steered) triples."""
    body = "\n\n".join(f"Pair {n}\nPrompt: {one_line(p)}\nClean: {one_line(c)}\nSteered: {one_line(s)}"
                       for n, (p, c, s) in enumerate(pairs, 1))
    return [{"role": "system", "content": INTERVENTION_EXPLAINER_SYSTEM}, {"role": "user", "content": body}]


# ---- parsing ---------------------------------------------------------------------------------------
class Malformed(ValueError):
    """An answer that does not have the asked-for shape; ``kind`` names what was wrong."""

    KINDS = ("empty", "no_list", "invalid_json", "wrong_length", "bad_values", "no_explanation")

    def __init__(self, kind: str, detail: str = ""):
        super().__init__(f"{kind}: {detail}" if detail else kind)
        self.kind = kind


_EXPLANATION = re.compile(r"\[EXPLANATION\]\s*:\s*(.+)", re.IGNORECASE)


def parse_explanation(text: str) -> str:
    """The description after the last ``[EXPLANATION]:``; raises :class:`Malformed` if there is none."""
    if not text.strip():
        raise Malformed("empty")
    found = _EXPLANATION.findall(text)
    if not found or not found[-1].strip():
        raise Malformed("no_explanation", text[:80])
    return found[-1].strip()


def parse_int_list(text: str, n: int, lo: int = 0, hi: int = 1) -> list[int]:
    """The first JSON list in ``text``: ``n`` integers in [lo, hi] (booleans and "0"/"1" strings allowed)."""
    if not text.strip():
        raise Malformed("empty")
    m = re.search(r"\[[^\[\]]*\]", text)
    if m is None:
        raise Malformed("no_list", text[:80])
    try:
        values = json.loads(m.group(0))
    except json.JSONDecodeError as e:
        raise Malformed("invalid_json", str(e)) from None
    if len(values) != n:
        raise Malformed("wrong_length", f"{len(values)} values for {n} items")
    out = []
    for v in values:
        if isinstance(v, str) and v.strip().isdigit():
            v = int(v.strip())
        if isinstance(v, float) and v.is_integer():
            v = int(v)
        if not isinstance(v, (int, bool)) or not lo <= int(v) <= hi:
            raise Malformed("bad_values", repr(v))
        out.append(int(v))
    return out


@functools.lru_cache(maxsize=4096)
def _number(token: str) -> int | None:
    s = token.strip().strip("[],").strip()
    return int(s) if s.isdigit() else None


def value_distributions(logprobs: Sequence[TokenLogprob] | None, n: int, hi: int) -> list[dict[int, float]] | None:
    """For each of the ``n`` numbers of a JSON-list answer, the probability of each value 0..hi.

    The numbers are the generated tokens that are integers (after stripping brackets, commas and
    spaces); at each, the top alternatives that are integers in 0..hi are renormalised. None when the
    answer's tokens do not hold exactly ``n`` numbers (e.g. a number split over two tokens).
    """
    if not logprobs:
        return None
    out = []
    for t in logprobs:
        if _number(t.token) is None:
            continue
        probs: dict[int, float] = {}
        top = t.top or {t.token: t.logprob}
        for alt, lp in top.items():
            v = _number(alt)
            if v is not None and 0 <= v <= hi:
                probs[v] = probs.get(v, 0.0) + math.exp(lp)
        total = sum(probs.values())
        out.append({v: p / total for v, p in probs.items()} if total > 0 else {})
    return out if len(out) == n else None


def expected_values(dists: Sequence[dict[int, float]]) -> list[float | None]:
    """Expected value of each distribution (None for an empty one)."""
    return [sum(v * p for v, p in d.items()) if d else None for d in dists]
