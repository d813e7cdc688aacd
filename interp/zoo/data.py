"""The demo model's training data: a BPE tokenizer trained on the stdlib train split, natural contexts
packed by the model layer (:func:`interp.model.pack_token_ids`), and two kinds of synthetic rows that make
the previous-token and induction heads form within a CPU budget.

- :func:`repeat_rows`: ``[BOS] r1 r1 r2 r2 ...`` with random token sequences ``r`` of varying length:
  only copying from the earlier copy (an induction head) predicts the second copy;
- :func:`period_two_rows`: ``[BOS] a b a b ... c d c d ...`` segments: ``x[t+1] = x[t-1]``, predicted by a
  previous-token head that copies the token it reads, a one-layer circuit. It forms the layer-0
  previous-token head early, which the induction head then composes with.

All randomness comes from the ``numpy.random.Generator`` passed in, so a seed fixes every batch.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from interp.errors import InterpError
from interp.model import pack_token_ids

SPECIAL_TOKEN = "<|endoftext|>"
"""The one special token: BOS at the start of every context and the separator between documents."""


def read_files(files: list[Path]) -> Iterator[str]:
    """The text of each file, undecodable bytes replaced."""
    for path in files:
        yield path.read_text(encoding="utf-8", errors="replace")


def train_tokenizer(vocab_size: int, n_ctx: int, files: list[Path]) -> PreTrainedTokenizerFast:
    """Byte-level BPE of ``vocab_size`` tokens trained on ``files``; ``SPECIAL_TOKEN`` has id 0 and is
    BOS, EOS and pad. The tokenizer adds no special token by itself: packing prepends BOS."""
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[SPECIAL_TOKEN],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator(read_files(files), trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=bpe,
        bos_token=SPECIAL_TOKEN,
        eos_token=SPECIAL_TOKEN,
        pad_token=SPECIAL_TOKEN,
        model_max_length=n_ctx,
    )


def tokenize_documents(tokenizer: PreTrainedTokenizerFast, files: list[Path]) -> list[np.ndarray]:
    """One int64 array of token ids per file (no special tokens)."""
    encoded = tokenizer.backend_tokenizer.encode_batch(list(read_files(files)), add_special_tokens=False)
    return [np.array(doc.ids, dtype=np.int64) for doc in encoded]


def unigram_distribution(documents: list[np.ndarray], vocab_size: int, bos_token_id: int) -> np.ndarray:
    """(vocab_size,) float64 token frequencies of ``documents``; BOS gets probability zero."""
    counts = np.bincount(np.concatenate(documents), minlength=vocab_size).astype(np.float64)
    counts[bos_token_id] = 0.0
    return counts / counts.sum()


def _random_tokens(
    n: int, bos: int, unigram: np.ndarray, uniform_fraction: float, rng: np.random.Generator
) -> np.ndarray:
    """``n`` random token ids other than ``bos``: uniform over them with probability ``uniform_fraction``,
    else drawn from ``unigram`` (which gives ``bos`` probability zero)."""
    if rng.random() < uniform_fraction:
        ids = rng.integers(0, len(unigram) - 1, n)
        return ids + (ids >= bos)
    return rng.choice(len(unigram), n, p=unigram)


def repeat_rows(
    rows: int, seq_len: int, bos_token_id: int, unigram: np.ndarray, uniform_fraction: float, rng: np.random.Generator,
    min_len: int = 8,
) -> torch.Tensor:
    """(rows, seq_len) int64: ``[BOS] r1 r1 r2 r2 ...`` cut to ``seq_len``.

    Each ``r`` has a length uniform in ``[min_len, (seq_len - 1) // 2]`` and random tokens (see ``_random_tokens``).
    The first copy is unpredictable; every token of the second is predicted by finding the previous
    occurrence of the current token and reading what followed it, the probe's ``[BOS] r r`` shape.
    """
    high = max(min_len, (seq_len - 1) // 2)
    out = np.empty((rows, seq_len), dtype=np.int64)
    for row in range(rows):
        parts = [np.array([bos_token_id])]
        filled = 1
        while filled < seq_len:
            r = _random_tokens(int(rng.integers(min_len, high + 1)), bos_token_id, unigram, uniform_fraction, rng)
            parts += [r, r]
            filled += 2 * len(r)
        out[row] = np.concatenate(parts)[:seq_len]
    return torch.from_numpy(out)


def period_two_rows(
    rows: int, seq_len: int, bos_token_id: int, unigram: np.ndarray, uniform_fraction: float, rng: np.random.Generator
) -> torch.Tensor:
    """(rows, seq_len) int64: ``[BOS]`` then segments ``a b a b ...`` of 4 to 16 tokens, a new random pair
    ``(a, b)`` per segment, cut to ``seq_len``. Inside a segment ``x[t+1] = x[t-1]``."""
    out = np.empty((rows, seq_len), dtype=np.int64)
    for row in range(rows):
        parts = [np.array([bos_token_id])]
        filled = 1
        while filled < seq_len:
            pair = _random_tokens(2, bos_token_id, unigram, uniform_fraction, rng)
            segment = np.tile(pair, int(rng.integers(2, 9)))
            parts.append(segment)
            filled += len(segment)
        out[row] = np.concatenate(parts)[:seq_len]
    return torch.from_numpy(out)


def natural_batches(
    documents: list[np.ndarray], seq_len: int, batch_size: int, bos_token_id: int, rng: np.random.Generator
) -> Iterator[torch.Tensor]:
    """Endless (batch_size, seq_len) int64 batches of natural text: each epoch shuffles the documents,
    packs them with :func:`interp.model.pack_token_ids` and shuffles the contexts."""
    while True:
        order = rng.permutation(len(documents))
        contexts = [c.tokens for c in pack_token_ids((documents[i].tolist() for i in order), seq_len, bos_token_id)]
        if len(contexts) < batch_size:
            raise InterpError(
                f"the training split packs into {len(contexts)} contexts of {seq_len} tokens, fewer than "
                f"batch_size={batch_size}; lower batch_size or seq_len, or use more files"
            )
        stacked = torch.stack(contexts)[torch.from_numpy(rng.permutation(len(contexts)))]  # (N, T)
        for start in range(0, len(stacked) - batch_size + 1, batch_size):
            yield stacked[start : start + batch_size].clone()
