"""Corpora and packing documents into fixed-length token contexts.

A corpus is named by one string:
- ``stdlib`` (``stdlib:train``, ``stdlib:heldout``): the Python standard library's own source files,
  read in place; the demo model's corpus;
- a local file, directory or glob of ``.txt`` / ``.jsonl`` / ``.json`` / ``.parquet`` files (text files
  are one document per file);
- a Hugging Face dataset name (``name`` or ``name:config``), streamed.

Packing is explicit about BOS: every context is ``[BOS] + ctx_len - 1 tokens`` taken from the
concatenation of documents, with a BOS between documents. Each token carries the index of the document
it came from and its position inside that document (-1 for inserted BOS tokens). For a given corpus,
tokenizer and seed the sequence of contexts is always the same, so a job can skip contexts to resume.
"""

from __future__ import annotations

import glob
import logging
import os
import random
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch

from interp.errors import InterpError
from interp.model.stdlib import iter_stdlib_documents, stdlib_files

log = logging.getLogger(__name__)

_EXT_BUILDER = {".txt": "text", ".text": "text", ".md": "text", ".py": "text", ".jsonl": "json",
                ".json": "json", ".parquet": "parquet"}


@dataclass(frozen=True)
class CorpusConfig:
    """Which documents to read and how to order them."""

    source: str = "stdlib"
    """``stdlib[:split]``, a local path or glob, or a Hugging Face dataset name (``name[:config]``)."""
    split: str = "train"
    """Dataset split for hub datasets (``stdlib`` takes its split after a colon)."""
    text_field: str = "text"
    """Column holding the text, for jsonl / parquet / hub datasets."""
    seed: int | None = 0
    """Document order: shuffled with this seed (a buffer of ``shuffle_buffer`` for streams); None keeps
    the source order."""
    shuffle_buffer: int = 10_000
    """Shuffle buffer for streamed hub datasets."""

    def __post_init__(self) -> None:
        if not self.source:
            raise InterpError("Corpus source is empty. Pass 'stdlib', a local path, or a dataset name.")
        if self.shuffle_buffer < 1:
            raise InterpError(f"shuffle_buffer must be >= 1, got {self.shuffle_buffer}.")


class Context(NamedTuple):
    """One packed context; all three tensors have shape (ctx_len,)."""

    tokens: torch.Tensor
    """Token ids, int64; ``tokens[0]`` is BOS."""
    doc: torch.Tensor
    """Index of the source document in corpus order, int64."""
    pos: torch.Tensor
    """Position of the token inside its document; -1 for inserted BOS tokens. int32."""


def iter_documents(cfg: CorpusConfig) -> Iterator[str]:
    """Yield the corpus's documents as strings, in the order fixed by ``cfg.seed``."""
    source = cfg.source
    if source == "stdlib" or source.startswith("stdlib:"):
        yield from _stdlib(source, cfg.seed)
        return
    files = _local_files(source)
    if files is not None:
        yield from _local(files, cfg)
        return
    yield from _hub(cfg)


def _stdlib(source: str, seed: int | None) -> Iterator[str]:
    split = source.split(":", 1)[1] if ":" in source else "train"
    if split not in ("train", "heldout", "all"):
        raise InterpError(f"Unknown stdlib split {split!r}. Use stdlib:train, stdlib:heldout or stdlib:all.")
    if seed is None:
        yield from iter_stdlib_documents(split)  # type: ignore[arg-type]
        return
    files = stdlib_files(split)  # type: ignore[arg-type]
    random.Random(seed).shuffle(files)
    for f in files:
        yield f.read_text(encoding="utf-8", errors="replace")


def _local_files(source: str) -> list[Path] | None:
    """Files named by a path, directory or glob; None when ``source`` does not look like a path."""
    looks_like_path = os.sep in source or source.startswith((".", "~")) or Path(source).suffix in _EXT_BUILDER
    if any(c in source for c in "*?["):
        files = sorted(Path(p) for p in glob.glob(os.path.expanduser(source), recursive=True))
        files = [f for f in files if f.is_file()]
        if not files:
            raise InterpError(f"Corpus glob {source!r} matches no files.")
        return files
    path = Path(source).expanduser()
    if path.is_dir():
        files = sorted(f for f in path.rglob("*") if f.is_file() and f.suffix in _EXT_BUILDER)
        if not files:
            raise InterpError(f"Corpus directory {path} holds no {'/'.join(sorted(_EXT_BUILDER))} files.")
        return files
    if path.is_file():
        return [path]
    if looks_like_path:
        raise InterpError(f"Corpus path {path} does not exist. Check the path, or use --corpus stdlib.")
    return None


def _local(files: list[Path], cfg: CorpusConfig) -> Iterator[str]:
    builders = {_EXT_BUILDER.get(f.suffix) for f in files}
    if None in builders or len(builders) != 1:
        raise InterpError(
            f"Corpus files must all be one kind (.txt, .jsonl or .parquet); got suffixes "
            f"{sorted({f.suffix for f in files})}."
        )
    builder = builders.pop()
    if builder == "text":
        order = list(files)
        if cfg.seed is not None:
            random.Random(cfg.seed).shuffle(order)
        for f in order:
            yield f.read_text(encoding="utf-8", errors="replace")
        return
    import datasets

    ds = datasets.load_dataset(builder, data_files=[str(f) for f in files], split="train", streaming=True)
    yield from _texts(ds, cfg)


