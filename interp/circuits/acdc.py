"""Edge-level ACDC (Conmy et al. 2023) with a threshold sweep, every threshold pruned in the same forwards.

For each threshold tau, starting from the full graph: visit destinations in reverse forward order (logits,
then the last MLP, the last layer's value, key and query inputs, ...) and, for each, its sources latest first;
tentatively patch the edge from the corrupted run; if ``D(circuit) - D(previous circuit) < tau`` it stays
patched, otherwise it is restored. ``D`` is the mean KL(clean output || circuit output) at the answer position
(``metric="kl"``, ACDC's default) or ``m(clean) - m(circuit)`` in the task's metric (``metric="task"``).

Batching: the circuits of all thresholds advance together; each step runs one forward of (distinct circuits
among the thresholds still deciding) x (prompt batch) rows. A destination whose own output no longer reaches
the logits through a kept edge cannot matter, so its incoming edges are removed without a forward (exact).

Scores: an edge's score is the largest threshold at which it survives (0 if none), so ranking edges by score
orders them by how far up the sweep they last; ``kept`` holds each threshold's circuit. Edges that survive the
largest threshold tie at the top. With ``extend``, the sweep then goes on a decade at a time in the same
pattern ({1, 3, 5, 7, 9} x 10^e) until at most one edge survives; each threshold prunes from the full graph by
itself, so the added thresholds leave every earlier circuit as it was (an edge's score can still rise: ACDC's
circuits are not nested, and an edge pruned at 0.01 may survive at 0.05). The visiting order is fixed,
and ``seed`` (when not None) shuffles the sources of each destination with a seeded generator, so runs are
deterministic for a seed.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from typing import Any, NamedTuple

import torch

from interp.circuits.components import ComponentGraph, capture_sources, patched_logits
from interp.circuits.tasks import Baseline, Task, TaskBatch, metric_values, task_batches, tile
from interp.errors import InterpError

log = logging.getLogger(__name__)
ACDC_METRICS = ("kl", "task")
STEPS = (1, 3, 5, 7, 9)
AUTO_THRESHOLDS = tuple(m * 10.0**e for e in range(-5, -1) for m in STEPS)
"""auto-circuit's sweep: {1, 3, 5, 7, 9} x 10^-5 .. 10^-2."""
MAX_EXTENSIONS = 6
"""Decades ``extend`` may add (up to 9 x 10^4 after auto-circuit's sweep): far above any divergence a task has."""


class AcdcResult(NamedTuple):
    """Scores and per-threshold circuits."""

    scores: torch.Tensor
    """(n_src, n_dst) largest threshold at which each edge survives (0: never); 0 off the edge set."""
    kept: torch.Tensor
    """(n_thresholds, n_src, n_dst) bool: the circuit found at each threshold."""
    thresholds: tuple[float, ...]
    """The thresholds, ascending."""
    forwards: int
    """Forward passes run (each over the deciding thresholds x one prompt batch)."""


def _divergence(metric: str, batch: TaskBatch, final: torch.Tensor, m_clean: torch.Tensor) -> torch.Tensor:
    """Per-copy summed D over the batch's rows, (K,), from answer-position logits (K * B, V)."""
    k = final.shape[0] // batch.size
    if metric == "kl":
        values = metric_values("kl", final.float(), batch.answers, batch.wrong, tile(batch.clean_final, k))
    else:
        values = tile(m_clean, k) - batch.values(final)
    return values.view(k, batch.size).sum(1)


def _visit_order(cg: ComponentGraph, seed: int | None) -> list[tuple[int, int]]:
    gen = torch.Generator().manual_seed(seed) if seed is not None else None
    order = []
    for dst in reversed(range(cg.n_dst)):
        sources = list(reversed(range(cg.n_upstream(dst))))
        if gen is not None:
            sources = [sources[i] for i in torch.randperm(len(sources), generator=gen).tolist()]
        order += [(s, dst) for s in sources]
    return order


def _dst_source_row(cg: ComponentGraph, dst: int) -> int | None:
    """The source index of the node that owns destination ``dst`` (None for the logits)."""
    if dst == cg.logits_dst:
        return None
    layer, within = divmod(dst, 3 * cg.n_heads + 1)
    return cg.mlp_src(layer) if within == 3 * cg.n_heads else cg.head_src(layer) + within % cg.n_heads


