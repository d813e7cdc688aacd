"""Task generators, and the registry that the CLI and :func:`interp.circuits.make_task` read.

- ``induction`` works on any model: ``[BOS] r r[:S-1]`` for S random tokens ``r`` (no repeats), answer
  ``r[S-1]``; the corrupted prompt ``[BOS] r' r[:S-1]`` replaces the first copy with S other random tokens
  (disjoint from ``r``), so nothing in it can be copied; the wrong answer is ``r'[S-1]``, the token that the
  same copying would give in the corrupted prompt. Metric: logit difference.
- ``repeated-identifier``, ``self-attribute``: code tasks on held-out stdlib text (:mod:`interp.circuits.code_tasks`).
- ``ioi``, ``greater-than``, ``docstring``: GPT-2-class tasks of :mod:`interp.circuits.literature`.

Every generator is ``(model, n_prompts, seed, **options) -> Task`` and is deterministic for a seed.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import torch

from interp.circuits.code_tasks import CODE_TASKS, code_task
from interp.circuits.literature import docstring_task, greater_than_task, ioi_task
from interp.circuits.tasks import Task
from interp.errors import InterpError, close_matches


def induction_task(model: Any, n_prompts: int = 32, seed: int = 0, seq_len: int = 16) -> Task:
    """Induction on repeated random tokens (see the module docstring); prompts have 2 * seq_len tokens with BOS."""
    tokenizer, info = model.tokenizer, model.info
    special = set(getattr(tokenizer, "all_special_ids", []) or [])
    if info.bos_token_id is not None:
        special.add(int(info.bos_token_id))
    pool = torch.tensor([i for i in range(info.d_vocab) if i not in special])
    if seq_len < 2 or len(pool) < 2 * seq_len:
        raise InterpError(
            f"induction needs seq_len >= 2 and at least {2 * seq_len} ordinary tokens; the model has {len(pool)}."
        )
    if 2 * seq_len > info.n_ctx:
        raise InterpError(f"induction prompts of seq_len={seq_len} need {2 * seq_len} positions; "
                          f"{info.name!r} has {info.n_ctx}. Lower seq_len.")
    gen = torch.Generator().manual_seed(seed)
    order = torch.rand(n_prompts, len(pool), generator=gen).argsort(1)[:, : 2 * seq_len]
    r, r_other = pool[order[:, :seq_len]], pool[order[:, seq_len:]]  # (n, S) each, disjoint, no repeats
    tail = r[:, : seq_len - 1]
    bos = [] if info.bos_token_id is None else [torch.full((n_prompts, 1), int(info.bos_token_id))]
    clean = torch.cat([*bos, r, tail], 1)
    corrupted = torch.cat([*bos, r_other, tail], 1)
    return Task("induction", clean, corrupted, r[:, -1:], r_other[:, -1:], "logit_diff",
                description="induction on repeated random tokens; first copy replaced by other random tokens; "
                            "logit(copied token) - logit(token the corrupted copy would give)",
                info={"seed": seed, "seq_len": seq_len})


TaskFactory = Callable[..., Task]
TASKS: dict[str, TaskFactory] = {
    "induction": induction_task,
    **{name: functools.partial(code_task, name=name) for name in CODE_TASKS},
    "ioi": ioi_task,
    "greater-than": greater_than_task,
    "docstring": docstring_task,
}
"""Task name -> generator ``(model, n_prompts, seed, **options)``; the CLI's ``--task`` choices."""


def make_task(name: str, model: Any, n_prompts: int = 32, seed: int = 0, **options: Any) -> Task:
    """Build the registered task ``name`` for ``model`` (see ``TASKS``)."""
    if name not in TASKS:
        near = close_matches(name, TASKS)
        raise InterpError(f"Unknown task {name!r}. Tasks: {', '.join(TASKS)}."
                          + (f" Did you mean {near[0]!r}?" if near else ""))
    return TASKS[name](model, n_prompts=n_prompts, seed=seed, **options)
