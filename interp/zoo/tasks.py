"""Code tasks on held-out stdlib text: where a model must use its context, scored against n-gram baselines.

Each task is a set of items ``(context, position, target, source)`` over the same held-out contexts that
the held-out loss uses (documents tokenized in order, each followed by EOS, cut into ``[BOS] + T - 1``
token contexts). The model is scored by whether its top next-token prediction at ``position`` is
``target`` (the token at ``position + 1``); ``source`` is the earlier position that holds the evidence
(what a circuit would read). Two baselines that see no more than the current token are scored on the
same items: the **unigram** baseline always predicts the most frequent train-split token; the **bigram**
baseline predicts the most frequent train-split successor of the current token.

Tasks (``TASKS``):

- ``repeated_identifier``: at the second occurrence of an identifier (a regex ``[A-Za-z_]\\w*`` that is not
  a keyword) spelt by the same two or more tokens as its first occurrence in the same context, predict its
  second token from its first. ``source`` is the second token of the first occurrence.
- ``closing_bracket``: predict a token that starts with ``)``, ``]`` or ``}`` closing a bracket opened in
  the same context (brackets matched with Python's own ``tokenize``). ``source`` is the opening token.
- ``self_attribute``: after ``self.``, predict the first token of an attribute name already used as
  ``self.<name>`` (with the same first token) earlier in the same context. ``source`` is that earlier token.
"""

from __future__ import annotations

import io
import keyword
import re
import tokenize
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np
import torch

from interp.errors import InterpError

_IDENTIFIER = re.compile(r"[A-Za-z_]\w*")
_CLOSERS = {")": "(", "]": "[", "}": "{"}


@dataclass(frozen=True)
class Document:
    """One tokenized document: ``ids`` (n,) int64 and character ``offsets`` (n, 2) of each token in ``text``."""

    text: str
    ids: np.ndarray
    offsets: np.ndarray


@dataclass(frozen=True)
class HeldoutText:
    """Documents packed into contexts. ``contexts`` (N, T) int64; ``doc`` and ``index`` (N, T) give each
    position's document and token index in it (-1 for BOS and EOS)."""

    documents: list[Document]
    contexts: torch.Tensor
    doc: np.ndarray
    index: np.ndarray


class TaskItems(NamedTuple):
    """The items of one task, each (N,) int64: context row, scored position, target token, evidence position."""

    context: np.ndarray
    position: np.ndarray
    target: np.ndarray
    source: np.ndarray


class Baselines(NamedTuple):
    """N-gram predictors from the train split: the most frequent token, and per token its most frequent successor."""

    unigram_top: int
    bigram_top: np.ndarray
    """(vocab,) int64; a token never seen followed by another predicts ``unigram_top``."""


def encode_documents(tokenizer: Any, texts: list[str]) -> list[Document]:
    """Tokenize ``texts`` with a fast tokenizer (no special tokens), keeping character offsets."""
    encoded = tokenizer.backend_tokenizer.encode_batch(texts, add_special_tokens=False)
    return [
        Document(text, np.array(e.ids, dtype=np.int64), np.array(e.offsets, dtype=np.int64).reshape(-1, 2))
        for text, e in zip(texts, encoded)
    ]


def pack_documents(documents: list[Document], seq_len: int, bos: int, eos: int) -> HeldoutText:
    """Concatenate documents (each followed by EOS) and cut them into ``[BOS] + seq_len - 1`` contexts,
    the last one dropped if short (so every context has ``seq_len`` tokens)."""
    ids = np.concatenate([np.append(d.ids, eos) for d in documents])
    doc = np.concatenate([np.append(np.full(len(d.ids), i), -1) for i, d in enumerate(documents)])
    index = np.concatenate([np.append(np.arange(len(d.ids)), -1) for d in documents])
    body = seq_len - 1
    rows = len(ids) // body
    if rows == 0:
        raise InterpError(f"the documents hold {len(ids)} tokens, fewer than one context of {seq_len}")

    def cut(values: np.ndarray, first: int) -> np.ndarray:
        return np.concatenate([np.full((rows, 1), first), values[: rows * body].reshape(rows, body)], axis=1)

    return HeldoutText(documents, torch.from_numpy(cut(ids, bos)), cut(doc, -1), cut(index, -1))


def ngram_baselines(train_ids: list[np.ndarray], vocab_size: int) -> Baselines:
    """Unigram and bigram predictors from token-id sequences (pairs never cross a sequence boundary)."""
    counts = np.bincount(np.concatenate(train_ids), minlength=vocab_size)
    unigram_top = int(counts.argmax())
    pairs = np.concatenate([seq[:-1].astype(np.int64) * vocab_size + seq[1:] for seq in train_ids if len(seq) > 1])
    codes, n = np.unique(pairs, return_counts=True)
    first, second = codes // vocab_size, codes % vocab_size
    order = np.lexsort((-n, first))  # by current token, most frequent successor first
    top = np.full(vocab_size, unigram_top, dtype=np.int64)
    seen = np.unique(first[order], return_index=True)
    top[seen[0]] = second[order][seen[1]]
    return Baselines(unigram_top, top)


# ---- finding items in document coordinates ---------------------------------------------------------------
def _token_span(doc: Document, start: int, end: int) -> tuple[int, int] | None:
    """Token range [first, last] spelling the characters [start, end): the first token may begin before
    ``start`` (a leading space or dot), every later token begins inside, the last ends exactly at ``end``."""
    first = int(np.searchsorted(doc.offsets[:, 1], start, side="right"))
    last = int(np.searchsorted(doc.offsets[:, 1], end, side="left"))
    if last >= len(doc.ids) or doc.offsets[last, 1] != end or first > last:
        return None
    return first, last


