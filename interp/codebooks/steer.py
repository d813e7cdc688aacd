"""Reading and forcing the codes of a finetuned codebook model (see ``interp.codebooks.finetune``).

- :func:`code_usage` records which codes fire where on a set of contexts; :func:`fire_mask`,
  :func:`token_counts` and :func:`usage_summary` turn that into per-code statistics (the tokens a code
  fires on, the tokens that follow them, example contexts).
- :func:`next_token_shift` compares the next-token distribution with and without forcing a code;
  :func:`target_mass` measures how much forcing raises the probability of chosen tokens;
  :func:`generate_with_codes` generates (greedy or sampled) while a code is forced.

Forcing edits the selected code ids and recomputes y as the mean of the selected code vectors, so the
downstream model sees a sum of codes it was finetuned to read.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Literal, NamedTuple

import torch

from interp.codebooks.finetune import CodebookBottleneck, CodeForce, SnapOutput, codebook_hooks
from interp.errors import InterpError
from interp.model.model import Model


class CodeUsage(NamedTuple):
    """Codes selected at one site over a set of contexts."""

    tokens: torch.Tensor
    """Token ids (n, T)."""
    codes: torch.Tensor
    """Selected code ids (n, T, G, k), best match first."""


@torch.no_grad()
def code_usage(
    model: Model, codebooks: Mapping[str, CodebookBottleneck], tokens: torch.Tensor, batch_size: int = 8
) -> dict[str, CodeUsage]:
    """Site -> :class:`CodeUsage` of ``tokens`` (n, T) run through the model with the codebooks."""
    parts: dict[str, list[torch.Tensor]] = {s: [] for s in codebooks}
    for batch in tokens.split(batch_size):
        record: dict[str, SnapOutput] = {}
        with model.hooks(codebook_hooks(codebooks, record=record)):
            model.forward(batch.to(model.device))
        for site, snap in record.items():
            parts[site].append(snap.codes.cpu())
    return {s: CodeUsage(tokens.cpu(), torch.cat(p)) for s, p in parts.items()}


def fire_mask(usage: CodeUsage, group: int, code: int) -> torch.Tensor:
    """(n, T) bool: where ``code`` is among the selected codes of codebook ``group``."""
    return (usage.codes[:, :, group] == code).any(-1)


def token_counts(usage: CodeUsage, group: int, code: int, vocab: int, offset: int = 0) -> torch.Tensor:
    """(vocab,) counts of the token ``offset`` positions after each firing (0: the token it fires on,
    1: the next token; firings without such a token are skipped)."""
    fired = fire_mask(usage, group, code)
    seq = usage.tokens.shape[1]
    following = usage.tokens[:, offset:][fired[:, : seq - offset]]
    return torch.bincount(following, minlength=vocab)


def usage_summary(model: Model, usage: Mapping[str, CodeUsage], top: int = 5, examples: int = 3) -> dict[str, Any]:
    """JSON-ready statistics: site -> group -> list of used codes, most frequent first, each with its
    ``count``, ``top_tokens`` and ``top_next_tokens`` ([token string, count], by count) and ``examples``
    (up to ``examples`` snippets, the firing token marked with [[ ]])."""
    vocab = model.info.d_vocab
    out: dict[str, Any] = {}
    for site, u in usage.items():
        groups: dict[str, list[dict[str, Any]]] = {}
        n_groups, n_codes = u.codes.shape[2], int(u.codes.max()) + 1
        for g in range(n_groups):
            counts = torch.bincount(u.codes[:, :, g].flatten(), minlength=n_codes)
            rows = []
            for code in counts.argsort(descending=True).tolist():
                if counts[code] == 0:
                    break
                rows.append({
                    "code": code,
                    "count": int(counts[code]),
                    "top_tokens": _top(model, token_counts(u, g, code, vocab), top),
                    "top_next_tokens": _top(model, token_counts(u, g, code, vocab, offset=1), top),
                    "examples": _examples(model, u, g, code, examples),
                })
            groups[str(g)] = rows
        out[site] = groups
    return out


def _top(model: Model, counts: torch.Tensor, n: int) -> list[list[Any]]:
    values, ids = counts.topk(min(n, int((counts > 0).sum())))
    return [[s, int(c)] for s, c in zip(model.token_strings(ids), values.tolist())]


def _examples(model: Model, u: CodeUsage, group: int, code: int, n: int, width: int = 6) -> list[str]:
    hits = fire_mask(u, group, code).nonzero()[:n].tolist()
    snippets = []
    for row, pos in hits:
        left = model.tokenizer.decode(u.tokens[row, max(0, pos - width): pos].tolist())
        mid = model.tokenizer.decode([int(u.tokens[row, pos])])
        right = model.tokenizer.decode(u.tokens[row, pos + 1: pos + 1 + width].tolist())
        snippets.append(f"{left}[[{mid}]]{right}")
    return snippets


# ---- steering ------------------------------------------------------------------------------------
class NextTokenShift(NamedTuple):
    """Next-token distributions at the last position, without and with the forced code."""

    base: torch.Tensor
    """Probabilities (B, vocab) of the codebook model, nothing forced."""
    forced: torch.Tensor
    """Probabilities (B, vocab) with the code forced."""


def _tokens(model: Model, prompt: str | torch.Tensor) -> torch.Tensor:
    tokens = model.to_tokens(prompt) if isinstance(prompt, str) else prompt
    return tokens if tokens.ndim == 2 else tokens[None]


def _check(codebooks: Mapping[str, CodebookBottleneck], site: str, code_id: int) -> None:
    if site not in codebooks:
        raise InterpError(f"No codebook at {site!r}; this run has codebooks at {', '.join(codebooks)}.")
    if not 0 <= code_id < codebooks[site].shape[1]:
        raise InterpError(f"Code {code_id} does not exist at {site!r} (it has {codebooks[site].shape[1]} codes).")


@torch.no_grad()
def next_token_shift(
    model: Model,
    codebooks: Mapping[str, CodebookBottleneck],
    prompt: str | torch.Tensor,
    site: str,
    head: int,
    code_id: int,
    positions: Sequence[int] | Literal["all", "last"] = "last",
    mode: Literal["include", "replace"] = "include",
) -> NextTokenShift:
    """Next-token probabilities after ``prompt`` (a string or ids (B, T)) with and without forcing
    ``code_id`` into codebook ``head`` of ``site`` at ``positions`` (default: the last position only)."""
    _check(codebooks, site, code_id)
    tokens = _tokens(model, prompt).to(model.device)
    pos = None if positions == "all" else [-1] if positions == "last" else list(positions)
    force = {site: [CodeForce(head, code_id, pos, mode)]}
    with model.hooks(codebook_hooks(codebooks)):
        base = model.forward(tokens)[:, -1].float().softmax(-1)
    with model.hooks(codebook_hooks(codebooks, forces=force)):
        forced = model.forward(tokens)[:, -1].float().softmax(-1)
    return NextTokenShift(base.cpu(), forced.cpu())


class TargetMass(NamedTuple):
    """Next-token probability mass on a set of target tokens, per prompt."""

    base: torch.Tensor
    """(n,) with nothing forced."""
    forced: torch.Tensor
    """(n,) with the code forced; ``forced - base`` is the rise."""


def target_mass(
    model: Model,
    codebooks: Mapping[str, CodebookBottleneck],
    prompts: Sequence[torch.Tensor],
    site: str,
    head: int,
    code_id: int,
    targets: Sequence[int],
    mode: Literal["include", "replace"] = "replace",
    batch_size: int = 32,
) -> TargetMass:
    """Summed next-token probability of ``targets`` after each prompt (1-D token ids), without and with
    ``code_id`` forced at the prompt's last position; prompts of equal length run as one batch."""
    base, forced = torch.empty(len(prompts)), torch.empty(len(prompts))
    ids = torch.as_tensor(list(targets), dtype=torch.long)
    by_len: dict[int, list[int]] = {}
    for i, p in enumerate(prompts):
        by_len.setdefault(int(p.shape[-1]), []).append(i)
    for rows in by_len.values():
        for start in range(0, len(rows), batch_size):
            chunk = rows[start: start + batch_size]
            batch = torch.stack([prompts[i].reshape(-1) for i in chunk])
            s = next_token_shift(model, codebooks, batch, site, head, code_id, "last", mode)
            base[chunk], forced[chunk] = s.base[:, ids].sum(-1), s.forced[:, ids].sum(-1)
    return TargetMass(base, forced)


