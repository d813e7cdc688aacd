"""Per-head attention probes and the copying gap: what a head does, measured from its attention pattern.

Four scores per head, each a mean attention weight in [0, 1] (layers, heads):

- **previous-token**: attention from position t to t - 1, on natural text (queries t >= 2, so attention
  to BOS from position 1 does not count);
- **induction**: on ``[BOS] r r`` (``r`` uniform random tokens), attention from each position of the
  second copy to the token after the previous occurrence of the current token;
- **duplicate-token**: attention to earlier occurrences of the current token, summed over them, averaged
  over the queries that have one (on ``[BOS] r r`` that is every query of the second copy);
- **BOS**: attention to position 0, on natural text (queries t >= 1).

And the **copying gap**: on ``[BOS] r_1..r_n r_1..r_n``, the mean next-token loss over the first copy
(targets r_2..r_n) minus the mean over the second copy (targets r_1..r_n after the first); a model that
copies in context predicts the second copy far better.

Every probe takes either an :class:`interp.Model` (patterns from its ``blocks.{l}.attn.hook_pattern``
hooks, so any model interp loads works) or a Hugging Face causal LM module (patterns from
``output_attentions=True`` with eager attention, used by the training loop, which has no
:class:`interp.Model`). Both give the same patterns for the same weights; one definition of each score,
as a pure function of patterns and tokens, serves both.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, NamedTuple

import torch
from torch import nn

from interp.errors import InterpError

if TYPE_CHECKING:
    from interp.model import Model

ProbeTarget = Any
"""An ``interp.Model`` or a Hugging Face causal LM (``nn.Module`` with a ``config``)."""


class HeadScores(NamedTuple):
    """The four per-head scores, each float32 (n_layers, n_heads) on CPU, in [0, 1]."""

    previous_token: torch.Tensor
    """Mean attention to position t - 1 on natural text."""
    induction: torch.Tensor
    """Mean attention to the induction target on ``[BOS] r r``."""
    duplicate_token: torch.Tensor
    """Mean attention to earlier occurrences of the current token on ``[BOS] r r``."""
    bos: torch.Tensor
    """Mean attention to position 0 on natural text."""


class CopyingGap(NamedTuple):
    """Mean next-token losses (nats) on the two copies of ``[BOS] r r``."""

    first: float
    """Mean loss predicting r_2..r_n inside the first copy."""
    second: float
    """Mean loss predicting r_1..r_n of the second copy."""
    n: int
    """Length of r."""

    @property
    def gap(self) -> float:
        """``first - second``: how much better the model predicts tokens it has seen in context."""
        return self.first - self.second


# ---- the model interface: vocabulary, patterns, logits --------------------------------------------------
def _is_interp_model(model: ProbeTarget) -> bool:
    return hasattr(model, "bridge") and hasattr(model, "info")


def _model_facts(model: ProbeTarget) -> tuple[int, int | None, int | None, int]:
    """(vocab size, BOS id, context length or None, number of layers)."""
    if _is_interp_model(model):
        info = model.info
        return info.d_vocab, info.bos_token_id, info.n_ctx, info.n_layers
    config: Any = getattr(model, "config", None)
    if not isinstance(model, nn.Module) or config is None:
        raise InterpError(
            f"the probes need an interp.Model or a Hugging Face causal LM, got {type(model).__name__}"
        )
    n_ctx = getattr(config, "n_positions", None) or getattr(config, "max_position_embeddings", None)
    n_layers = getattr(config, "n_layer", None) or getattr(config, "num_hidden_layers", None)
    if n_layers is None:
        raise InterpError(f"cannot tell the number of layers of {type(model).__name__} from its config")
    return int(config.vocab_size), config.bos_token_id, n_ctx, int(n_layers)


def _run(model: ProbeTarget, tokens: torch.Tensor, layers: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits (B, T, V) float32 and attention patterns (len(layers), B, H, T, T) float32, on CPU."""
    if _is_interp_model(model):
        return _run_interp(model, tokens, layers)
    return _run_hf(model, tokens, layers)


