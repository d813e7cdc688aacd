"""One entry point for every method: ``find_circuit(model, task, method) -> CircuitGraph``.

It builds the task when given a name, checks it on the model (:func:`check_task`), checks the residual-stream
decomposition for the methods that patch edges, runs the method while measuring wall time and peak memory,
writes the result as a :class:`CircuitGraph` with its metadata, and (``config.evaluate``) scores it: the
faithfulness curve always, ROC AUC against ``truth`` when given.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple, TypeVar

import torch

from interp import __version__
from interp.circuits.acdc import AUTO_THRESHOLDS, acdc
from interp.circuits.components import ComponentGraph, check_decomposition
from interp.circuits.config import NODE_METHODS, CircuitConfig, check_method
from interp.circuits.discrete_sae import discrete_sae
from interp.circuits.eap import eap, eap_ig, eap_ig_activations
from interp.circuits.evaluate import GroundTruth, evaluate_graph
from interp.circuits.generators import make_task
from interp.circuits.graph import CircuitGraph
from interp.circuits.patching import NodeEffects, activation_patching, attribution_patching
from interp.circuits.scoring import edge_graph, node_graph
from interp.circuits.tasks import Baseline, Task, check_task

log = logging.getLogger(__name__)
T = TypeVar("T")


class Measured(NamedTuple):
    """A result with the wall time and peak memory it took."""

    value: Any
    """What the function returned."""
    seconds: float
    """Wall-clock seconds."""
    peak_mb: float
    """Peak memory above the level at the start, in MiB: CUDA allocations on a GPU, else the process's resident
    set sampled every millisecond (so short spikes can be missed)."""


def measure(fn: Callable[[], T], device: torch.device | str = "cpu") -> Measured:
    """Run ``fn()`` and report its wall time and peak memory (see :class:`Measured`)."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        start_bytes = torch.cuda.memory_allocated()
        t0 = time.perf_counter()
        value = fn()
        torch.cuda.synchronize()
        return Measured(value, time.perf_counter() - t0, (torch.cuda.max_memory_allocated() - start_bytes) / 2**20)
    _release_freed_memory()
    start = _rss()
    peak = [start]
    done = threading.Event()

    def sample() -> None:
        while not done.wait(0.001):
            peak[0] = max(peak[0], _rss())

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    t0 = time.perf_counter()
    try:
        value = fn()
    finally:
        seconds = time.perf_counter() - t0
        done.set()
        sampler.join()
    return Measured(value, seconds, max(0.0, (max(peak[0], _rss()) - start) / 2**20))


def _release_freed_memory() -> None:
    """Hand memory freed by earlier work back to the OS (glibc ``malloc_trim``), so that the resident set
    measures what ``fn`` allocates rather than what it reuses; a no-op where there is no glibc."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _rss() -> int:
    """Resident set size in bytes (Linux /proc; 0 elsewhere)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError):
        return 0


def _node_scores(effects: NodeEffects) -> dict[str, float]:
    layers, heads = effects.heads.shape
    scores = {f"a{layer}.h{h}": float(effects.heads[layer, h]) for layer in range(layers) for h in range(heads)}
    scores.update({f"m{layer}": float(effects.mlps[layer]) for layer in range(layers)})
    return scores


