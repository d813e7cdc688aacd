"""The demo model's architecture and training loop: a small Llama (rotary positions, RMSNorm, gated SiLU
MLP, tied embeddings, no grouped-query attention) trained with AdamW, warmup and cosine decay on a mix of
natural code and the synthetic rows of :mod:`interp.zoo.data`.

Why this shape (measured in docs/notes/zoo.md): with GPT-2's learned absolute positions no head attended to
the previous token after 1,200 steps; with rotary positions a previous-token head forms within a hundred
steps, but in layer 1 unless layer 0's input has a direction shared by all positions (the shared
embedding component) and rows reward a one-layer previous-token copy (period-two rows). Keeping the later
blocks' attention silent for the first ``late_attention_step`` steps makes the previous-token head form in
layer 0, where the induction head of layer 1 can compose with it. Period-two rows also make that head copy
(write the previous token in the embedding basis), which hides "the previous token is x" from "the token is
x" in layer 1; so they stop at ``period_two_steps`` and layer 0's value and output weights are drawn anew,
keeping the attention pattern. Short contexts full of ``[BOS] r r`` rows then form the induction head.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Iterator

import numpy as np
import torch
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from interp.progress import progress_bar
from interp.zoo.config import ZooConfig
from interp.zoo.data import natural_batches, period_two_rows, repeat_rows
from interp.zoo.probes import attention_patterns, induction_score, previous_token_pattern_score

logger = logging.getLogger(__name__)


def build_model(cfg: ZooConfig, tokenizer: PreTrainedTokenizerFast) -> LlamaForCausalLM:
    """A freshly initialised model for ``tokenizer`` (uses torch's global RNG: seed it first).

    Weights get Hugging Face's Llama initialization (std 0.02), then the tied token embeddings are redrawn
    with std ``cfg.embedding_std`` plus one shared random vector scaled by ``cfg.embedding_shared``.
    """
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=cfg.d_model,
        intermediate_size=cfg.d_mlp,
        num_hidden_layers=cfg.n_layer,
        num_attention_heads=cfg.n_head,
        num_key_value_heads=cfg.n_head,
        max_position_embeddings=cfg.n_ctx,
        rope_parameters={"rope_type": "default", "rope_theta": cfg.rope_theta},
        tie_word_embeddings=True,
        attention_bias=False,
        attention_dropout=0.0,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    model = LlamaForCausalLM(config)
    with torch.no_grad():
        embed = model.model.embed_tokens.weight
        embed.normal_(0.0, cfg.embedding_std)
        embed.add_(cfg.embedding_shared * torch.randn(cfg.d_model))
    return model


def training_batches(
    cfg: ZooConfig, documents: list[np.ndarray], bos_token_id: int, unigram: np.ndarray
) -> Iterator[torch.Tensor]:
    """One int64 batch per step, of shape ``cfg.shape(step)``: natural contexts (``data.natural_batches``) in
    which rows are replaced by ``repeat_rows`` / ``period_two_rows`` with the probabilities
    ``cfg.synthetic_fractions(step)``. All randomness comes from ``cfg.seed``."""
    rng = np.random.default_rng(cfg.seed)
    phases = {}
    for step in range(cfg.steps):
        batch_size, seq_len = cfg.shape(step)
        if (batch_size, seq_len) not in phases:
            phases[(batch_size, seq_len)] = natural_batches(documents, seq_len, batch_size, bos_token_id, rng)
        batch = next(phases[(batch_size, seq_len)])
        repeat, period_two = cfg.synthetic_fractions(step)
        draw = rng.random(batch_size)
        args = (seq_len, bos_token_id, unigram, cfg.uniform_fraction, rng)
        rows = np.flatnonzero(draw < repeat)
        batch[rows] = repeat_rows(len(rows), *args, min_len=cfg.repeat_min_len)
        rows = np.flatnonzero((draw >= repeat) & (draw < repeat + period_two))
        batch[rows] = period_two_rows(len(rows), *args)
        yield batch


def optimizer_for(cfg: ZooConfig, model: torch.nn.Module) -> torch.optim.AdamW:
    """AdamW with weight decay on the attention and MLP matrices only (not embeddings, norms)."""
    decay = [p for name, p in model.named_parameters() if p.dim() >= 2 and "embed" not in name]
    other = [p for name, p in model.named_parameters() if not (p.dim() >= 2 and "embed" not in name)]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": other, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(0.9, 0.95))


def lr_factor(cfg: ZooConfig, step: int) -> float:
    """Multiplier of ``cfg.lr`` at ``step`` (0-based): linear warmup, then cosine down to ``min_lr_ratio``."""
    if step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    progress = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
    return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def _late_attention_outputs(model: LlamaForCausalLM) -> list[torch.nn.Parameter]:
    return [layer.self_attn.o_proj.weight for layer in model.model.layers[1:]]


def redraw_first_values(model: LlamaForCausalLM, std: float) -> None:
    """Draw layer 0's attention value and output weights anew (normal, ``std``; torch's global RNG), keeping its
    queries and keys: the heads attend where they did, and write what they read in a fresh basis."""
    attention = model.model.layers[0].self_attn
    with torch.no_grad():
        attention.v_proj.weight.normal_(0.0, std)
        attention.o_proj.weight.normal_(0.0, std)


def train_model(
    cfg: ZooConfig, model: LlamaForCausalLM, batches: Iterator[torch.Tensor], natural: torch.Tensor
) -> float:
    """Run ``cfg.steps`` optimizer steps on ``batches``; returns the mean loss of the last 10% of steps.

    Before ``cfg.late_attention_step`` the later blocks' attention output projections are zero and frozen.
    Twenty times per run it logs the loss and the best previous-token (on ``natural``, (B, T) token ids)
    and induction scores, so a run shows when the circuit forms.
    """
    optimizer = optimizer_for(cfg, model)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(cfg, step))
    silent = _late_attention_outputs(model) if cfg.late_attention_step else []
    with torch.no_grad():
        for weight in silent:
            weight.zero_()
            weight.requires_grad_(False)
    model.train()
    recent: list[float] = []
    seen = 0
    start = time.perf_counter()
    bar = progress_bar(cfg.steps, "zoo train", unit="step", unit_scale=False)
    for step in range(cfg.steps):
        if step == cfg.late_attention_step:
            for weight in silent:
                weight.requires_grad_(True)
        if step == cfg.period_two_steps and cfg.period_two_steps:
            redraw_first_values(model, model.config.initializer_range)
        batch = next(batches)  # (B, T)
        loss = model(batch, labels=batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        recent = (recent + [loss.item()])[-max(1, cfg.steps // 10) :]
        seen += batch.numel()
        tokens_per_s = seen / (time.perf_counter() - start)
        bar.set_postfix(loss=f"{loss.item():.3f}", tok_s=f"{tokens_per_s:,.0f}")
        bar.update(1)
        if (step + 1) % max(1, cfg.steps // 20) == 0 or step + 1 == cfg.steps:
            previous = previous_token_pattern_score(attention_patterns(model, natural)).max().item()
            induction = induction_score(model, cfg.probe_seq_len, 4, cfg.seed).max().item()
            logger.info(
                "step %d/%d loss %.4f lr %.2e %.0f tok/s; best previous-token score %.3f, induction %.3f",
                step + 1, cfg.steps, loss.item(), scheduler.get_last_lr()[0], tokens_per_s, previous, induction,
            )
    bar.close()
    model.eval()
    return float(np.mean(recent))