def _run_interp(model: Model, tokens: torch.Tensor, layers: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
    names = [f"blocks.{layer}.attn.hook_pattern" for layer in layers]
    missing = [name for name in names if name not in model.hook_names]
    if missing:
        raise InterpError(
            f"model {model.info.name!r} has no attention pattern at {', '.join(missing)}; the head probes "
            f"read 'blocks.{{l}}.attn.hook_pattern' for layers 0..{model.info.n_layers - 1}"
        )
    seen: dict[str, torch.Tensor] = {}

    def keep(pattern: torch.Tensor, hook: Any) -> None:
        seen[hook.name] = pattern.detach().float().cpu()

    with torch.no_grad(), model.hooks([(name, keep) for name in names]):
        logits = model.forward(tokens.to(model.device)).float().cpu()
    absent = [name for name in names if name not in seen]
    if absent:
        raise InterpError(
            f"the attention-pattern hooks {', '.join(absent)} of model {model.info.name!r} did not fire; "
            "the probes need a model that computes explicit attention patterns"
        )
    return logits, torch.stack([seen[name] for name in names])


def _run_hf(model: nn.Module, tokens: torch.Tensor, layers: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
    config: Any = model.config
    n_layers = _model_facts(model)[3]
    bad = [layer for layer in layers if not 0 <= layer < n_layers]
    if bad:
        raise InterpError(f"the model has {n_layers} layers, so it has no attention pattern in layers {bad}")
    was_training, implementation = model.training, config._attn_implementation
    model.eval()
    if implementation != "eager":
        model.set_attn_implementation("eager")  # type: ignore[operator]
    try:
        with torch.no_grad():
            out = model(tokens.to(next(model.parameters()).device), output_attentions=True)
    finally:
        if implementation != "eager":
            model.set_attn_implementation(implementation)  # type: ignore[operator]
        model.train(was_training)
    if not out.attentions or any(a is None for a in out.attentions):
        raise InterpError(f"{type(model).__name__} returned no attention patterns with output_attentions=True")
    patterns = torch.stack([out.attentions[layer].float().cpu() for layer in layers])
    return out.logits.float().cpu(), patterns


def attention_patterns(model: ProbeTarget, tokens: torch.Tensor, layers: Sequence[int] | None = None) -> torch.Tensor:
    """Attention patterns of ``tokens`` (B, T): float32 (len(layers), B, H, T, T) on CPU, rows are queries.

    ``layers`` defaults to every layer. Raises ``InterpError`` when the model has no pattern at a
    requested layer (an ``interp.Model`` without ``blocks.{l}.attn.hook_pattern``, or a layer out of range).
    """
    all_layers = list(range(_model_facts(model)[3]))
    return _run(model, tokens, all_layers if layers is None else list(layers))[1]


# ---- scores: pure functions of patterns (layers, B, H, T, T) and tokens ---------------------------------
def _check_patterns(patterns: torch.Tensor, min_len: int, probe: str) -> None:
    if patterns.dim() != 5 or patterns.shape[-1] != patterns.shape[-2]:
        raise InterpError(f"attention patterns must be (layers, batch, heads, T, T), got {tuple(patterns.shape)}")
    if patterns.shape[-1] < min_len:
        raise InterpError(
            f"the {probe} probe needs sequences of at least {min_len} tokens, got {patterns.shape[-1]}"
        )


def previous_token_pattern_score(patterns: torch.Tensor) -> torch.Tensor:
    """(layers, heads): mean attention from position t to t - 1 over queries t >= 2 and the batch."""
    _check_patterns(patterns, 3, "previous-token")
    return torch.diagonal(patterns, offset=-1, dim1=-2, dim2=-1)[..., 1:].mean(dim=(1, 3))


def bos_pattern_score(patterns: torch.Tensor) -> torch.Tensor:
    """(layers, heads): mean attention to position 0 over queries t >= 1 and the batch."""
    _check_patterns(patterns, 2, "BOS")
    return patterns[..., 1:, 0].mean(dim=(1, 3))


def induction_pattern_score(patterns: torch.Tensor, seq_len: int) -> torch.Tensor:
    """(layers, heads): mean attention on the induction target, from patterns of a ``[BOS] r r`` probe.

    T must be 2 * seq_len + 1. For queries q in the second copy (q > seq_len), the target is key
    q - seq_len + 1, the token that followed the previous occurrence of the current one.
    """
    _check_patterns(patterns, 5, "induction")
    if patterns.shape[-1] != 2 * seq_len + 1:
        raise InterpError(f"patterns of length {patterns.shape[-1]} do not match a probe with seq_len={seq_len}")
    target = torch.diagonal(patterns, offset=-(seq_len - 1), dim1=-2, dim2=-1)  # (L, B, H, seq_len + 2)
    return target[..., -seq_len:].mean(dim=(1, 3))


def duplicate_token_pattern_score(patterns: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """(layers, heads): attention summed over earlier positions holding the query's token, averaged over
    the (batch, query) pairs that have at least one such position. ``tokens`` is (B, T)."""
    _check_patterns(patterns, 2, "duplicate-token")
    if tokens.shape != patterns.shape[1:2] + patterns.shape[-1:]:
        raise InterpError(f"tokens {tuple(tokens.shape)} do not match patterns {tuple(patterns.shape)}")
    t = tokens.shape[1]
    earlier = torch.ones(t, t, dtype=torch.bool).tril(-1)  # key strictly before query
    same = (tokens[:, :, None] == tokens[:, None, :]) & earlier  # (B, Tq, Tk)
    has = same.any(-1)  # (B, Tq)
    if not has.any():
        raise InterpError("no token of the probe occurs twice, so the duplicate-token score is undefined")
    mass = (patterns * same[None, :, None].float()).sum(-1)  # (L, B, H, Tq)
    return (mass * has[None, :, None].float()).sum(dim=(1, 3)) / has.sum()


# ---- probe inputs ----------------------------------------------------------------------------------------
def repeated_random_tokens(
    vocab_size: int, seq_len: int, batch: int, bos_token_id: int | None, seed: int = 0
) -> torch.Tensor:
    """``[BOS] + r + r`` for ``batch`` random sequences ``r``: int64 (batch, 2 * seq_len + 1).

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


def stdlib_contexts(tokenizer: Any, n_contexts: int = 16, seq_len: int = 128, split: str = "heldout") -> torch.Tensor:
    """Natural code: (n_contexts, seq_len) int64, the stdlib ``split`` files tokenized in order, each
    followed by EOS, concatenated and cut into contexts that start with BOS (the tokenizer's)."""
    from interp.model.stdlib import iter_stdlib_documents

    if seq_len < 3 or n_contexts < 1:
        raise InterpError(f"natural-text probes need n_contexts >= 1 and seq_len >= 3, got {n_contexts}, {seq_len}")
    bos, eos, body = tokenizer.bos_token_id, tokenizer.eos_token_id, seq_len - 1
    stream: list[int] = []
    for text in iter_stdlib_documents(split):  # type: ignore[arg-type]
        ids = tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"]
        stream += ids + ([eos] if eos is not None else [])
        if len(stream) >= n_contexts * body:
            break
    if len(stream) < n_contexts * body:
        raise InterpError(f"the {split} split has {len(stream)} tokens, fewer than {n_contexts} x {body}")
    rows = torch.tensor(stream[: n_contexts * body]).view(n_contexts, body)
    return torch.cat([torch.full((n_contexts, 1), bos), rows], dim=1) if bos is not None else rows


def _check_probe_length(model: ProbeTarget, seq_len: int, what: str) -> tuple[int, int | None]:
    vocab, bos, n_ctx, _ = _model_facts(model)
    if bos is None:
        raise InterpError(f"the model has no BOS token; the {what} probe starts with BOS")
    if seq_len < 2:
        raise InterpError(f"the {what} probe needs seq_len >= 2, got {seq_len}")
    if n_ctx is not None and 2 * seq_len + 1 > n_ctx:
        raise InterpError(
            f"the {what} probe with seq_len={seq_len} needs {2 * seq_len + 1} positions but the model has "
            f"{n_ctx}; pass seq_len <= {(n_ctx - 1) // 2}"
        )
    return vocab, bos


# ---- the probes ------------------------------------------------------------------------------------------
def induction_score(model: ProbeTarget, seq_len: int = 50, batch: int = 16, seed: int = 0) -> torch.Tensor:
    """Induction score of every head: float32 (n_layers, n_heads) on CPU (:func:`induction_pattern_score`
    on :func:`repeated_random_tokens`). A Hugging Face model's training mode is restored after."""
    vocab, bos = _check_probe_length(model, seq_len, "induction")
    tokens = repeated_random_tokens(vocab, seq_len, batch, bos, seed)
    return induction_pattern_score(attention_patterns(model, tokens), seq_len)


def head_scores(
    model: ProbeTarget, natural: torch.Tensor | None = None, seq_len: int = 50, batch: int = 16, seed: int = 0
) -> HeadScores:
    """All four scores of every head. ``natural`` (B, T) is the natural text for the previous-token and
    BOS scores; by default :func:`stdlib_contexts` of the model's tokenizer (an ``interp.Model`` only).
    The induction and duplicate-token scores use ``[BOS] r r`` with ``seq_len``, ``batch``, ``seed``."""
    if natural is None:
        if not _is_interp_model(model):
            raise InterpError("pass natural= token ids (B, T) for a model without its own tokenizer")
        natural = stdlib_contexts(model.tokenizer, seq_len=min(128, model.info.n_ctx))
    vocab, bos = _check_probe_length(model, seq_len, "induction")
    probe = repeated_random_tokens(vocab, seq_len, batch, bos, seed)
    on_text, on_probe = attention_patterns(model, natural), attention_patterns(model, probe)
    return HeadScores(
        previous_token=previous_token_pattern_score(on_text),
        induction=induction_pattern_score(on_probe, seq_len),
        duplicate_token=duplicate_token_pattern_score(on_probe, probe),
        bos=bos_pattern_score(on_text),
    )


def copying_gap(model: ProbeTarget, n: int = 50, batch: int = 16, seed: int = 0) -> CopyingGap:
    """Mean loss on r_2..r_n in the first and in the second copy of ``[BOS] r r`` (r_1 is left out of
    both: nothing in the context predicts it)."""
    vocab, bos = _check_probe_length(model, n, "copying")
    tokens = repeated_random_tokens(vocab, n, batch, bos, seed)  # (B, 2n + 1)
    logits, _ = _run(model, tokens, [0])
    logp = torch.log_softmax(logits[:, :-1], dim=-1)
    loss = -logp.gather(-1, tokens[:, 1:, None]).squeeze(-1)  # (B, 2n): loss[:, i] predicts token i + 1
    return CopyingGap(first=loss[:, 1:n].mean().item(), second=loss[:, n + 1 :].mean().item(), n=n)


@torch.no_grad()
def next_token_predictions(
    model: ProbeTarget, contexts: torch.Tensor, batch_size: int = 16
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-position next-token loss (N, T - 1) float32 and top-1 prediction (N, T - 1) int64 of ``contexts``
    (N, T), computed ``batch_size`` contexts at a time (the full logits are never held for all of them)."""
    losses, tops = [], []
    for start in range(0, len(contexts), batch_size):
        batch = contexts[start : start + batch_size]
        logits = _logits(model, batch)[:, :-1]  # (B, T - 1, V)
        losses.append(torch.nn.functional.cross_entropy(logits.transpose(1, 2), batch[:, 1:], reduction="none"))
        tops.append(logits.argmax(-1))
    return torch.cat(losses), torch.cat(tops)


def _logits(model: ProbeTarget, tokens: torch.Tensor) -> torch.Tensor:
    """Logits (B, T, V) float32 on CPU, with no pattern hooks attached."""
    if _is_interp_model(model):
        return model.forward(tokens.to(model.device)).float().cpu()
    _model_facts(model)
    was_training = model.training
    model.eval()
    try:
        return model(tokens.to(next(model.parameters()).device)).logits.float().cpu()
    finally:
        model.train(was_training)