def _hub(cfg: CorpusConfig) -> Iterator[str]:
    import datasets

    name, _, config = cfg.source.partition(":")
    try:
        ds = datasets.load_dataset(name, config or None, split=cfg.split, streaming=True)
    except FileNotFoundError as e:
        raise InterpError(
            f"Dataset {cfg.source!r} is not a local path and could not be found on the Hugging Face hub: {e}"
        ) from e
    except (ConnectionError, OSError) as e:
        raise InterpError(
            f"Cannot stream dataset {cfg.source!r} from the Hugging Face hub (offline?): {e}. Download it "
            "elsewhere and pass the local files with --corpus path/to/files, or use --corpus stdlib."
        ) from e
    yield from _texts(ds, cfg)


def _texts(ds: Any, cfg: CorpusConfig) -> Iterator[str]:
    if cfg.seed is not None:
        ds = ds.shuffle(seed=cfg.seed, buffer_size=cfg.shuffle_buffer)
    for row in ds:
        if cfg.text_field not in row:
            raise InterpError(
                f"Corpus rows have no {cfg.text_field!r} field (fields: {sorted(row)}). "
                "Pass --text-field with the right column."
            )
        yield str(row[cfg.text_field])


def pack_contexts(
    docs: Iterable[str], tokenizer: Any, ctx_len: int, bos_token_id: int, *, encode_batch: int = 64
) -> Iterator[Context]:
    """Pack documents into contexts of ``ctx_len`` tokens, each starting with BOS.

    Documents are tokenized without special tokens and packed by :func:`pack_token_ids`.
    """
    yield from pack_token_ids(_encode(docs, tokenizer, encode_batch), ctx_len, bos_token_id)


def pack_token_ids(docs: Iterable[Sequence[int]], ctx_len: int, bos_token_id: int) -> Iterator[Context]:
    """Pack already tokenized documents (token ids, no special tokens) into contexts of ``ctx_len`` tokens.

    Documents are joined with BOS; when a document starts a context, that context's own BOS is the
    separator. A trailing partial context is dropped, so every context is full. Empty documents are skipped
    (they keep their index in ``Context.doc``).

    The work is done per document with numpy (the contexts a document completes are rows of one array), so a
    background thread packing a corpus holds the GIL for a few operations per document, not per token.
    """
    if ctx_len < 2:
        raise InterpError(f"Context length must be at least 2 (BOS + one token), got {ctx_len}.")
    body = ctx_len - 1
    tok: list[np.ndarray] = []  # what is not in a context yet: pieces of tokens, documents, positions
    doc: list[np.ndarray] = []
    pos: list[np.ndarray] = []
    have = 0
    for doc_index, ids in enumerate(docs):
        n = len(ids)
        if not n:
            continue
        if have:  # separator between documents
            tok.append(np.array([bos_token_id], dtype=np.int64))
            doc.append(np.array([doc_index], dtype=np.int64))
            pos.append(np.array([-1], dtype=np.int32))
            have += 1
        tok.append(np.asarray(ids, dtype=np.int64))
        doc.append(np.full(n, doc_index, dtype=np.int64))
        pos.append(np.arange(n, dtype=np.int32))
        have += n
        if have < body:
            continue
        t, d, p = np.concatenate(tok), np.concatenate(doc), np.concatenate(pos)
        k = have // body
        used = k * body
        tokens = np.empty((k, ctx_len), dtype=np.int64)
        tokens[:, 0], tokens[:, 1:] = bos_token_id, t[:used].reshape(k, body)
        docs_of = np.empty((k, ctx_len), dtype=np.int64)
        docs_of[:, 1:] = d[:used].reshape(k, body)
        docs_of[:, 0] = docs_of[:, 1]  # the BOS belongs to the context's first document
        positions = np.empty((k, ctx_len), dtype=np.int32)
        positions[:, 0], positions[:, 1:] = -1, p[:used].reshape(k, body)
        rows = torch.from_numpy(tokens), torch.from_numpy(docs_of), torch.from_numpy(positions)
        for i in range(k):
            yield Context(rows[0][i], rows[1][i], rows[2][i])
        tok, doc, pos = [t[used:]], [d[used:]], [p[used:]]
        have -= used


def _encode(docs: Iterable[str], tokenizer: Any, batch: int) -> Iterator[list[int]]:
    """Token ids of each document, encoded a few documents at a time: at most ``batch`` of them and, after
    the first, about ``_ENCODE_CHARS`` characters, so the first context comes out after one document and the
    encoder never runs far ahead of what a short job consumes."""
    pending: list[str] = []
    chars, budget = 0, 1
    for doc in docs:
        pending.append(doc)
        chars += len(doc)
        if len(pending) >= batch or chars >= budget:
            yield from tokenizer(pending, add_special_tokens=False)["input_ids"]
            pending, chars, budget = [], 0, _ENCODE_CHARS
    if pending:
        yield from tokenizer(pending, add_special_tokens=False)["input_ids"]


_ENCODE_CHARS = 1 << 16


def iter_contexts(cfg: CorpusConfig, tokenizer: Any, ctx_len: int, bos_token_id: int | None) -> Iterator[Context]:
    """Documents of ``cfg`` packed into contexts; raises if the corpus yields no full context."""
    if bos_token_id is None:
        bos_token_id = tokenizer.eos_token_id
    if bos_token_id is None:
        raise InterpError("The tokenizer has neither a BOS nor an EOS token; interp needs one to start contexts.")
    count = 0
    for ctx in pack_contexts(iter_documents(cfg), tokenizer, ctx_len, bos_token_id):
        count += 1
        yield ctx
    if count == 0:
        raise InterpError(
            f"Corpus {cfg.source!r} is empty: it gave no full context of {ctx_len} tokens. "
            "Check the path / text field, or lower --ctx-len."
        )