def _run(model: Any, task: Task, base: Baseline, method: str, cfg: CircuitConfig, dictionary: Any,
         out_dir: Path | None) -> tuple[torch.Tensor | dict[str, float], dict[str, Any]]:
    """Scores (an edge matrix, or node id -> score) and method-specific metadata."""
    common = {"batch_size": cfg.batch_size}
    if method in ("activation-patching", "attribution-patching"):
        run = activation_patching if method == "activation-patching" else attribution_patching
        extra = {"max_rows": cfg.max_rows} if method == "activation-patching" else {}
        effects = run(model, task, base, direction=cfg.direction, components=cfg.components, **common, **extra)
        resid = None if effects.resid is None else effects.resid.tolist()
        return _node_scores(effects), {"resid_scores": resid}
    if method == "eap":
        return eap(model, task, base, **common), {}
    if method in ("eap-ig", "eap-ig-activations"):
        run_ig = eap_ig if method == "eap-ig" else eap_ig_activations
        return run_ig(model, task, base, steps=cfg.ig_steps, max_rows=cfg.max_rows, **common), {}
    if method == "acdc":
        found = acdc(model, task, base, thresholds=cfg.acdc_thresholds or AUTO_THRESHOLDS, metric=cfg.acdc_metric,
                     seed=cfg.seed, extend=not cfg.acdc_thresholds, **common)
        sizes = [int(k.sum()) for k in found.kept]
        return found.scores, {"thresholds": list(found.thresholds), "circuit_edges": sizes, "forwards": found.forwards}
    result = discrete_sae(model, task, n_latents=cfg.sae_latents, l1=cfg.sae_l1, epochs=cfg.sae_epochs,
                          train_prompts=cfg.sae_train_prompts, lr=cfg.sae_lr, seed=cfg.seed,
                          normalise=cfg.sae_normalise, dictionary=dictionary, out_dir=out_dir, **common)
    layers, heads = result.node_scores.shape
    scores = {f"a{layer}.h{h}": float(result.node_scores[layer, h]) for layer in range(layers) for h in range(heads)}
    return scores, {"edge_head_scores": result.edge_head_scores.tolist(), "pair_scores": result.pair_scores.tolist(),
                    "train_prompts": result.train_prompts, "dictionary": result.dictionary,
                    "head_separation": result.separation.tolist()}


def find_circuit(
    model: Any,
    task: Task | str,
    method: str = "eap",
    config: CircuitConfig | None = None,
    *,
    truth: GroundTruth | None = None,
    dictionary: Any = None,
    out_dir: str | Path | None = None,
    **overrides: Any,
) -> CircuitGraph:
    """Run ``method`` (one of ``METHODS``) on ``task`` (a Task, or a registered task name built with the config's
    ``n_prompts`` / ``seed`` / ``seq_len``) and return its graph. ``overrides`` replace config fields.

    ``dictionary`` (discrete-sae only) reuses a trained SAE instead of training one; ``out_dir`` keeps the one it
    trains there. With ``config.evaluate`` the graph's metadata gets ``evaluation`` (faithfulness curve, and node
    and edge ROC AUC against ``truth`` when given).
    """
    check_method(method)
    cfg = dataclasses.replace(config or CircuitConfig(), **overrides)
    if isinstance(task, str):
        options = {"seq_len": cfg.seq_len} if task == "induction" else {}
        task = make_task(task, model, n_prompts=cfg.n_prompts, seed=cfg.seed, **options)
    base = check_task(model, task, cfg.batch_size)
    cg = ComponentGraph.of(model)
    if method not in NODE_METHODS or cfg.evaluate:
        check_decomposition(model, cg, task.clean[: min(4, task.n)])
    path = Path(out_dir) if out_dir is not None else None
    run = measure(lambda: _run(model, task, base, method, cfg, dictionary, path), model.device)
    scores, extra = run.value
    metadata = {
        "method": method,
        "model": model.info.to_dict(),
        "task": task.metadata(),
        "config": {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(cfg).items()},
        "runtime_s": run.seconds,
        "peak_memory_mb": run.peak_mb,
        "metric_clean": float(base.m_clean.mean()),
        "metric_corrupted": float(base.m_corrupted.mean()),
        "created_by": f"interp {__version__}",
        **extra,
    }
    graph = (edge_graph(cg, scores, metadata) if isinstance(scores, torch.Tensor)
             else node_graph(cg, scores, metadata))
    log.info("%s on %s: %.2f s, peak %.0f MiB", method, task.name, run.seconds, run.peak_mb)
    if cfg.evaluate:
        evaluate_graph(model, task, graph, truth, base, batch_size=cfg.batch_size)
    return graph
