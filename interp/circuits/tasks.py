"""Circuit-discovery tasks: clean and corrupted prompts, answer tokens, and the metric that scores a run.

A :class:`Task` is data, not code: token ids of ``n`` prompt pairs, the answer (and wrong-answer) token ids of
each pair, the position at which the answer is predicted, and the name of a metric. Every method in
``interp.circuits`` reads the same fields, so every method scores the same thing.

Contracts:
- ``clean`` and ``corrupted`` are int64 (n, T). Row i of each is one pair; both hold the same number of
  positions, so activations of the two runs line up position by position.
- **Length rule.** :func:`task_from_text` refuses a pair whose clean and corrupted prompts tokenise to different
  lengths (``length_policy="error"``, the default) with an :class:`InterpError` naming the pair. With
  ``length_policy="pad"`` the shorter prompt of the pair is padded *at the end* with the pad token; positions
  stay aligned from the start, and each run reads its answer at its own prompt's last real token
  (``clean_pos`` / ``corrupted_pos``). Pairs of different lengths are always right-padded to one width T; a
  causal model never lets a pad token change an earlier position.
- ``answers`` (n, A) and ``wrong`` (n, W) are int64 token ids, ``-1`` where a row has fewer. W may be 0
  (``prob_diff`` and ``kl`` need no wrong answers).
- Metrics read the logits at the answer position of the run's *base* input (the clean position for runs on
  clean tokens, the corrupted position for runs on corrupted tokens) and give one value per prompt:
  - ``logit_diff``: mean answer logit minus the *largest* wrong-answer logit (the plain difference when there
    is one of each; the docstring task's "correct minus best wrong");
  - ``prob_diff``: summed answer probability minus summed wrong-answer probability (greater-than);
  - ``kl``: KL(p_clean || p_run) in nats over the whole vocabulary (ACDC's metric; 0 on the clean run).
  Higher is "more of the behaviour" for the first two, lower for ``kl``; the methods only use differences.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import torch

from interp.errors import InterpError

METRICS = ("logit_diff", "prob_diff", "kl")
LENGTH_POLICIES = ("error", "pad")
NO_TOKEN = -1
"""Filler in ``answers`` / ``wrong`` for rows with fewer tokens than the widest row."""


@dataclass(frozen=True, eq=False)
class Task:
    """Prompt pairs, answer tokens and a metric. Build one with :func:`task_from_text` or a generator."""

    name: str
    """Short identifier, e.g. ``induction``; recorded in every graph the task produces."""
    clean: torch.Tensor
    """(n, T) int64 token ids of the prompts on which the model shows the behaviour."""
    corrupted: torch.Tensor
    """(n, T) int64 token ids of the paired prompts on which it does not."""
    answers: torch.Tensor
    """(n, A) int64 token ids of the correct next tokens, ``-1`` filled."""
    wrong: torch.Tensor
    """(n, W) int64 token ids of wrong next tokens, ``-1`` filled; W may be 0."""
    metric: str = "logit_diff"
    """One of ``METRICS``."""
    clean_pos: torch.Tensor | None = None
    """(n,) int64 position of the answer prediction in each clean prompt; None means T - 1 for every row."""
    corrupted_pos: torch.Tensor | None = None
    """(n,) int64 the same for the corrupted prompts; None means ``clean_pos``."""
    description: str = ""
    """One sentence on what the task measures and how it is corrupted."""
    texts: tuple[str, ...] = ()
    """Clean prompts as text (for display), when the task was built from text."""
    info: dict[str, Any] = field(default_factory=dict)
    """Generator settings (seed, lengths ...), recorded in graph metadata."""

    def __post_init__(self) -> None:
        c, x = self.clean, self.corrupted
        if c.dim() != 2 or c.shape != x.shape or c.shape[0] == 0:
            raise InterpError(
                f"Task {self.name!r}: clean and corrupted must be (n, T) tensors of one shape with n >= 1, got "
                f"{tuple(c.shape)} and {tuple(x.shape)}. Build tasks with task_from_text, which pads and checks."
            )
        if self.metric not in METRICS:
            raise InterpError(f"Task {self.name!r}: metric must be one of {', '.join(METRICS)}, got {self.metric!r}.")
        n, t = c.shape
        for what, ids in (("answers", self.answers), ("wrong", self.wrong)):
            if ids.dim() != 2 or ids.shape[0] != n:
                raise InterpError(f"Task {self.name!r}: {what} must be ({n}, k), got {tuple(ids.shape)}.")
        if not (self.answers >= 0).any(1).all():
            raise InterpError(f"Task {self.name!r}: every prompt needs at least one answer token.")
        if self.metric == "logit_diff" and not (self.wrong >= 0).any(1).all():
            raise InterpError(
                f"Task {self.name!r}: the logit_diff metric needs a wrong-answer token for every prompt; "
                "give wrong answers or use metric='prob_diff' or 'kl'."
            )
        clean_pos = torch.full((n,), t - 1) if self.clean_pos is None else self.clean_pos.long()
        corrupted_pos = clean_pos if self.corrupted_pos is None else self.corrupted_pos.long()
        for pos in (clean_pos, corrupted_pos):
            if pos.shape != (n,) or pos.min() < 0 or pos.max() >= t:
                raise InterpError(f"Task {self.name!r}: answer positions must be ({n},) within [0, {t}).")
        object.__setattr__(self, "clean_pos", clean_pos)
        object.__setattr__(self, "corrupted_pos", corrupted_pos)

    @property
    def n(self) -> int:
        """Number of prompt pairs."""
        return int(self.clean.shape[0])

    @property
    def seq_len(self) -> int:
        """Positions per prompt (T)."""
        return int(self.clean.shape[1])

    def positions(self, base: str) -> torch.Tensor:
        """(n,) answer positions of runs whose input is ``base`` (``clean`` or ``corrupted``)."""
        pos = self.clean_pos if base == "clean" else self.corrupted_pos
        assert pos is not None
        return pos

    def subset(self, index: torch.Tensor | Sequence[int]) -> Task:
        """The task restricted to the given prompt rows (in that order)."""
        idx = torch.as_tensor(index, dtype=torch.long)
        keep = [self.texts[i] for i in idx.tolist()] if self.texts else []
        assert self.clean_pos is not None and self.corrupted_pos is not None
        return Task(self.name, self.clean[idx], self.corrupted[idx], self.answers[idx], self.wrong[idx],
                    self.metric, self.clean_pos[idx], self.corrupted_pos[idx], self.description, tuple(keep),
                    dict(self.info))

    def metadata(self) -> dict[str, Any]:
        """What a graph records about the task (JSON-ready)."""
        return {"name": self.name, "metric": self.metric, "n_prompts": self.n, "seq_len": self.seq_len,
                "description": self.description, "examples": list(self.texts[:3]), "settings": dict(self.info)}


def tile(t: torch.Tensor, k: int) -> torch.Tensor:
    """``t`` (n, ...) repeated ``k`` times along dim 0: rows [j*n, (j+1)*n) are copy j."""
    return t.repeat(k, *([1] * (t.dim() - 1)))


def metric_values(
    metric: str,
    final: torch.Tensor,
    answers: torch.Tensor,
    wrong: torch.Tensor,
    clean_final: torch.Tensor | None = None,
) -> torch.Tensor:
    """Per-row metric (R,) of final-position logits ``final`` (R, V); see the module docstring.

    ``answers`` (R, A) and ``wrong`` (R, W) are ``-1`` filled; ``clean_final`` (R, V) is needed for ``kl``.
    Differentiable in ``final``.
    """
    if metric == "kl":
        if clean_final is None:
            raise ValueError("the kl metric needs the clean run's final logits")
        logp_clean = torch.log_softmax(clean_final.float(), -1)
        return (logp_clean.exp() * (logp_clean - torch.log_softmax(final, -1))).sum(-1)
    a_ok, w_ok = answers >= 0, wrong >= 0
    if metric == "logit_diff":
        a = final.gather(1, answers.clamp_min(0))
        w = final.gather(1, wrong.clamp_min(0)).masked_fill(~w_ok, float("-inf"))
        return (a * a_ok).sum(1) / a_ok.sum(1) - w.max(1).values
    probs = torch.softmax(final, -1)
    a = (probs.gather(1, answers.clamp_min(0)) * a_ok).sum(1)
    w = (probs.gather(1, wrong.clamp_min(0)) * w_ok).sum(1) if wrong.shape[1] else torch.zeros_like(a)
    return a - w


class Baseline(NamedTuple):
    """The unpatched model on a task: the two ends every method measures against."""

    clean_final: torch.Tensor
    """(n, V) float32 logits of the clean runs at their answer positions."""
    corrupted_final: torch.Tensor
    """(n, V) float32 logits of the corrupted runs at their answer positions."""
    m_clean: torch.Tensor
    """(n,) metric of the clean runs."""
    m_corrupted: torch.Tensor
    """(n,) metric of the corrupted runs."""

    @property
    def gap(self) -> float:
        """mean m(clean) - mean m(corrupted): the effect a full circuit restores."""
        return float(self.m_clean.mean() - self.m_corrupted.mean())


@dataclass(frozen=True)
class TaskBatch:
    """Rows ``[start, start + B)`` of a task on the model's device, with what a metric needs."""

    clean: torch.Tensor
    """(B, T) clean token ids."""
    corrupted: torch.Tensor
    """(B, T) corrupted token ids."""
    answers: torch.Tensor
    """(B, A) answer ids."""
    wrong: torch.Tensor
    """(B, W) wrong-answer ids."""
    clean_pos: torch.Tensor
    """(B,) answer positions of clean runs."""
    corrupted_pos: torch.Tensor
    """(B,) answer positions of corrupted runs."""
    clean_final: torch.Tensor
    """(B, V) unpatched clean logits at the answer position (the ``kl`` reference)."""
    metric: str
    """The task's metric name."""

    @property
    def size(self) -> int:
        return int(self.clean.shape[0])

    def positions(self, base: str = "clean", k: int = 1) -> torch.Tensor:
        """(K * B,) answer positions of K copies of this batch run on ``base`` tokens."""
        return tile(self.clean_pos if base == "clean" else self.corrupted_pos, k)

    def values(self, final: torch.Tensor) -> torch.Tensor:
        """Per-row metric (K * B,) of answer-position logits (K * B, V) from K copies of this batch."""
        k = final.shape[0] // self.size
        return metric_values(self.metric, final.float(), tile(self.answers, k), tile(self.wrong, k),
                             tile(self.clean_final, k))


