"""Discrete-SAE circuit identification (O'Neill & Bui 2024; specs/methods.md §8).

1. Every head's output (``z_h @ W_O[l, h]``, what TransformerLens's ``attn.hook_result`` holds for head h),
   averaged over each prompt's positions up to its answer position, for N positive (clean) and N negative
   (corrupted) prompts: X (2N, heads, d_model), positives first.
2. One SAE over all head vectors, trained by interp's own trainer (``interp.training.train_dictionary``) on the
   vectors of ``train_prompts`` prompts drawn at random from all 2N (full batch, ``epochs`` steps, Adam): the
   registered ``relu_unitnorm`` architecture (ReLU, L1, tied pre-encoder / post-decoder bias initialised at
   the geometric median, unit-norm encoder and decoder vectors). The reference's loss averages the squared
   error over dimensions and ours sums it, so ``l1_coeff = lambda * d_model`` gives the same objective. (The
   reference code normalises its decoder weight over the latent axis, one row per output dimension, although
   its docstring says dictionary vectors; we keep each latent's decoder vector at unit norm, as the docstring
   and the paper describe.)
3. A head's code on a prompt is the index of its largest latent. Node score of head h: the number of its codes
   seen on positives and never on negatives (divided by its distinct codes with ``normalise``), softmaxed over
   all heads. Pair score of heads (h1 != h2): the number of code pairs seen on positives and never on
   negatives. Edge-derived head scores: walk the pairs by descending score, list their heads (h1, h2, h1',
   h2', ...), count each head among the first ``heads**2 // 2`` entries, softmax.

The trained dictionary records the model's fingerprint and ``HEAD_OUTPUT_HOOK`` as its hook, so a dictionary
made for another model or another hook is refused when passed back in.
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path
from typing import Any, NamedTuple

import torch

from interp.activations import TensorSource
from interp.circuits.components import ComponentGraph, capture_sources
from interp.circuits.tasks import Task
from interp.dictionaries import Dictionary, check_compatible, load_dictionary
from interp.errors import InterpError
from interp.training import TrainConfig, train_dictionary

log = logging.getLogger(__name__)
HEAD_OUTPUT_HOOK = "blocks.*.attn.hook_result.position_mean"
"""The 'hook' a discrete-SAE dictionary reads: every head's output averaged over the prompt's positions."""
ARCHITECTURE = "relu_unitnorm"


class DiscreteSaeResult(NamedTuple):
    """Scores and codes of a discrete-SAE run."""

    node_scores: torch.Tensor
    """(L, H) softmax over all heads of the unique-positive-code counts."""
    edge_head_scores: torch.Tensor
    """(L, H) softmax of head counts among the top pairs (the paper's edge-based prediction)."""
    pair_scores: torch.Tensor
    """(L * H, L * H) unique-positive code-pair counts of ordered head pairs (0 on the diagonal)."""
    codes: torch.Tensor
    """(2N, L * H) int64 code of each head on each prompt, positives first."""
    train_prompts: list[int]
    """Rows of X (0..2N-1) the SAE was trained on."""
    dictionary: str | None
    """Directory of the trained dictionary, when it was kept (``out_dir``) or passed in."""
    separation: torch.Tensor
    """(L, H) how far apart a head's vectors are on positives and negatives: the squared distance between the
    two means over the mean within-side variance (summed over dimensions). Near 0, the method cannot tell the
    head's role from its outputs, and its codes count noise."""


@torch.no_grad()
def head_vectors(model: Any, task: Task, batch_size: int = 32) -> torch.Tensor:
    """X (2N, L * H, d_model): head outputs averaged over positions 0..answer position; clean rows first."""
    cg = ComponentGraph.of(model)
    heads = [i for layer in range(cg.n_layers) for i in range(cg.head_src(layer), cg.mlp_src(layer))]
    parts = []
    for tokens, pos in ((task.clean, task.positions("clean")), (task.corrupted, task.positions("corrupted"))):
        for a in range(0, task.n, batch_size):
            t, p = tokens[a : a + batch_size], pos[a : a + batch_size]
            out, _ = capture_sources(model, cg, t, p)  # (n_src, B, T, D)
            mask = (torch.arange(t.shape[1])[None, :] <= p[:, None]).to(out)  # (B, T)
            mean = (out[heads] * mask[None, :, :, None]).sum(2) / mask.sum(1)[None, :, None]
            parts.append(mean.transpose(0, 1).cpu())  # (B, heads, D)
    return torch.cat(parts)


def _train(model: Any, X: torch.Tensor, rows: list[int], n_latents: int, l1: float, epochs: int, lr: float,
           seed: int, out_dir: Path) -> Dictionary:
    data = X[rows].flatten(0, 1)  # (prompts * heads, d_model)
    source = TensorSource({HEAD_OUTPUT_HOOK: data}, model=model.info.to_dict())
    cfg = TrainConfig(architecture=ARCHITECTURE, hook=HEAD_OUTPUT_HOOK, d_sae=n_latents, normalization="none",
                      n_tokens=epochs * len(data), batch_size=len(data), lr=lr, schedule="constant",
                      grad_clip=None, resample_every=0, seed=seed, init_tokens=len(data),
                      log_every=max(1, epochs // 10), checkpoint_every=epochs, name="discrete-sae",
                      params={"l1_coeff": l1 * X.shape[-1]})
    result = train_dictionary(cfg, source, out_dir, progress=False)
    return load_dictionary(result.dictionaries[0])


def _checked(model: Any, dictionary: Dictionary | str | Path) -> Dictionary:
    d = dictionary if isinstance(dictionary, Dictionary) else load_dictionary(dictionary)
    if d.cfg.hook_in != HEAD_OUTPUT_HOOK:
        raise InterpError(
            f"This dictionary reads {d.cfg.hook_in!r}; discrete-SAE circuits need one trained on per-head outputs "
            f"averaged over positions ({HEAD_OUTPUT_HOOK!r}). Pass none to train one, or one saved by an earlier run."
        )
    check_compatible(d, model.info, {HEAD_OUTPUT_HOOK: model.info.d_model})
    return d


def _presence(codes: torch.Tensor, n: int) -> torch.Tensor:
    """(E, C) integer codes -> (C, n) bool: which values occur in each column."""
    present = torch.zeros(codes.shape[1], n, dtype=torch.bool)
    present[torch.arange(codes.shape[1]).expand_as(codes), codes] = True
    return present


def _pair_scores(pos: torch.Tensor, neg: torch.Tensor, n: int) -> torch.Tensor:
    """(C, C) counts of code pairs (c[e, h1], c[e, h2]) seen on positives and never on negatives."""
    C = pos.shape[1]
    pair = torch.arange(C * C).view(C, C)

    def keys(codes: torch.Tensor) -> torch.Tensor:  # (E, C, C) unique key per (pair, code pair)
        return (pair[None] * n + codes[:, :, None]) * n + codes[:, None, :]

    unique = torch.unique(keys(pos))
    unique = unique[~torch.isin(unique, keys(neg))]
    counts = torch.bincount(unique // (n * n), minlength=C * C).view(C, C)
    return counts.fill_diagonal_(0)


def discrete_sae(
    model: Any,
    task: Task,
    *,
    n_latents: int = 200,
    l1: float = 0.02,
    epochs: int = 500,
    train_prompts: int = 10,
    lr: float = 1e-3,
    seed: int = 0,
    normalise: bool = False,
    dictionary: Dictionary | str | Path | None = None,
    out_dir: str | Path | None = None,
    batch_size: int = 32,
) -> DiscreteSaeResult:
    """Train (or take) the SAE, discretise every head's output, and score heads and head pairs."""
    info = model.info
    X = head_vectors(model, task, batch_size)
    gen = torch.Generator().manual_seed(seed)
    rows = torch.randperm(len(X), generator=gen)[: min(train_prompts, len(X))].tolist()
    if dictionary is not None:
        d, where = _checked(model, dictionary), (None if isinstance(dictionary, Dictionary) else str(dictionary))
    elif out_dir is not None:
        d = _train(model, X, rows, n_latents, l1, epochs, lr, seed, Path(out_dir))
        where = str(Path(out_dir) / "discrete-sae")
    else:
        with tempfile.TemporaryDirectory(prefix="interp-discrete-sae-") as tmp:
            d, where = _train(model, X, rows, n_latents, l1, epochs, lr, seed, Path(tmp)), None
    with torch.no_grad():
        codes = d.encode(X.flatten(0, 1)).argmax(-1).view(len(X), -1)  # (2N, heads)
    n = d.cfg.d_sae
    pos, neg = codes[: task.n], codes[task.n :]
    p_pos, p_neg = _presence(pos, n), _presence(neg, n)
    unique = (p_pos & ~p_neg).sum(1).double()
    if normalise:
        unique = unique / (p_pos | p_neg).sum(1).clamp_min(1)
    pairs = _pair_scores(pos, neg, n)
    order = torch.sort(pairs.flatten(), descending=True, stable=True).indices
    C = codes.shape[1]
    listed = torch.stack([order // C, order % C], 1).flatten()[: C * C // 2]
    counts = torch.bincount(listed, minlength=C).double()
    shape = (info.n_layers, info.n_heads)
    return DiscreteSaeResult(torch.softmax(unique, 0).view(shape), torch.softmax(counts, 0).view(shape),
                             pairs, codes, rows, where, separation(X, task.n).view(shape))


def separation(X: torch.Tensor, n_positive: int) -> torch.Tensor:
    """(heads,) squared distance between the positive and negative mean vectors of each head over the mean
    within-side variance (a variance below 1e-12 counts as 1e-12, so the value stays finite)."""
    pos, neg = X[:n_positive].double(), X[n_positive:].double()
    distance = (pos.mean(0) - neg.mean(0)).pow(2).sum(-1)
    spread = 0.5 * (pos.var(0, correction=0).sum(-1) + neg.var(0, correction=0).sum(-1))
    return (distance / spread.clamp_min(1e-12)).float()
