"""Per-head probes and the copying gap, against the planted model's known heads and the HF attention path."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

import interp
from interp.errors import InterpError
from interp.model.stdlib import iter_stdlib_documents
from interp.zoo.planted import N_HEADS, N_LAYERS, PLANTED, VOCAB
from interp.zoo.probes import (
    attention_patterns,
    bos_pattern_score,
    copying_gap,
    duplicate_token_pattern_score,
    head_scores,
    induction_score,
    previous_token_pattern_score,
    repeated_random_tokens,
    stdlib_contexts,
)


@pytest.fixture(scope="module")
def planted(planted_model: interp.Model) -> interp.Model:
    return planted_model


def _ideal_induction(tokens: torch.Tensor, n: int) -> float:
    """Score of a head that splits its attention evenly over every key whose previous token is the query's."""
    total, count = 0.0, 0
    for row in tokens.tolist():
        for q in range(n + 1, 2 * n + 1):
            keys = [k for k in range(1, q + 1) if row[k - 1] == row[q]]
            total += (q - n + 1 in keys) / len(keys)
            count += 1
    return total / count


def _others(scores: torch.Tensor, heads: tuple[tuple[int, int], ...]) -> torch.Tensor:
    mask = torch.ones_like(scores, dtype=torch.bool)
    for layer, head in heads:
        mask[layer, head] = False
    return scores[mask]


def test_head_scores_find_the_planted_heads(planted: interp.Model) -> None:
    scores = head_scores(planted, seq_len=40, batch=8, seed=3)
    assert all(s.shape == (N_LAYERS, N_HEADS) and s.dtype == torch.float32 for s in scores)
    for field, heads in [
        ("previous_token", PLANTED.previous_token_heads),
        ("duplicate_token", PLANTED.duplicate_token_heads),
        ("bos", PLANTED.bos_heads),
    ]:
        values = getattr(scores, field)
        assert all(values[h] > 0.98 for h in heads), field
        assert _others(values, heads).max() < 0.25, field  # the induction head rests on BOS in copy 1
    probe = repeated_random_tokens(len(VOCAB), 40, 8, bos_token_id=0, seed=3)
    layer, head = PLANTED.induction_head
    assert scores.induction[layer, head].item() == pytest.approx(_ideal_induction(probe, 40), abs=0.01)
    assert _others(scores.induction, PLANTED.induction_heads).max() < 0.01


@pytest.mark.parametrize("kind", ["planted", "tiny_llama"])
def test_hugging_face_and_hook_patterns_agree(kind: str, request: pytest.FixtureRequest) -> None:
    """The planted GPT-2, and a tiny Llama (rotary attention): interp's hook patterns are Hugging Face's eager
    attention weights."""
    model: interp.Model = request.getfixturevalue(kind)
    hf = AutoModelForCausalLM.from_pretrained(request.getfixturevalue(f"{kind}_dir"))
    natural = stdlib_contexts(model.tokenizer, n_contexts=4, seq_len=min(96, model.info.n_ctx))
    via_hooks, via_hf = head_scores(model, natural, seq_len=30), head_scores(hf.eval(), natural, seq_len=30)
    for a, b in zip(via_hooks, via_hf):
        assert torch.allclose(a, b, atol=1e-4)
    assert torch.allclose(induction_score(hf, 30), via_hooks.induction, atol=1e-4)
    assert copying_gap(hf, n=30) == pytest.approx(copying_gap(model, n=30), abs=1e-3)


def test_copying_gap_of_the_planted_model(planted: interp.Model) -> None:
    gap = copying_gap(planted, n=50, batch=8)
    assert gap.n == 50 and gap.gap == pytest.approx(gap.first - gap.second)
    assert gap.second < 2.0 and gap.gap > 3.0


def test_scores_of_ideal_patterns() -> None:
    n, t = 4, 9
    tokens = torch.tensor([[0, 5, 6, 7, 8, 5, 6, 7, 8]])
    previous = torch.zeros(1, 1, 1, t, t)
    previous[..., 0, 0] = 1.0
    previous[..., torch.arange(1, t), torch.arange(0, t - 1)] = 1.0
    assert previous_token_pattern_score(previous).item() == 1.0
    assert bos_pattern_score(previous).item() == pytest.approx(1 / (t - 1))  # only query 1 looks at BOS
    duplicate = torch.zeros(1, 1, 1, t, t)
    duplicate[..., :, 0] = 1.0
    duplicate[..., torch.arange(n + 1, t), 0] = 0.0
    duplicate[..., torch.arange(n + 1, t), torch.arange(1, n + 1)] = 1.0
    assert duplicate_token_pattern_score(duplicate, tokens).item() == 1.0
    assert previous_token_pattern_score(duplicate).item() == 0.0


def test_stdlib_contexts_start_with_bos(planted: interp.Model) -> None:
    contexts = stdlib_contexts(planted.tokenizer, n_contexts=3, seq_len=50)
    assert contexts.shape == (3, 50) and (contexts[:, 0] == 0).all()
    assert torch.equal(contexts, stdlib_contexts(planted.tokenizer, n_contexts=3, seq_len=50))
    first_file = next(iter_stdlib_documents("heldout"))
    assert planted.tokenizer.decode(contexts[0, 1:]) == first_file[:49]  # one character per token


def test_probe_errors(planted: interp.Model, planted_dir: Path) -> None:
    tokens = torch.zeros(1, 8, dtype=torch.long)
    with pytest.raises(InterpError, match="no attention pattern at blocks.5.attn.hook_pattern"):
        attention_patterns(planted, tokens, layers=[5])
    hf = AutoModelForCausalLM.from_pretrained(planted_dir)
    with pytest.raises(InterpError, match="no attention pattern in layers"):
        attention_patterns(hf, tokens, layers=[2])
    with pytest.raises(InterpError, match="at least 3 tokens"):
        previous_token_pattern_score(attention_patterns(planted, tokens[:, :2]))
    with pytest.raises(InterpError, match="seq_len >= 2"):
        induction_score(planted, seq_len=1)
    with pytest.raises(InterpError, match="needs 129 positions but the model has 128"):
        copying_gap(planted, n=64)
    with pytest.raises(InterpError, match="occurs twice"):
        duplicate_token_pattern_score(attention_patterns(planted, torch.arange(6)[None]), torch.arange(6)[None])
    with pytest.raises(InterpError, match="natural="):
        head_scores(hf)
    with pytest.raises(InterpError, match="interp.Model or a Hugging Face"):
        induction_score(torch.nn.Linear(2, 2))
