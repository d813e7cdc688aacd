"""Reading and forcing the codes of a finetuned codebook model (see ``interp.codebooks.finetune``).

- :func:`next_token_shift` compares the next-token distribution with and without forcing a code;
  :func:`target_mass` measures how much forcing raises the probability of chosen tokens;
  :func:`generate_with_codes` generates (greedy or sampled) while a code is forced.

Forcing edits the selected code ids and recomputes y as the mean of the selected code vectors, so the
downstream model sees a sum of codes it was finetuned to read.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Literal, NamedTuple

import torch

from interp.codebooks.bottleneck import CodebookBottleneck, CodeForce, codebook_hooks
from interp.errors import InterpError
from interp.model.model import Model


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