class Generation(NamedTuple):
    """A generated continuation."""

    text: str
    """The new tokens, decoded (the prompt is not included)."""
    tokens: torch.Tensor
    """The new token ids (max_new_tokens,)."""


@torch.no_grad()
def generate_with_codes(
    model: Model,
    codebooks: Mapping[str, CodebookBottleneck],
    prompt: str,
    site: str | None,
    head: int = 0,
    code_id: int = 0,
    positions: Sequence[int] | Literal["all", "last"] = "all",
    max_new_tokens: int = 20,
    greedy: bool = True,
    mode: Literal["include", "replace"] = "include",
    seed: int = 0,
) -> Generation:
    """Generate from ``prompt`` with the codebooks in place, forcing ``code_id`` at ``site`` / ``head``.

    ``positions``: ``all`` (every position, generated ones included), ``last`` (the position being
    predicted from, at each step), or explicit prompt positions. ``site=None`` forces nothing (the
    codebook model's own generation). The whole sequence is re-run each step (no KV cache).
    """
    if site is not None:
        _check(codebooks, site, code_id)
    pos = None if positions == "all" else [-1] if positions == "last" else list(positions)
    forces = {site: [CodeForce(head, code_id, pos, mode)]} if site is not None else {}
    tokens = model.to_tokens(prompt).to(model.device)
    gen = torch.Generator().manual_seed(seed)
    start = tokens.shape[1]
    with model.hooks(codebook_hooks(codebooks, forces=forces)):
        for _ in range(max_new_tokens):
            if tokens.shape[1] >= model.info.n_ctx:
                break
            logits = model.forward(tokens)[0, -1].float()
            if greedy:
                nxt = logits.argmax()
            else:
                nxt = torch.multinomial(logits.softmax(-1).cpu(), 1, generator=gen)[0].to(tokens.device)
            tokens = torch.cat([tokens, nxt.view(1, 1)], dim=1)
    new = tokens[0, start:].cpu()
    return Generation(model.tokenizer.decode(new.tolist()), new)
