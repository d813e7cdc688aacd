"""The circuit tasks of the literature, for GPT-2-class models: IOI, greater-than and docstring.

Each generator samples prompt pairs from templates and word lists, keeps only words that the model's tokenizer
encodes as one token (names and argument names with their leading space; two-digit years), and keeps only
pairs whose clean and corrupted prompts tokenise to the same length. When too few words survive it raises an
:class:`InterpError` that says which list ran short, so a tokenizer that cannot express the task is refused
rather than given a broken task.

- **IOI** (Wang et al. 2022): "When Mary and John went to the store, John gave a drink to" -> " Mary";
  metric logit(IO) - logit(S); corruption **ABC**: the three name slots hold three other distinct names.
- **Greater-than** (Hanna et al. 2023): "The war lasted from the year 1732 to the year 17" -> any two-digit
  token above 32; metric prob-diff (sum of p above YY minus sum at or below); corruption **YY = 01**.
- **Docstring** (Heimersheim & Janiak 2023; ACDC's generator settings: 3 matching arguments, 2 def-prefix,
  1 def-suffix, 3 description words, 2 words per parameter description, reST style): predict the next
  ``:param`` name; metric logit(correct) - max logit(wrong arguments); corruption **random_random**: fresh
  names in the def's middle arguments and in the docstring.

``GROUND_TRUTH`` holds the published node sets (ACDC's, as mirrored by auto-circuit; specs/methods.md §11).
The word lists are our own.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from typing import Any

from interp.circuits.tasks import Task, task_from_text
from interp.errors import InterpError

NAMES = (
    "Mary John Alice Bob James Sarah Michael Emma David Laura Daniel Anna Thomas Kate Paul Lisa Mark Susan Peter "
    "Jane Robert Linda Steven Karen Brian Helen Kevin Nancy Jason Amy Eric Rachel Adam Julia Ryan Grace Sam Tom "
    "Max Lucy Jack Rose Ben Amber Sean Claire Luke Diana"
).split()
PLACES = "store park school office hospital station garden restaurant library market beach river".split()
OBJECTS = "drink book ring bag letter key apple ball flower gift pen basket".split()
IOI_TEMPLATES = (
    "When {A} and {B} went to the {place}, {S} gave a {object} to",
    "Then, {A} and {B} had a long talk at the {place}. {S} gave a {object} to",
    "After {A} and {B} arrived at the {place}, {S} handed a {object} to",
    "While {A} and {B} were working at the {place}, {S} passed a {object} to",
    "Friends {A} and {B} found a {object} at the {place}. {S} gave it to",
)
YEAR_NOUNS = "war dispute expedition reign project journey campaign siege trial drought".split()
IDENTIFIERS = (
    "data name file value test result line user key path output node item model text size index error state "
    "count label query config source target message options color token mode shape field order group table "
    "event title format width height parent child filename content header status number"
).split()
WORDS = (
    "price control action issue process position course type research subject age force order matter health "
    "street class mind paper bank section table sense team language town plan product evidence ground letter "
    "game food role event support range stage trade voice field history account material record window light"
).split()

GROUND_TRUTH: dict[str, tuple[str, ...]] = {
    "ioi": tuple(f"a{h.replace('.', '.h')}" for h in (
        "9.9 10.0 9.6 10.10 10.6 10.2 10.1 11.2 9.7 9.0 11.9 10.7 11.10 7.3 7.9 8.6 8.10 5.5 5.8 5.9 6.9 "
        "0.1 0.10 3.0 2.2 4.11").split()),
    "greater-than": tuple(f"a{h.replace('.', '.h')}" for h in "0.1 0.3 0.5 5.5 6.1 6.9 7.10 8.11 9.1".split())
    + tuple(f"m{layer}" for layer in (0, 1, 2, 3, 8, 9, 10, 11)),
    "docstring": tuple(f"a{h.replace('.', '.h')}" for h in "0.5 1.2 1.4 2.0 3.0 3.6".split()),
}
"""Published circuits as node ids: IOI and greater-than on GPT-2 small, docstring on attn-only-4l."""


def _single(tokenizer: Any, words: Sequence[str], prefix: str, need: int, what: str) -> list[str]:
    ok = [w for w in words if len(tokenizer.encode(prefix + w, add_special_tokens=False)) == 1]
    if len(ok) < need:
        raise InterpError(
            f"Only {len(ok)} of {len(words)} {what} are single tokens (with {prefix!r} before them) under this "
            f"model's tokenizer; the task needs at least {need}. It is defined for GPT-2-class BPE vocabularies."
        )
    return ok


def _collect(model: Any, make: Callable[[random.Random], tuple[str, str, Any, Any]], n: int, seed: int,
             name: str) -> tuple[list[str], list[str], list[Any], list[Any]]:
    """Draw pairs from ``make`` until ``n`` of them have equal clean and corrupted token lengths."""
    rng = random.Random(seed)
    out: tuple[list[Any], ...] = ([], [], [], [])
    for _ in range(20 * n):
        pair = make(rng)
        a, b = (len(model.tokenizer.encode(t, add_special_tokens=False)) for t in pair[:2])
        if a == b:
            for col, value in zip(out, pair):
                col.append(value)
            if len(out[0]) == n:
                return out  # type: ignore[return-value]
    raise InterpError(f"Could not draw {n} {name} prompt pairs of equal token length with this tokenizer.")


def ioi_task(model: Any, n_prompts: int = 64, seed: int = 0) -> Task:
    """Indirect object identification with the ABC corruption (see the module docstring)."""
    names = _single(model.tokenizer, NAMES, " ", 5, "names")

    def make(rng: random.Random) -> tuple[str, str, str, str]:
        io, s, x, y, z = rng.sample(names, 5)
        template, place, obj = rng.choice(IOI_TEMPLATES), rng.choice(PLACES), rng.choice(OBJECTS)
        first = (io, s) if rng.random() < 0.5 else (s, io)  # ABBA and BABA orders
        clean = template.format(A=first[0], B=first[1], S=s, place=place, object=obj)
        corrupt = template.format(A=x, B=y, S=z, place=place, object=obj)
        return clean, corrupt, " " + io, " " + s

    clean, corrupt, answers, wrong = _collect(model, make, n_prompts, seed, "IOI")
    return task_from_text(model, "ioi", clean, corrupt, answers, wrong, metric="logit_diff",
                          description="indirect object identification; ABC corruption; logit(IO) - logit(S)",
                          info={"seed": seed})


def greater_than_task(model: Any, n_prompts: int = 64, seed: int = 0) -> Task:
    """Greater-than on years with the YY = 01 corruption and the prob-diff metric."""
    tok = model.tokenizer
    two_digit = [f"{y:02d}" for y in range(100)]
    if len(_single(tok, tuple(two_digit), "", 0, "two-digit numbers")) < 100:
        raise InterpError("Greater-than needs every two-digit number 00..99 to be one token (GPT-2's vocabulary); "
                          "this tokenizer splits some of them.")
    centuries = [c for c in range(11, 18)
                 if tok.encode(f" {c}01", add_special_tokens=False) == tok.encode(f" {c}", add_special_tokens=False)
                 + tok.encode("01", add_special_tokens=False)]
    if not centuries:
        raise InterpError("Greater-than needs years 'XXYY' to tokenise as [' XX', 'YY']; this tokenizer does not.")
    nouns = _single(tok, tuple(YEAR_NOUNS), " ", 1, "event nouns")

    def make(rng: random.Random) -> tuple[str, str, list[str], list[str]]:
        century, yy, noun = rng.choice(centuries), rng.randint(2, 98), rng.choice(nouns)
        clean = f"The {noun} lasted from the year {century}{yy:02d} to the year {century}"
        corrupt = f"The {noun} lasted from the year {century}01 to the year {century}"
        return clean, corrupt, two_digit[yy + 1 :], two_digit[: yy + 1]

    clean, corrupt, answers, wrong = _collect(model, make, n_prompts, seed, "greater-than")
    return task_from_text(model, "greater-than", clean, corrupt, answers, wrong, metric="prob_diff",
                          description="greater-than on years; YY = 01 corruption; p(> YY) - p(<= YY)",
                          info={"seed": seed})


def _docstring_prompt(method: str, desc: list[str], def_args: list[str], doc_args: list[str],
                      doc_desc: list[list[str]]) -> str:
    lines = [f"    :param {arg}: {' '.join(words)}" for arg, words in zip(doc_args, doc_desc)]
    head = f'\ndef {method}(self, {", ".join(def_args)}):\n    """{" ".join(desc)}\n\n'
    return head + "\n".join(lines) + "\n    :param"


