"""The one training loop for every dictionary architecture.

The trainer streams batches from an activation store, normalises them through each dictionary, calls
the architecture's ``training_step``, and owns everything around it: Adam with warmup and decay, the
architecture's gradient/weight constraints, dead-latent tracking and revival, the NaN policy, logging,
progress, checkpoints and exact resume. It never asks which architecture it runs.

Several dictionaries can share one pass over the data (several hooks, or a hyperparameter sweep on one
hook): pass a list of configs that agree on the data fields (batch_size, n_tokens, seed).

Exact resume: the data order is a pure function of (seed, step) (epoch e is the store's shuffled order
with seed ``seed + e``), so a resumed run skips the batches it already consumed. A checkpoint holds
weights, buffers, Adam moments, dead-latent counters and the revival RNG, so on CPU with a fixed seed a
resumed run ends with bit-identical weights to an uninterrupted one.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch.nn.parallel import DistributedDataParallel

from interp.activations.source import ActivationSource, Batch
from interp.activations.store import ActivationStore
from interp.configs import config_to_dict
from interp.dictionaries import Dictionary, StepOutput, TrainBatch, TrainState, save_dictionary
from interp.dictionaries.linear import release_workspaces
from interp.distributed import any_rank, check_same_everywhere, gather_json
from interp.errors import InterpError
from interp.io import disk_full_errors
from interp.training.checkpoint import remove_checkpoint, reset_moments, resume_slots, save_slots
from interp.training.config import AUTOCAST, TrainConfig
from interp.training.distributed import (
    Plan,
    check_identical,
    fired_everywhere,
    gather_batch,
    gather_train_batch,
    make_plan,
)
from interp.training.log import TrainLog, progress_bar
from interp.training.slot import Slot, make_slot, slot_cost, slot_hooks, slot_name

log = logging.getLogger(__name__)


class TrainResult(NamedTuple):
    """What a training run produced."""

    dictionaries: list[Path]
    """One dictionary directory per config, in config order."""
    metrics: dict[str, dict[str, float]]
    """Directory name -> final training metrics (loss, l0, fvu, dead_fraction, tokens_per_s ...)."""


# ---- public entry point -------------------------------------------------------------------------
def train_dictionary(
    cfg: TrainConfig | Sequence[TrainConfig],
    store: ActivationSource | str | Path,
    out_dir: str | Path,
    *,
    progress: bool = True,
) -> TrainResult:
    """Train one dictionary per config on ``store``: a store directory or any :class:`ActivationSource`
    (an ActivationStore, a ModelSource computing activations on the fly, a TensorSource).

    Writes ``out_dir/<name>/`` (cfg.json + weights.safetensors) per config, ``out_dir/train_log.jsonl``,
    and ``out_dir/checkpoint/`` while running. Run the same call again to resume after an interruption.
    Under ``torchrun`` (an initialised process group) one dictionary trains with DDP on every rank and
    several are spread across ranks by cost (see :mod:`interp.training.distributed`).
    """
    cfgs = [cfg] if isinstance(cfg, TrainConfig) else list(cfg)
    if not cfgs:
        raise InterpError("No TrainConfig given.")
    if len({c.data_key() for c in cfgs}) != 1:
        raise InterpError("Configs trained in one pass must share n_tokens, batch_size, seed and device.")
    source: ActivationSource = ActivationStore(store) if isinstance(store, (str, Path)) else store
    names = [slot_name(c, source) for c in cfgs]
    if len(set(names)) != len(names):
        raise InterpError(f"Dictionary names collide ({names}); give each config a distinct name.")
    described = {"configs": [config_to_dict(c) for c in cfgs], "source": _describe(source), "out": str(out_dir)}
    check_same_everywhere(described, "training run")
    plan = make_plan([slot_cost(c, source) for c in cfgs], cfgs[0].batch_size)
    slots = [make_slot(c, source, i) for i, c in enumerate(cfgs) if plan.mine(i)]
    hooks = sorted({h for c in cfgs for h in slot_hooks(c, source)})
    with disk_full_errors(DISK_FULL_HINT):
        return run_loop(slots, cfgs, source, Path(out_dir), progress, plan, hooks, names)


DISK_FULL_HINT = (
    "The last complete checkpoint (checkpoint/state.json in the output directory) stays valid. Free space there "
    "and run the same interp train command again: it resumes from that checkpoint."
)


def _describe(source: ActivationSource) -> dict[str, Any]:
    """What identifies a source across ranks (its type, directory, hooks and model)."""
    return {"type": type(source).__name__, "path": str(source.path) if source.path else None,
            "hooks": list(source.hooks), "model": source.model.get("fingerprint")}


def lr_at(cfg: TrainConfig, base: float, step: int) -> float:
    """The learning rate at ``step`` (a pure function of the step, so resume needs no scheduler state)."""
    n = max(cfg.n_steps, 1)
    if step < cfg.warmup_steps:
        return base * (step + 1) / cfg.warmup_steps
    if cfg.schedule == "cosine":
        t = (step - cfg.warmup_steps) / max(1, n - cfg.warmup_steps)
        return base * 0.5 * (1 + math.cos(math.pi * min(t, 1.0)))
    if cfg.schedule == "linear" and cfg.decay_fraction > 0:
        start = n * (1 - cfg.decay_fraction)
        if step >= start:
            return base * max(0.0, (n - step) / (n - start))
    return base


def data_order(
    source: ActivationSource, hooks: list[str], cfg: TrainConfig, grads: bool, part: tuple[int, int] = (0, 1)
) -> Iterator[Batch]:
    """Batches forever, epoch e shuffled with seed ``cfg.seed + e``: a pure function of (seed, step).
    ``part=(rank, n)``: this rank's share of every batch (see :meth:`ActivationSource.batches`)."""
    epoch = 0
    pin = torch.device(cfg.device).type == "cuda"  # page-locked batches, copied with non_blocking=True
    while True:
        n = 0
        batches = source.batches(hooks, cfg.batch_size, epochs=1, seed=cfg.seed + epoch, grads=grads, part=part,
                                 pin_memory=pin)
        for batch in batches:
            n += 1
            yield batch
        if n == 0:
            raise InterpError(f"The store yields no full batch of {cfg.batch_size} rows; lower batch_size.")
        epoch += 1


