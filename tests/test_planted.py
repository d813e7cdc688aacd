"""The hand-set planted model: it copies through the documented circuit only, through HF and interp alike."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

import interp
from interp.model import next_token_loss
from interp.zoo.planted import N_CTX, N_HEADS, N_LAYERS, PLANTED, VOCAB, write_planted_model
from interp.zoo.probes import repeated_random_tokens

N = 50


@pytest.fixture(scope="module")
def planted(planted_model: interp.Model) -> interp.Model:
    return planted_model


def _probe(seed: int = 0, batch: int = 8) -> torch.Tensor:
    return repeated_random_tokens(len(VOCAB), N, batch, bos_token_id=0, seed=seed)  # (B, 2N + 1)


def _distinct_probe(n: int = 40) -> torch.Tensor:
    """[BOS] r r with no token repeated inside r, so every second-copy token has exactly one earlier match."""
    r = torch.randperm(len(VOCAB) - 1, generator=torch.Generator().manual_seed(0))[:n] + 1
    return torch.cat([torch.zeros(1, dtype=torch.long), r, r])[None]


def _copy_losses(
    model: interp.Model, tokens: torch.Tensor, ablate: tuple[int, int] | None = None
) -> tuple[float, float]:
    """Mean loss on the first and on the second copy of r, optionally with one head's output zeroed."""
    hooks = []
    if ablate is not None:
        layer, head = ablate

        def zero(z: torch.Tensor, hook: object) -> torch.Tensor:
            z = z.clone()
            z[:, :, head] = 0.0  # (B, T, H, d_head)
            return z

        hooks = [(f"blocks.{layer}.attn.hook_z", zero)]
    with torch.no_grad(), model.hooks(hooks):
        loss = next_token_loss(model.forward(tokens), tokens)  # (B, 2N)
    n = (tokens.shape[1] - 1) // 2
    return loss[:, :n].mean().item(), loss[:, n + 1 :].mean().item()


def test_writes_a_deterministic_checkpoint(planted_dir: Path, tmp_path: Path) -> None:
    again = write_planted_model(tmp_path / "again")
    for name in ["config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"]:
        assert (again / name).read_bytes() == (planted_dir / name).read_bytes()


def test_copies_through_hugging_face_and_interp(planted_dir: Path, planted: interp.Model) -> None:
    tokens = _probe()
    hf = AutoModelForCausalLM.from_pretrained(planted_dir).eval()
    with torch.no_grad():
        hf_loss = next_token_loss(hf(tokens).logits, tokens)
    first, second = hf_loss[:, :N].mean().item(), hf_loss[:, N + 1 :].mean().item()
    assert second < first - 3.0
    # load_model folds LayerNorm and centres the unembedding; the function must not change
    for processing, model in [("default", planted), ("none", interp.load_model(str(planted_dir), processing="none"))]:
        assert _copy_losses(model, tokens) == pytest.approx((first, second), abs=1e-3), processing
    # with no token repeated inside r, the copy is exact and the first copy is uniform
    first, second = _copy_losses(planted, _distinct_probe())
    assert first == pytest.approx(torch.log(torch.tensor(len(VOCAB) * 1.0)).item(), abs=0.05)
    assert second < 1e-3


def test_the_tokenizer_is_character_level(planted: interp.Model) -> None:
    text = "def f(x):\n\treturn x  # é"
    ids = planted.to_tokens(text)[0]
    assert ids[0] == 0 and len(ids) == len(text) + 1
    assert planted.tokenizer.decode(ids[1:-1]) == text[:-1] and VOCAB[int(ids[-1])] == "<unk>"
    assert planted.info.n_ctx == N_CTX and (planted.info.n_layers, planted.info.n_heads) == (N_LAYERS, N_HEADS)


def test_ablating_the_planted_heads_destroys_the_copy_and_distractors_do_not(planted: interp.Model) -> None:
    tokens = _probe(seed=1)
    _, clean = _copy_losses(planted, tokens)
    uniform = torch.log(torch.tensor(len(VOCAB) * 1.0)).item()
    for head in [(0, 1), (1, 2)]:
        assert _copy_losses(planted, tokens, ablate=head)[1] == pytest.approx(uniform, abs=0.01), head
    assert len(PLANTED.distractor_heads) == N_LAYERS * N_HEADS - 2
    for head in PLANTED.distractor_heads:
        assert abs(_copy_losses(planted, tokens, ablate=head)[1] - clean) < 0.01, head


def _patterns(model: interp.Model, tokens: torch.Tensor) -> list[torch.Tensor]:
    hooks = [f"blocks.{layer}.attn.hook_pattern" for layer in range(N_LAYERS)]
    acts = model.capture(tokens, hooks).acts
    return [acts[h][0] for h in hooks]  # each (H, T, T)


def test_heads_attend_as_documented(planted: interp.Model) -> None:
    tokens = _distinct_probe()
    n, t = (tokens.shape[1] - 1) // 2, tokens.shape[1]
    patterns = _patterns(planted, tokens)
    q = torch.arange(1, t)
    for layer, head in PLANTED.previous_token_heads:
        assert patterns[layer][head, q, q - 1].min() > 0.99
    for layer, head in PLANTED.bos_heads:
        assert patterns[layer][head, :, 0].min() > 0.99
    for layer, head in PLANTED.self_heads:
        assert torch.diagonal(patterns[layer][head]).min() > 0.99
    second = torch.arange(n + 1, t)
    for layer, head in PLANTED.induction_heads:
        assert patterns[layer][head, second, second - n + 1].min() > 0.99
        assert patterns[layer][head, 1 : n + 1, 0].min() > 0.99  # nothing to copy: rests on BOS
    for layer, head in PLANTED.duplicate_token_heads:
        assert patterns[layer][head, second, second - n].min() > 0.99
        assert patterns[layer][head, torch.arange(1, n + 1), torch.arange(1, n + 1)].min() > 0.99