def docstring_task(model: Any, n_prompts: int = 64, seed: int = 0) -> Task:
    """Docstring argument completion with the random_random corruption (ACDC's settings)."""
    names = _single(model.tokenizer, tuple(IDENTIFIERS), " ", 13, "identifiers")

    def make(rng: random.Random) -> tuple[str, str, str, list[str]]:
        method, answer_rand, *args = rng.sample(names, 13)
        mid_def_rand, mid_doc_rand = args[0:3], args[3:5]
        matching, prefix, suffix = args[5:8], args[8:10], args[10:11]
        desc, doc_desc = rng.sample(WORDS, 3), [rng.sample(WORDS, 2) for _ in range(2)]
        clean = _docstring_prompt(method, desc, prefix + matching + suffix, matching[:-1], doc_desc)
        corrupt = _docstring_prompt(method, desc, prefix + mid_def_rand + suffix, mid_doc_rand, doc_desc)
        wrong = [" " + a for a in [answer_rand, *args] if a != matching[-1]]
        return clean, corrupt, " " + matching[-1], wrong

    clean, corrupt, answers, wrong = _collect(model, make, n_prompts, seed, "docstring")
    return task_from_text(model, "docstring", clean, corrupt, answers, wrong, metric="logit_diff",
                          description="docstring parameter completion; random_random corruption; "
                                      "logit(correct) - max logit(wrong)", info={"seed": seed})
