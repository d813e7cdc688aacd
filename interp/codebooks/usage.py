"""Which codes of a finetuned codebook model fire where: per-code token statistics and example contexts.

:func:`code_usage` records the selected codes on a set of contexts; :func:`fire_mask`,
:func:`token_counts` and :func:`usage_summary` turn that into per-code statistics (the tokens a code fires
on, the tokens that follow them, example contexts).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NamedTuple

import torch

from interp.codebooks.bottleneck import CodebookBottleneck, SnapOutput, codebook_hooks
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