def task_batches(task: Task, baseline: Baseline, batch_size: int, device: torch.device) -> list[TaskBatch]:
    """The task cut into batches of at most ``batch_size`` prompt pairs, moved to ``device``."""
    assert task.clean_pos is not None and task.corrupted_pos is not None
    out = []
    for a in range(0, task.n, max(1, batch_size)):
        s = slice(a, a + batch_size)
        out.append(TaskBatch(task.clean[s].to(device), task.corrupted[s].to(device), task.answers[s].to(device),
                             task.wrong[s].to(device), task.clean_pos[s].to(device),
                             task.corrupted_pos[s].to(device), baseline.clean_final[s].to(device), task.metric))
    return out


def single_token(tokenizer: Any, text: str) -> int:
    """The id of ``text`` if the tokenizer encodes it as exactly one token; otherwise an InterpError."""
    ids = tokenizer.encode(text, add_special_tokens=False)
    if len(ids) != 1:
        pieces = [tokenizer.decode([i]) for i in ids]
        raise InterpError(
            f"Answer {text!r} is {len(ids)} tokens under this tokenizer ({pieces}); answers must be single "
            "tokens (check the leading space), or drop that prompt."
        )
    return int(ids[0])


def _answer_ids(tokenizer: Any, items: Sequence[str | Sequence[str]] | None, n: int, what: str) -> torch.Tensor:
    if items is None:
        return torch.empty(n, 0, dtype=torch.long)
    if len(items) != n:
        raise InterpError(f"{what}: {len(items)} entries for {n} prompts; give one (or a list) per prompt.")
    rows = [[single_token(tokenizer, s)] if isinstance(s, str) else [single_token(tokenizer, x) for x in s]
            for s in items]
    width = max((len(r) for r in rows), default=0)
    return torch.tensor([r + [NO_TOKEN] * (width - len(r)) for r in rows], dtype=torch.long).reshape(n, width)