def _steps_data(
    source: ActivationSource, hooks: list[str], cfg: TrainConfig, grads: bool, plan: Plan
) -> Iterator[Batch]:
    """The batches each rank trains on: the whole batch (one process), its share (DDP), or every rank's
    share gathered back into the whole batch (dictionaries spread over ranks)."""
    if plan.mode == "single":
        return data_order(source, hooks, cfg, grads)
    parts = data_order(source, hooks, cfg, grads, part=(plan.rank, plan.world))
    return parts if plan.mode == "ddp" else (gather_batch(b) for b in parts)


# ---- the loop -----------------------------------------------------------------------------------
def run_loop(
    slots: list[Slot],
    cfgs: list[TrainConfig],
    source: ActivationSource,
    out: Path,
    progress: bool,
    plan: Plan,
    hooks: list[str],
    names: list[str],
) -> TrainResult:
    """Train ``slots`` (this rank's dictionaries) for ``n_steps``; ``cfgs`` and their ``names`` are the run's."""
    cfg = cfgs[0]  # the data fields are the same in every config
    grads = any_rank(any(s.dictionary.needs_grads for s in slots))
    n_steps = cfg.n_steps
    ckpt_dir = out / "checkpoint"
    meta = {"configs": {name: config_to_dict(c) for name, c in zip(names, cfgs)}, "n_steps": n_steps}
    start = resume_slots(slots, ckpt_dir, meta)
    if start == 0:  # init from the first rows of the whole order, identical on every rank
        _init_from_data(slots, data_order(source, hooks, cfg, grads), cfg)
    steppers = [_stepper(s, plan) for s in slots]
    data = _steps_data(source, hooks, cfg, grads, plan)
    for _ in range(start):
        next(data)
    log_name = "train_log.jsonl" if plan.rank == 0 else f"train_log.rank{plan.rank}.jsonl"
    logger = TrainLog(out, slots if plan.mode != "ddp" or plan.rank == 0 else [], start, log_name)
    bar = progress_bar(progress and plan.rank == 0, n_steps * cfg.batch_size, start * cfg.batch_size)
    t0 = now()
    every = cfg.checkpoint_every or max(1, n_steps // 10)
    try:
        for step in range(start, n_steps):
            batch = next(data)
            if not _finite_batch(batch, cfg, step):
                continue
            for slot, stepper in zip(slots, steppers):
                _train_step(slot, stepper, batch, step, n_steps, plan)
            if (step + 1) % cfg.log_every == 0 or step + 1 == n_steps:
                logger.write(step + 1, (step + 1 - start) * cfg.batch_size / max(now() - t0, 1e-9))
                if bar is not None and slots:
                    bar.set_postfix(loss=f"{slots[0].recent[-1]['loss']:.4g}", l0=f"{slots[0].recent[-1]['l0']:.1f}")
            if bar is not None:
                bar.update(cfg.batch_size)
            if (step + 1) % every == 0 and step + 1 < n_steps:
                save_slots(slots, ckpt_dir, step + 1, meta, plan)
    finally:
        if bar is not None:
            bar.close()
        logger.close()
        release_workspaces()
    rate = (n_steps - start) * cfg.batch_size / max(now() - t0, 1e-9)
    return _finish(slots, source, out, rate, plan, names)


class _Step(torch.nn.Module):
    """The dictionary's training forward as a module's ``forward``, so DDP can wrap it."""

    def __init__(self, dictionary: Dictionary):
        super().__init__()
        self.dictionary = dictionary

    def forward(self, batch: TrainBatch, state: TrainState) -> StepOutput:
        return self.dictionary.training_step(batch, state)


def _stepper(slot: Slot, plan: Plan) -> Callable[[TrainBatch, TrainState], StepOutput]:
    """The training forward of a slot: the dictionary's own, or through DDP (gradients all-reduced in the
    backward pass, buffers broadcast from rank 0 before every step)."""
    if plan.mode != "ddp":
        return slot.dictionary.training_step
    return DistributedDataParallel(_Step(slot.dictionary), find_unused_parameters=True)


def _train_step(
    slot: Slot,
    stepper: Callable[[TrainBatch, TrainState], StepOutput],
    batch: Batch,
    step: int,
    n_steps: int,
    plan: Plan,
) -> None:
    d, c = slot.dictionary, slot.cfg
    tb = _normalised(d, batch, c.device)
    for group in slot.opt.param_groups:
        group["lr"] = lr_at(c, slot.lr, step)
    dead = slot.since_fired >= slot.dead_tokens
    dtype = AUTOCAST[c.autocast]
    with torch.autocast(torch.device(c.device).type, dtype=dtype or torch.float32, enabled=dtype is not None):
        out = stepper(tb, TrainState(step, n_steps, dead.to(c.device)))
    slot.opt.zero_grad(set_to_none=True)
    if any_rank(not bool(torch.isfinite(out.loss))) if plan.mode == "ddp" else not torch.isfinite(out.loss):
        if c.nan_policy == "stop":
            raise InterpError(
                f"Loss of {slot.name} became {out.loss.item()} at step {step}. Lower lr, enable "
                "grad_clip, or set nan_policy='skip'. A checkpoint was written; rerun to resume."
            )
        return
    out.loss.backward()
    d.constrain_grads()
    if c.grad_clip:
        torch.nn.utils.clip_grad_norm_(d.parameters(), c.grad_clip)
    slot.opt.step()
    d.constrain_weights()
    fired = fired_everywhere(out.fired) if plan.mode == "ddp" else out.fired
    slot.since_fired += c.batch_size
    slot.since_fired[fired.cpu()] = 0
    if slot.resample_every and (step + 1) % slot.resample_every == 0 and step + 1 < c.resample_until * n_steps:
        _revive(slot, gather_train_batch(tb) if plan.mode == "ddp" else tb, step)
    with torch.no_grad():
        fvu = ((tb.y - out.y_hat) ** 2).sum() / ((tb.y - tb.y.mean(0)) ** 2).sum().clamp_min(1e-12)
    slot.recent.append({"loss": out.loss.item(), "l0": out.l0, "fvu": fvu.item(), **out.terms})
    del slot.recent[:-100]


def _revive(slot: Slot, tb: TrainBatch, step: int) -> None:
    """The architecture's revival of dead latents on batch ``tb`` (the whole batch, so every DDP rank makes
    the same change with its copy of the slot's RNG), and fresh Adam moments for what it rewrote."""
    d = slot.dictionary
    dead = slot.since_fired >= slot.dead_tokens
    resets = d.revive(dead.to(slot.cfg.device), tb, slot.gen)
    if resets:
        reset_moments(slot.opt, d, resets)
        slot.since_fired[dead] = 0
        log.info("%s: revived %d dead latents at step %d", slot.name, int(dead.sum()), step + 1)


def _normalised(d: Dictionary, batch: Batch, device: str) -> TrainBatch:
    xn, stats = d.normalize_input(d.input_rows(batch.acts).to(device, non_blocking=True))
    y = d.output_rows(batch.acts).to(device, non_blocking=True) if d.output_hooks != d.input_hooks else None
    yn = d.normalize_target(y, stats) if y is not None else xn
    g = d.input_rows(batch.grads) if batch.grads else None
    return TrainBatch(xn, yn, d.normalize_grad(g.to(device, non_blocking=True), stats) if g is not None else None)


def _finite_batch(batch: Batch, cfg: TrainConfig, step: int) -> bool:
    for hook, x in batch.acts.items():
        if not torch.isfinite(x).all():
            if cfg.nan_policy == "stop":
                raise InterpError(
                    f"The store has non-finite activations at hook {hook!r} (batch {step}). "
                    "Re-cache the store, or set nan_policy='skip' to skip such batches."
                )
            log.warning("skipping batch %d: non-finite activations at %s", step, hook)
            return False
    return True


def _init_from_data(slots: list[Slot], data: Iterator[Batch], cfg: TrainConfig) -> None:
    """Normalisation constants and data-dependent init from the first ``init_tokens`` rows of the order."""
    batches, rows = [], 0
    while rows < cfg.init_tokens:
        batches.append(next(data))
        rows += cfg.batch_size
    for slot in slots:
        d = slot.dictionary
        x = torch.cat([d.input_rows(b.acts) for b in batches])[: cfg.init_tokens].to(slot.cfg.device)
        y = torch.cat([d.output_rows(b.acts) for b in batches])[: cfg.init_tokens] \
            if d.output_hooks != d.input_hooks else x
        ok = torch.isfinite(x).all(1) & torch.isfinite(y.to(x.device)).all(1)
        if not ok.all():
            if slot.cfg.nan_policy == "stop":
                raise InterpError(
                    f"The store has non-finite activations in the init sample of {slot.name}. "
                    "Re-cache the store, or set nan_policy='skip' to drop such rows."
                )
            x, y = x[ok], y[ok.to(y.device)]
        d.fit_normalization(x, y.to(x.device))
        xn, stats = d.normalize_input(x)
        d.init_from_data(xn, d.normalize_target(y.to(x.device), stats), slot.gen)
        d.constrain_weights()


def _finish(
    slots: list[Slot], source: ActivationSource, out: Path, rate: float, plan: Plan, names: list[str]
) -> TrainResult:
    """Save this rank's dictionaries (under DDP rank 0 saves, after checking every replica is identical),
    drop the checkpoint, and return every dictionary of the run with its metrics."""
    metrics: dict[str, dict[str, float]] = {}
    for s in slots:
        if plan.mode == "ddp":
            check_identical(s.dictionary, s.name)
        recent = s.recent[-20:] or [{}]
        m = {k: sum(r[k] for r in recent) / len(recent) for k in recent[-1]}
        m.update(dead_fraction=float((s.since_fired >= s.dead_tokens).float().mean()), tokens_per_s=rate)
        s.dictionary.cfg = replace(s.dictionary.cfg, training={
            **config_to_dict(s.cfg),
            "store": str(source.path) if source.path is not None else None,
            "source": type(source).__name__,
            "ctx_len": source.ctx_len,
            "model": source.model,
            "n_steps": s.cfg.n_steps,
            "lr_resolved": s.lr,
            "dead_tokens": s.dead_tokens,
            "world_size": plan.world,
        })
        if plan.mode != "ddp" or plan.rank == 0:
            save_dictionary(s.dictionary.cpu(), out / s.name, metrics=m)
        metrics[s.name] = m
    for other in gather_json(metrics):
        metrics.update(other)
    remove_checkpoint(out / "checkpoint", plan)
    return TrainResult([out / n for n in names], {n: metrics[n] for n in names})


def now() -> float:
    return time.perf_counter()
