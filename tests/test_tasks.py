"""Code tasks: item finding on known text, n-gram baselines, and scoring with the planted model."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

import interp
from interp.errors import InterpError
from interp.zoo.planted import write_planted_model
from interp.zoo.probes import next_token_predictions
from interp.zoo.tasks import (
    baseline_accuracies,
    encode_documents,
    find_items,
    model_accuracy,
    ngram_baselines,
    pack_documents,
)

SOURCE = """class B:
 def f(self, qzx):
  self.qzx = qzx
  self.wv = [qzx]
 def g(self):
  return self.wv[0]
"""


@pytest.fixture(scope="module")
def planted(tmp_path_factory: pytest.TempPathFactory) -> interp.Model:
    return interp.load_model(str(write_planted_model(tmp_path_factory.mktemp("planted") / "model")))


def _text(planted: interp.Model, source: str = SOURCE, seq_len: int = 128):
    tokenizer = planted.tokenizer
    documents = encode_documents(tokenizer, [source])
    return pack_documents(documents, seq_len, tokenizer.bos_token_id, tokenizer.eos_token_id)


def _decoded(planted: interp.Model, text, items, i: int) -> tuple[str, str, str]:
    row = text.contexts[items.context[i]]
    return (
        planted.tokenizer.decode(row[: items.position[i] + 1]),
        planted.tokenizer.decode([int(items.target[i])]),
        planted.tokenizer.decode(row[: items.source[i] + 1]),
    )


def test_pack_keeps_document_positions(planted: interp.Model) -> None:
    text = _text(planted, seq_len=64)
    assert text.contexts.shape == (len(SOURCE) // 63, 64) and (text.contexts[:, 0] == 0).all()
    doc_ids = text.documents[0].ids
    inside = text.doc >= 0
    assert (text.contexts.numpy()[inside] == doc_ids[text.index[inside]]).all()
    with pytest.raises(InterpError, match="fewer than one context"):
        pack_documents(text.documents, 10_000, 0, 0)


def test_repeated_identifier_items(planted: interp.Model) -> None:
    text = _text(planted, seq_len=len(SOURCE) + 2)  # one context holds the whole file
    items = find_items(text, "repeated_identifier")
    seen = [_decoded(planted, text, items, i) for i in range(len(items.target))]
    # character tokens: "self", "qzx" (second seen on line 3) and "wv" (last line), at the second
    # occurrence only; "return", "def", "class" are keywords, the rest occur once
    assert [(prefix[-1], target) for prefix, target, _ in seen] == [("s", "e"), ("q", "z"), ("w", "v")]
    assert [prefix.count("\n") for prefix, _, _ in seen] == [2, 2, 5]
    for prefix, target, source in seen:
        assert source.endswith(prefix[-1] + target) and len(source) < len(prefix)  # the first occurrence


def test_closing_bracket_and_self_attribute_items(planted: interp.Model) -> None:
    text = _text(planted, seq_len=len(SOURCE) + 2)
    closing = find_items(text, "closing_bracket")
    targets = [planted.tokenizer.decode([int(t)]) for t in closing.target]
    assert targets == [")", "]", ")", "]"]
    attributes = find_items(text, "self_attribute")
    assert [_decoded(planted, text, attributes, i)[1] for i in range(len(attributes.target))] == ["w"]


def test_scores_and_baselines(planted: interp.Model) -> None:
    text = _text(planted, seq_len=len(SOURCE) + 2)
    items = find_items(text, "repeated_identifier")
    _, top = next_token_predictions(planted, text.contexts)
    # the planted model predicts what followed the previous occurrence of the current character
    expected = np.mean([
        top[c, p].item() == t for c, p, t in zip(items.context, items.position, items.target)
    ])
    assert model_accuracy(items, top) == pytest.approx(expected) and model_accuracy(items, top) > 0.5
    baselines = ngram_baselines([np.array([5, 6, 5, 6, 5, 7])], vocab_size=10)
    assert baselines.unigram_top == 5 and baselines.bigram_top[5] == 6 and baselines.bigram_top[9] == 5
    own = ngram_baselines([text.documents[0].ids], vocab_size=planted.info.d_vocab)
    current = text.contexts[items.context, items.position].numpy()
    unigram, bigram = baseline_accuracies(items, text.contexts, own)
    assert unigram == np.mean(items.target == own.unigram_top)
    assert bigram == np.mean(own.bigram_top[current] == items.target)
    assert own.bigram_top[planted.tokenizer.convert_tokens_to_ids("q")] == planted.tokenizer.convert_tokens_to_ids("z")
    empty = items._replace(context=items.context[:0], position=items.position[:0], target=items.target[:0])
    with pytest.raises(InterpError, match="no items"):
        model_accuracy(empty, top)
    with pytest.raises(InterpError, match="unknown task"):
        find_items(text, "sorting")


def test_items_never_cross_a_context(planted: interp.Model, tmp_path: Path) -> None:
    text = _text(planted, seq_len=40)
    for name in ["repeated_identifier", "closing_bracket", "self_attribute"]:
        items = find_items(text, name)
        if len(items.target):
            assert (items.source < items.position).all() and (items.position + 1 < 40).all()
            assert torch.equal(
                text.contexts[items.context, items.position + 1], torch.from_numpy(items.target)
            )