def _repeated_identifiers(doc: Document) -> Iterator[tuple[int, int, int]]:
    """(evidence index, position index, target index) in document tokens, per second occurrence."""
    first_seen: dict[tuple[str, tuple[int, ...]], int] = {}
    count: dict[tuple[str, tuple[int, ...]], int] = {}
    for match in _IDENTIFIER.finditer(doc.text):
        if keyword.iskeyword(match.group()):
            continue
        span = _token_span(doc, match.start(), match.end())
        if span is None or span[1] == span[0]:
            continue
        key = (match.group(), tuple(doc.ids[span[0] : span[1] + 1].tolist()))
        count[key] = count.get(key, 0) + 1
        if count[key] == 1:
            first_seen[key] = span[0]
        elif count[key] == 2:
            yield first_seen[key] + 1, span[0], span[0] + 1


def _python_tokens(text: str) -> list[tokenize.TokenInfo]:
    try:
        return list(tokenize.generate_tokens(io.StringIO(text).readline))
    except (tokenize.TokenError, SyntaxError, IndentationError):
        return []


def _char_offsets(text: str) -> Callable[[tuple[int, int]], int]:
    starts = np.cumsum([0] + [len(line) for line in text.splitlines(keepends=True)])
    return lambda rowcol: int(starts[rowcol[0] - 1] + rowcol[1])


def _token_starting_at(doc: Document, char: int) -> int | None:
    i = int(np.searchsorted(doc.offsets[:, 0], char))
    return i if i < len(doc.ids) and doc.offsets[i, 0] == char else None


def _token_containing(doc: Document, char: int) -> int:
    return int(np.searchsorted(doc.offsets[:, 1], char, side="right"))


def _closing_brackets(doc: Document) -> Iterator[tuple[int, int, int]]:
    stack: list[int] = []
    at = _char_offsets(doc.text)
    for tok in _python_tokens(doc.text):
        if tok.type != tokenize.OP or tok.string not in "([{)]}":
            continue
        if tok.string in "([{":
            stack.append(at(tok.start))
        elif stack:
            opened = stack.pop()
            target = _token_starting_at(doc, at(tok.start))
            if target is not None and target > 0 and doc.text[opened] == _CLOSERS[tok.string]:
                yield _token_containing(doc, opened), target - 1, target


def _self_attributes(doc: Document) -> Iterator[tuple[int, int, int]]:
    seen: dict[tuple[str, int], int] = {}
    tokens = _python_tokens(doc.text)
    at = _char_offsets(doc.text)
    for a, b, c in zip(tokens, tokens[1:], tokens[2:]):
        if (a.string, b.string, c.type) != ("self", ".", tokenize.NAME):
            continue
        target = _token_containing(doc, at(c.start))
        if target == 0 or target >= len(doc.ids):
            continue
        key = (c.string, int(doc.ids[target]))
        if key in seen:
            yield seen[key], target - 1, target
        else:
            seen[key] = target


TASKS: dict[str, Callable[[Document], Iterator[tuple[int, int, int]]]] = {
    "repeated_identifier": _repeated_identifiers,
    "closing_bracket": _closing_brackets,
    "self_attribute": _self_attributes,
}
"""Task name -> item finder over one document, yielding (evidence, position, target) token indices."""


def find_items(text: HeldoutText, task: str) -> TaskItems:
    """The items of ``task`` whose evidence, position and target all fall in one context."""
    if task not in TASKS:
        raise InterpError(f"unknown task {task!r}; choose from {sorted(TASKS)}")
    where = {(int(d), int(i)): (row, pos) for (row, pos), d, i in _positions(text) if d >= 0}
    rows: list[tuple[int, int, int, int]] = []
    for d, doc in enumerate(text.documents):
        for evidence, position, target in TASKS[task](doc):
            places = [where.get((d, i)) for i in (evidence, position, target)]
            if None in places or len({p[0] for p in places if p}) != 1:
                continue
            (row, source), (_, pos), _ = places  # type: ignore[misc]
            rows.append((row, pos, int(doc.ids[target]), source))
    table = np.array(rows, dtype=np.int64).reshape(-1, 4)
    return TaskItems(table[:, 0], table[:, 1], table[:, 2], table[:, 3])


def _positions(text: HeldoutText) -> Iterator[tuple[tuple[int, int], int, int]]:
    for row in range(text.doc.shape[0]):
        for pos in range(text.doc.shape[1]):
            yield (row, pos), int(text.doc[row, pos]), int(text.index[row, pos])


def model_accuracy(items: TaskItems, top: torch.Tensor) -> float:
    """Fraction of items where the model's top-1 prediction ``top`` (N, T - 1) is the target
    (``top[c, p]`` predicts the token at ``p + 1``)."""
    _check_items(items)
    return float((top.numpy()[items.context, items.position] == items.target).mean())


def baseline_accuracies(items: TaskItems, contexts: torch.Tensor, baselines: Baselines) -> tuple[float, float]:
    """(unigram, bigram) top-1 accuracies on ``items``, the bigram baseline reading the current tokens."""
    _check_items(items)
    current = contexts.numpy()[items.context, items.position]
    return (
        float((items.target == baselines.unigram_top).mean()),
        float((baselines.bigram_top[current] == items.target).mean()),
    )


def _check_items(items: TaskItems) -> None:
    if len(items.target) == 0:
        raise InterpError("the task has no items in these contexts; use more held-out text")
