"""Induction score of every attention head of a Hugging Face causal LM.

An induction head, at a token that occurred before, attends to the token that followed that earlier
occurrence. The probe is ``[BOS] + r + r`` for a random sequence ``r`` of ``seq_len`` tokens; in the
second copy the token ``seq_len - 1`` positions back is exactly the one that followed the previous
occurrence of the current token, so a perfect induction head puts all its attention there.

This module talks to the model only through ``output_attentions=True`` (eager attention), so it does
not depend on TransformerLens and gives a reference that the hook-based code can be checked against.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from interp.errors import InterpError


def repeated_random_tokens(
    vocab_size: int, seq_len: int, batch: int, bos_token_id: int | None, seed: int = 0
) -> torch.Tensor:
    """``[BOS] + r + r`` for ``batch`` random sequences ``r``: int64 tensor of shape (batch, 2 * seq_len + 1).

    Tokens of ``r`` are uniform over the vocabulary without ``bos_token_id``; without a BOS id the
    probe has no first token and its shape is (batch, 2 * seq_len).
    """
    generator = torch.Generator().manual_seed(seed)
    if bos_token_id is None:
        random = torch.randint(0, vocab_size, (batch, seq_len), generator=generator)
        return torch.cat([random, random], dim=1)
    random = torch.randint(0, vocab_size - 1, (batch, seq_len), generator=generator)
    random = random + (random >= bos_token_id).long()  # skip the BOS id, keep the rest uniform
    bos = torch.full((batch, 1), bos_token_id, dtype=torch.long)
    return torch.cat([bos, random, random], dim=1)


def induction_pattern_score(attentions: torch.Tensor, seq_len: int) -> torch.Tensor:
    """Mean attention on the induction target, from attention patterns of a ``[BOS] + r + r`` probe.

    ``attentions``: (layers, batch, heads, T, T) with T = 2 * seq_len + 1, rows the query positions.
    Returns (layers, heads): for queries q in the second copy (q > seq_len), the mean over queries and
    batch of the attention on key q - seq_len + 1. Values lie in [0, 1] for softmax patterns.
    """
    t = attentions.shape[-1]
    if t != 2 * seq_len + 1:
        raise InterpError(f"attention of length {t} does not match a probe with seq_len={seq_len}")
    target = torch.diagonal(
        attentions, offset=-(seq_len - 1), dim1=-2, dim2=-1
    )  # (layers, B, H, seq_len + 2)
    second_half = target[..., -seq_len:]  # queries seq_len + 1 .. 2 * seq_len
    return second_half.mean(dim=(1, 3))


@torch.no_grad()
def induction_score(
    model: nn.Module, vocab_size: int, seq_len: int = 64, batch: int = 16, seed: int = 0
) -> torch.Tensor:
    """Induction score of every head of a Hugging Face GPT-style model: float32 (n_layers, n_heads) on CPU.

    The probe is ``[BOS] + r + r`` (see :func:`repeated_random_tokens`) with BOS from
    ``model.config.bos_token_id``; the score is :func:`induction_pattern_score`. The model is run in
    eval mode with eager attention; its training mode and attention implementation are restored after.
    """
    config: Any = model.config
    bos = config.bos_token_id
    if bos is None:
        raise InterpError("the model config has no bos_token_id; the induction probe starts with BOS")
    n_positions = getattr(config, "n_positions", None) or getattr(config, "max_position_embeddings", None)
    if n_positions is not None and 2 * seq_len + 1 > n_positions:
        raise InterpError(
            f"induction probe of seq_len={seq_len} needs {2 * seq_len + 1} positions but the model has "
            f"{n_positions}; pass seq_len <= {(n_positions - 1) // 2}"
        )
    device = next(model.parameters()).device
    tokens = repeated_random_tokens(vocab_size, seq_len, batch, bos, seed).to(device)
    was_training, implementation = model.training, config._attn_implementation
    model.eval()
    if implementation != "eager":
        model.set_attn_implementation("eager")  # type: ignore[operator]
    try:
        out = model(tokens, output_attentions=True)
    finally:
        if implementation != "eager":
            model.set_attn_implementation(implementation)  # type: ignore[operator]
        model.train(was_training)
    attentions = torch.stack(out.attentions).float()  # (layers, B, H, T, T)
    return induction_pattern_score(attentions, seq_len).cpu()