def task_from_text(
    model: Any,
    name: str,
    clean: Sequence[str],
    corrupted: Sequence[str],
    answers: Sequence[str | Sequence[str]],
    wrong: Sequence[str | Sequence[str]] | None = None,
    *,
    metric: str = "logit_diff",
    length_policy: str = "error",
    prepend_bos: bool = True,
    description: str = "",
    info: dict[str, Any] | None = None,
) -> Task:
    """Tokenise prompt pairs with ``model``'s tokenizer into a :class:`Task` (see the module's length rule).

    ``answers[i]`` / ``wrong[i]`` are a string or a list of strings, each of which must be one token.
    """
    if length_policy not in LENGTH_POLICIES:
        raise InterpError(f"length_policy must be one of {', '.join(LENGTH_POLICIES)}, got {length_policy!r}.")
    if len(clean) != len(corrupted) or not clean:
        raise InterpError(f"Need as many corrupted prompts as clean ones (got {len(clean)} and {len(corrupted)}).")
    enc = [[model.to_tokens(t, prepend_bos=prepend_bos)[0] for t in side] for side in (clean, corrupted)]
    lengths = torch.tensor([[len(a), len(b)] for a, b in zip(*enc)])
    bad = (lengths[:, 0] != lengths[:, 1]).nonzero().flatten()
    if len(bad) and length_policy == "error":
        i = int(bad[0])
        raise InterpError(
            f"Task {name!r}: {len(bad)} of {len(clean)} prompt pairs tokenise to different lengths; pair {i} has "
            f"{int(lengths[i, 0])} clean and {int(lengths[i, 1])} corrupted tokens ({clean[i]!r} vs "
            f"{corrupted[i]!r}). Use corruptions of equal token length, or length_policy='pad' (the shorter "
            "prompt is padded at the end and each run reads its answer at its own last token)."
        )
    width = int(lengths.max())
    pad = pad_id(model.tokenizer)
    tokens = torch.full((2, len(clean), width), pad, dtype=torch.long)
    for side in range(2):
        for i, ids in enumerate(enc[side]):
            tokens[side, i, : len(ids)] = ids.cpu()
    tok = model.tokenizer
    return Task(name, tokens[0], tokens[1], _answer_ids(tok, answers, len(clean), "answers"),
                _answer_ids(tok, wrong, len(clean), "wrong"), metric, lengths[:, 0] - 1, lengths[:, 1] - 1,
                description, tuple(clean), dict(info or {}))


