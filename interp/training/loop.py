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
from collections.abc import Iterator, Sequence
from dataclasses import replace
from pathlib import Path
from typing import NamedTuple

import torch

from interp.activations.source import ActivationSource, Batch
from interp.activations.store import ActivationStore
from interp.configs import config_to_dict
from interp.dictionaries import Dictionary, TrainBatch, TrainState, save_dictionary
from interp.dictionaries.linear import release_workspaces
from interp.errors import InterpError
from interp.training.checkpoint import (
    reset_moments,
    resume_slots,
    save_slots,
)
from interp.training.config import AUTOCAST, TrainConfig
from interp.training.log import TrainLog, progress_bar
from interp.training.slot import Slot, make_slot

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
    """
    cfgs = [cfg] if isinstance(cfg, TrainConfig) else list(cfg)
    if not cfgs:
        raise InterpError("No TrainConfig given.")
    if len({c.data_key() for c in cfgs}) != 1:
        raise InterpError("Configs trained in one pass must share n_tokens, batch_size, seed and device.")
    source: ActivationSource = ActivationStore(store) if isinstance(store, (str, Path)) else store
    out = Path(out_dir)
    slots = [make_slot(c, source, i) for i, c in enumerate(cfgs)]
    names = [s.name for s in slots]
    if len(set(names)) != len(names):
        raise InterpError(f"Dictionary names collide ({names}); give each config a distinct name.")
    return run_loop(slots, cfgs[0], source, out, progress)


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


def data_order(source: ActivationSource, hooks: list[str], cfg: TrainConfig, grads: bool) -> Iterator[Batch]:
    """Batches forever, epoch e shuffled with seed ``cfg.seed + e``: a pure function of (seed, step)."""
    epoch = 0
    while True:
        n = 0
        for batch in source.batches(hooks, cfg.batch_size, epochs=1, seed=cfg.seed + epoch, grads=grads):
            n += 1
            yield batch
        if n == 0:
            raise InterpError(f"The store yields no full batch of {cfg.batch_size} rows; lower batch_size.")
        epoch += 1


# ---- the loop -----------------------------------------------------------------------------------
def run_loop(
    slots: list[Slot], cfg: TrainConfig, source: ActivationSource, out: Path, progress: bool
) -> TrainResult:
    hooks = sorted({h for s in slots for h in (s.dictionary.cfg.hook_in, s.dictionary.cfg.hook_out) if h})
    grads = any(s.dictionary.needs_grads for s in slots)
    n_steps = cfg.n_steps
    gen = torch.Generator().manual_seed(cfg.seed)
    ckpt_dir = out / "checkpoint"
    meta = {"configs": [config_to_dict(s.cfg) for s in slots], "n_steps": n_steps}
    start = resume_slots(slots, ckpt_dir, meta, gen)
    data = data_order(source, hooks, cfg, grads)
    if start == 0:
        _init_from_data(slots, data, cfg, gen)
        data = data_order(source, hooks, cfg, grads)
    for _ in range(start):
        next(data)
    logger = TrainLog(out, slots, start)
    bar = progress_bar(progress, n_steps * cfg.batch_size, start * cfg.batch_size)
    t0 = now()
    every = cfg.checkpoint_every or max(1, n_steps // 10)
    try:
        for step in range(start, n_steps):
            batch = next(data)
            if not _finite_batch(batch, cfg, step):
                continue
            for slot in slots:
                _train_step(slot, batch, step, n_steps, gen)
            if (step + 1) % cfg.log_every == 0 or step + 1 == n_steps:
                rate = (step + 1 - start) * cfg.batch_size / max(now() - t0, 1e-9)
                logger.write(step + 1, rate)
                if bar is not None:
                    bar.set_postfix(
                        loss=f"{slots[0].recent[-1]['loss']:.4g}", l0=f"{slots[0].recent[-1]['l0']:.1f}"
                    )
            if bar is not None:
                bar.update(cfg.batch_size)
            if (step + 1) % every == 0 and step + 1 < n_steps:
                save_slots(slots, ckpt_dir, step + 1, meta, gen)
    finally:
        if bar is not None:
            bar.close()
        logger.close()
        release_workspaces()
    rate = (n_steps - start) * cfg.batch_size / max(now() - t0, 1e-9)
    return _finish(slots, source, out, rate, ckpt_dir)


def _train_step(slot: Slot, batch: Batch, step: int, n_steps: int, gen: torch.Generator) -> None:
    d, c = slot.dictionary, slot.cfg
    tb = _normalised(d, batch, c.device)
    for group in slot.opt.param_groups:
        group["lr"] = lr_at(c, slot.lr, step)
    dead = slot.since_fired >= slot.dead_tokens
    dtype = AUTOCAST[c.autocast]
    with torch.autocast(torch.device(c.device).type, dtype=dtype or torch.float32, enabled=dtype is not None):
        out = d.training_step(tb, TrainState(step, n_steps, dead.to(c.device)))
    if not torch.isfinite(out.loss):
        if c.nan_policy == "stop":
            raise InterpError(
                f"Loss of {slot.name} became {out.loss.item()} at step {step}. Lower lr, enable "
                "grad_clip, or set nan_policy='skip'. A checkpoint was written; rerun to resume."
            )
        slot.opt.zero_grad(set_to_none=True)
        return
    slot.opt.zero_grad(set_to_none=True)
    out.loss.backward()
    d.constrain_grads()
    if c.grad_clip:
        torch.nn.utils.clip_grad_norm_(d.parameters(), c.grad_clip)
    slot.opt.step()
    d.constrain_weights()
    slot.since_fired += len(tb.x)
    slot.since_fired[out.fired.cpu()] = 0
    if (
        slot.resample_every
        and (step + 1) % slot.resample_every == 0
        and step + 1 < c.resample_until * n_steps
    ):
        dead = slot.since_fired >= slot.dead_tokens
        resets = d.revive(dead.to(c.device), tb, gen)
        if resets:
            reset_moments(slot.opt, d, resets)
            slot.since_fired[dead] = 0
            log.info("%s: revived %d dead latents at step %d", slot.name, int(dead.sum()), step + 1)
    with torch.no_grad():
        fvu = ((tb.y - out.y_hat) ** 2).sum() / ((tb.y - tb.y.mean(0)) ** 2).sum().clamp_min(1e-12)
    slot.recent.append({"loss": out.loss.item(), "l0": out.l0, "fvu": fvu.item(), **out.terms})
    del slot.recent[:-100]


def _normalised(d: Dictionary, batch: Batch, device: str) -> TrainBatch:
    x = batch.acts[d.input_hook].to(device)
    xn, stats = d.normalize_input(x)
    yn = d.normalize_target(batch.acts[d.cfg.hook_out].to(device), stats) if d.cfg.hook_out else xn
    g = batch.grads.get(d.input_hook) if batch.grads else None
    return TrainBatch(xn, yn, d.normalize_grad(g.to(device), stats) if g is not None else None)


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


def _init_from_data(slots: list[Slot], data: Iterator[Batch], cfg: TrainConfig, gen: torch.Generator) -> None:
    """Normalisation constants and data-dependent init from the first ``init_tokens`` rows of the order."""
    batches, rows = [], 0
    while rows < cfg.init_tokens:
        batches.append(next(data))
        rows += cfg.batch_size
    for slot in slots:
        d = slot.dictionary
        x = torch.cat([b.acts[d.input_hook] for b in batches])[: cfg.init_tokens].to(slot.cfg.device)
        y = torch.cat([b.acts[d.cfg.hook_out] for b in batches])[: cfg.init_tokens] if d.cfg.hook_out else x
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
        d.init_from_data(xn, d.normalize_target(y.to(x.device), stats), gen)
        d.constrain_weights()


def _finish(slots: list[Slot], source: ActivationSource, out: Path, rate: float, ckpt_dir: Path) -> TrainResult:
    paths, metrics = [], {}
    for s in slots:
        d = s.dictionary
        recent = s.recent[-20:] or [{}]
        m = {k: sum(r[k] for r in recent) / len(recent) for k in recent[-1]}
        m.update(dead_fraction=float((s.since_fired >= s.dead_tokens).float().mean()), tokens_per_s=rate)
        d.cfg = replace(d.cfg, training={
            **config_to_dict(s.cfg),
            "store": str(source.path) if source.path is not None else None,
            "source": type(source).__name__,
            "n_steps": s.cfg.n_steps,
            "lr_resolved": s.lr,
            "dead_tokens": s.dead_tokens,
        })
        paths.append(save_dictionary(d.cpu(), out / s.name, metrics=m))
        metrics[s.name] = m
    for f in ckpt_dir.glob("*"):
        f.unlink()
    if ckpt_dir.is_dir():
        ckpt_dir.rmdir()
    return TrainResult(paths, metrics)


def now() -> float:
    return time.perf_counter()