def acdc(
    model: Any,
    task: Task,
    baseline: Baseline,
    *,
    thresholds: Sequence[float] = AUTO_THRESHOLDS,
    metric: str = "kl",
    seed: int | None = 0,
    batch_size: int = 32,
    extend: bool = False,
) -> AcdcResult:
    """Prune the component graph at every threshold (see the module docstring)."""
    if metric not in ACDC_METRICS:
        raise InterpError(f"ACDC metric must be one of {', '.join(ACDC_METRICS)}, got {metric!r}.")
    taus = tuple(sorted(float(t) for t in thresholds))
    if not taus or min(taus) < 0:
        raise InterpError(f"ACDC needs one or more thresholds >= 0, got {list(thresholds)}.")
    sweep = _Sweep(model, task, baseline, metric, seed, batch_size)
    keep, forwards = sweep.prune(taus)
    for _ in range(MAX_EXTENSIONS if extend else 0):
        if int(keep[-1].sum()) <= 1:
            break
        more = _next_thresholds(taus[-1])
        log.info("ACDC: %d edges survive %g; sweeping on to %g.", int(keep[-1].sum()), taus[-1], more[-1])
        kept, runs = sweep.prune(more)
        keep, taus, forwards = torch.cat([keep, kept]), taus + more, forwards + runs
    scores = (keep.double() * torch.tensor(taus, dtype=torch.float64)[:, None, None]).amax(0)
    if (top := int(keep[-1].sum())) > 1:
        log.warning("ACDC: %d edges survive the largest threshold %g, so they tie at the top of the ranking; pass "
                    "larger thresholds to order them.", top, taus[-1])
    return AcdcResult(scores, keep, taus, forwards)


def _next_thresholds(top: float) -> tuple[float, ...]:
    """The five thresholds of the {1, 3, 5, 7, 9} x 10^e pattern above ``top``."""
    e = math.floor(math.log10(top)) if top > 0 else -6
    above = [float(f"{m}e{d}") for d in (e, e + 1) for m in STEPS if float(f"{m}e{d}") > top * (1 + 1e-9)]
    return tuple(above[: len(STEPS)])


class _Sweep:
    """The model's corrupted sources and clean metrics, captured once, for pruning at any thresholds."""

    def __init__(self, model: Any, task: Task, baseline: Baseline, metric: str, seed: int | None,
                 batch_size: int) -> None:
        self.model, self.task, self.metric = model, task, metric
        self.cg = ComponentGraph.of(model)
        self.order = _visit_order(self.cg, seed)
        self.batches = task_batches(task, baseline, batch_size, model.device)
        with torch.no_grad():
            self.corrupted = [capture_sources(model, self.cg, b.corrupted, b.corrupted_pos)[0] for b in self.batches]
        self.m_clean = [baseline.m_clean[a : a + batch_size].to(model.device) for a in range(0, task.n, batch_size)]

    @torch.no_grad()
    def prune(self, taus: tuple[float, ...]) -> tuple[torch.Tensor, int]:
        """Each threshold's circuit, (len(taus), n_src, n_dst) bool, and the forwards it took."""
        cg = self.cg
        keep = cg.valid.clone()[None].repeat(len(taus), 1, 1)
        current = torch.zeros(len(taus))
        tau = torch.tensor(taus, dtype=torch.float64)
        forwards = 0
        for src, dst in self.order:
            owner = _dst_source_row(cg, dst)
            dead = torch.zeros(len(taus), dtype=torch.bool) if owner is None else ~keep[:, owner].any(1)
            keep[dead, src, dst] = False
            active = (~dead).nonzero().flatten()
            if len(active) == 0:
                continue
            # thresholds whose circuits are still identical share one trial
            unique, inverse = torch.unique(keep[active].flatten(1), dim=0, return_inverse=True)
            trial = unique.view(-1, cg.n_src, cg.n_dst).clone()
            trial[:, src, dst] = False
            total = torch.zeros(len(trial))
            for batch, corr, mc in zip(self.batches, self.corrupted, self.m_clean):
                final = patched_logits(self.model, cg, batch.clean, corr, trial, batch.clean_pos)
                total += _divergence(self.metric, batch, final, mc).cpu()
                forwards += 1
            new = total[inverse] / self.task.n
            remove = new - current[active] < tau[active]
            keep[active[remove], src, dst] = False
            current[active[remove]] = new[remove]
        return keep, forwards