def pad_id(tokenizer: Any) -> int:
    """The tokenizer's pad token, else its EOS, else its BOS, else 0."""
    for attr in ("pad_token_id", "eos_token_id", "bos_token_id"):
        value = getattr(tokenizer, attr, None)
        if value is not None:
            return int(value)
    return 0


@torch.no_grad()
def check_task(model: Any, task: Task, batch_size: int = 64) -> Baseline:
    """Run ``task`` on ``model`` unpatched; raise InterpError if the task cannot be scored on it.

    Refused: token ids outside the vocabulary, prompts longer than the context, a metric that is NaN on
    either run, and a metric whose mean does not change between clean and corrupted (nothing to explain).
    """
    info = model.info
    for what, ids in (("clean", task.clean), ("corrupted", task.corrupted), ("answer", task.answers),
                      ("wrong-answer", task.wrong)):
        if ids.numel() and int(ids.max()) >= info.d_vocab:
            raise InterpError(
                f"Task {task.name!r} has {what} token id {int(ids.max())}, but model {info.name!r} has only "
                f"{info.d_vocab} tokens. Build the task with this model's tokenizer."
            )
    if task.seq_len > info.n_ctx:
        raise InterpError(f"Task {task.name!r} prompts have {task.seq_len} tokens; {info.name!r} accepts {info.n_ctx}.")
    finals = []
    for tokens, base in ((task.clean, "clean"), (task.corrupted, "corrupted")):
        pos = task.positions(base)
        parts = [model.logits_at(tokens[a : a + batch_size], pos[a : a + batch_size]).float()
                 for a in range(0, task.n, batch_size)]
        finals.append(torch.cat(parts).cpu())
    m = [metric_values(task.metric, f, task.answers, task.wrong, finals[0]) for f in finals]
    if not all(torch.isfinite(v).all() for v in m):
        raise InterpError(
            f"The {task.metric} metric of task {task.name!r} is NaN or infinite on model {info.name!r}. Check the "
            "answer tokens and the model's logits (a model in half precision can overflow)."
        )
    gap = float(m[0].mean() - m[1].mean())
    if abs(gap) <= 1e-6 * (1.0 + float(m[0].abs().mean())):
        raise InterpError(
            f"The {task.metric} metric of task {task.name!r} is the same on clean and corrupted prompts "
            f"({float(m[0].mean()):.6g}), so there is no behaviour to explain: the corruption does not change "
            "what the metric reads. Use a corruption that changes the answer, or another metric or model."
        )
    return Baseline(finals[0], finals[1], m[0], m[1])
