"""The demo model's card: what it does, measured from its weights on held-out text and probes.

``evaluate_model`` measures everything that depends on the weights (held-out loss, the four scores of
every head, the copying gap, the code-task accuracies); ``evaluate_baselines`` measures what depends only
on the tokenizer and the train split (unigram loss, the tasks' unigram and bigram accuracies). The recipe
writes both into ``zoo_card.json``; the tests recompute the first from the shipped weights.

Held-out text is the stdlib held-out split, tokenized in file order, each file followed by EOS, cut into
``[BOS] + seq_len - 1`` token contexts (the short remainder dropped); every loss is in nats per predicted
token (every token of every context but its first).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch

from interp.model.stdlib import iter_stdlib_documents
from interp.zoo.probes import CopyingGap, HeadScores, copying_gap, head_scores, next_token_predictions, stdlib_contexts
from interp.zoo.tasks import (
    TASKS,
    HeldoutText,
    TaskItems,
    baseline_accuracies,
    encode_documents,
    find_items,
    model_accuracy,
    ngram_baselines,
    pack_documents,
)

NATURAL_CONTEXTS, NATURAL_SEQ_LEN = 16, 128
"""Natural text of the previous-token and BOS scores: this many held-out contexts of this many tokens
(fewer tokens when the evaluation contexts are shorter)."""


class Evaluation(NamedTuple):
    """Everything on the card that depends on the weights."""

    heldout_loss: float
    """Mean next-token loss on the held-out contexts, nats per token."""
    heldout_tokens: int
    """Number of predicted held-out tokens."""
    heads: HeadScores
    """The four scores of every head (``interp.zoo.probes``)."""
    copying: CopyingGap
    """Mean losses on the two copies of ``[BOS] r r``."""
    tasks: dict[str, float | None]
    """Task name -> the model's top-1 accuracy (None when the held-out text has no item of the task)."""


class BaselineEvaluation(NamedTuple):
    """Everything on the card that depends only on the tokenizer and the train split."""

    unigram_loss: float
    """Loss of add-one smoothed train-split token frequencies on the same held-out targets."""
    tasks: dict[str, tuple[int, float | None, float | None]]
    """Task name -> (number of items, unigram accuracy, bigram accuracy); None where there is no item."""


def heldout_text(tokenizer: Any, seq_len: int) -> HeldoutText:
    """The held-out split packed into contexts of ``seq_len`` tokens (see the module docstring)."""
    documents = encode_documents(tokenizer, list(iter_stdlib_documents("heldout")))
    return pack_documents(documents, seq_len, tokenizer.bos_token_id, tokenizer.eos_token_id)


def evaluate_model(
    model: Any, tokenizer: Any, text: HeldoutText, probe_seq_len: int, probe_batch: int, seed: int, batch_size: int = 16
) -> Evaluation:
    """Measure ``model`` (an ``interp.Model`` or a Hugging Face causal LM) on ``text`` and the probes."""
    nll, top = next_token_predictions(model, text.contexts, batch_size)
    natural = stdlib_contexts(tokenizer, NATURAL_CONTEXTS, min(NATURAL_SEQ_LEN, text.contexts.shape[1]))
    return Evaluation(
        heldout_loss=float(nll.double().mean()),
        heldout_tokens=nll.numel(),
        heads=head_scores(model, natural, probe_seq_len, probe_batch, seed),
        copying=copying_gap(model, probe_seq_len, probe_batch, seed),
        tasks={name: model_accuracy(items, top) if len(items.target) else None for name, items in _items(text)},
    )


def evaluate_baselines(train_ids: list[np.ndarray], text: HeldoutText, vocab_size: int) -> BaselineEvaluation:
    """Unigram loss and the tasks' n-gram baselines, from the train split's token ids."""
    counts = np.bincount(np.concatenate(train_ids), minlength=vocab_size).astype(np.float64) + 1.0
    logp = torch.from_numpy(np.log(counts / counts.sum()))
    baselines = ngram_baselines(train_ids, vocab_size)
    tasks: dict[str, tuple[int, float | None, float | None]] = {}
    for name, items in _items(text):
        found = baseline_accuracies(items, text.contexts, baselines) if len(items.target) else (None, None)
        tasks[name] = (len(items.target), *found)
    return BaselineEvaluation(float(-logp[text.contexts[:, 1:]].mean()), tasks)


def _items(text: HeldoutText) -> list[tuple[str, TaskItems]]:
    return [(name, find_items(text, name)) for name in TASKS]


def card_sections(evaluation: Evaluation, baselines: BaselineEvaluation) -> dict[str, Any]:
    """The measured part of ``zoo_card.json``: losses, one record per head, the copying gap and the tasks."""
    heads = evaluation.heads
    n_layers, n_heads = heads.induction.shape
    records = [
        {"layer": layer, "head": head, **{field: round(float(getattr(heads, field)[layer, head]), 4)
                                           for field in HeadScores._fields}}
        for layer in range(n_layers)
        for head in range(n_heads)
    ]

    def best(field: str) -> dict[str, Any]:
        top = max(records, key=lambda r: r[field])
        return {"layer": top["layer"], "head": top["head"], "score": top[field]}

    copying = evaluation.copying
    return {
        "heldout_loss": evaluation.heldout_loss,
        "unigram_loss": baselines.unigram_loss,
        "heldout_tokens": evaluation.heldout_tokens,
        "best_previous_token_head": best("previous_token"),
        "best_induction_head": best("induction"),
        "heads": records,
        "copying_gap": {"n": copying.n, "first": copying.first, "second": copying.second, "gap": copying.gap},
        "tasks": {
            name: {"items": n, "accuracy": evaluation.tasks[name], "unigram_accuracy": uni, "bigram_accuracy": bi}
            for name, (n, uni, bi) in baselines.tasks.items()
        },
    }


def measure_checkpoint(
    model_dir: str | Path, seq_len: int, probe_seq_len: int = 50, probe_batch: int = 16, seed: int = 0
) -> dict[str, Any]:
    """The measured card sections (:func:`card_sections`) of the Hugging Face checkpoint in ``model_dir``:
    held-out contexts of ``seq_len`` tokens, baselines from the train split encoded with its tokenizer."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(model_dir).float().eval()
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    text = heldout_text(tokenizer, seq_len)
    train = [d.ids for d in encode_documents(tokenizer, list(iter_stdlib_documents("train")))]
    evaluation = evaluate_model(model, tokenizer, text, probe_seq_len, probe_batch, seed)
    return card_sections(evaluation, evaluate_baselines(train, text, len(tokenizer)))
