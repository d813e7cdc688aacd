"""The analyze stage: per-feature statistics and examples of a dictionary over an activation store.

Constraints this module was designed under:
- one streaming pass over the store (``store.chunks``), encoding chunk by chunk; after each encode, one
  dense scan finds the non-zeros and all other work is on those (see :mod:`interp.features.stats`);
- memory is bounded by per-feature tensors of size ``n_features x k`` plus one encoded chunk, never by
  the store's size (``bench/analyze.py --memory`` measures it; a test checks it);
- every statistic is exact and reproducible, so tests compare it with a brute-force computation;
- the dictionary is used only through ``encode``, ``W_dec`` and ``cfg`` (see ``interp.dictionaries``).

What is computed (row = one token of the store; BOS rows, ``pos == -1``, are excluded everywhere;
a feature *fires* on a row when its activation is > 0):

- ``count``, ``density`` (count / rows analysed), ``max_act``, ``mean_act`` (mean over firing rows).
- ``hist``: counts of firing activations in fixed log-spaced bins shared by all features
  (``hist_edges``, ``bins_per_decade`` per decade from ``hist_min`` to ``hist_max``), plus an underflow
  bin (0 < a < hist_min) first and an overflow bin (a >= hist_max) last; bin ``i`` in 1..B holds
  ``edges[i-1] <= a < edges[i]``. Fixed edges need no pre-pass and make histograms of different
  features directly comparable.
- Examples are per *context*: a context's value for a feature is its max activation over the context,
  at the first position reaching it. Each example shows a window of ``window`` tokens holding that
  position at index ``window - window // 4`` (clipped to the context), with the feature's activation
  on every token of the window.
  - ``top``: the ``n_top`` contexts with the largest value (ties: the earlier context).
  - ``quant``: a uniform random sample of ``quantile_pool`` firing contexts is kept during the pass
    (bottom-k of a hash key of (context, feature, seed): reservoir sampling, in buffers compacted by topk);
    after the pass the sample is sorted by value, cut into ``n_quantiles`` equal-count bands, and the
    ``per_quantile`` entries with the smallest keys are taken from each band (delphi's quantile scheme).
  - ``rand``: ``n_random`` contexts in which the feature never fires, chosen the same way by hash key;
    the window starts at a hash-chosen position.
  Top windows are read out of the encoded chunk when a context enters the top set. Quantile windows
  are chosen only after the pass, so their rows are re-read and encoded (only those rows, in batches):
  a cost bounded by ``n_features x n_quantiles x per_quantile x window`` rows, at most one more encode
  of the store. Random windows need no encode when no activation was ever negative (they are all 0).
- ``logit_pos/neg``: the tokens most promoted / suppressed by each decoder direction, ``W_dec @ W_U``,
  when the dictionary writes to a residual-stream-like hook of width d_model and a model is given.
- ``nbr_dec``: nearest features by decoder cosine; ``nbr_cooc``: by Jaccard co-occurrence of firing,
  measured on a strided sample of about ``cooc_rows`` rows (both fixed costs, in
  :mod:`interp.features.weights`).
- ``head_attr`` (attention-output SAEs on ``attn.hook_z``): each head's share of the decoder norm.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from interp.activations.source import act_key
from interp.activations.store import ActivationStore
from interp.dictionaries import Dictionary, check_compatible
from interp.errors import InterpError
from interp.features.config import AnalyzeConfig
from interp.features.stats import Running, SparseChunk, finish
from interp.features.store import FORMAT, VERSION
from interp.features.weights import cooccurrence, weight_stats
from interp.features.windows import encode, reencode_windows
from interp.io import atomic_write_json, disk_full_errors, read_json, remove_temporaries, save_tensors
from interp.model import Model, load_model
from interp.progress import progress_bar

log = logging.getLogger(__name__)



@torch.no_grad()
def analyze_features(
    dictionary: Dictionary,
    store: ActivationStore | str | Path,
    out_dir: str | Path,
    cfg: AnalyzeConfig | None = None,
    model: Model | None = None,
    *,
    dictionary_path: str | None = None,
    hook: str | None = None,
    progress: bool = True,
) -> Path:
    """Analyze every feature of ``dictionary`` over ``store`` and write a feature store to ``out_dir``.

    ``model`` (an :class:`interp.model.Model`) supplies token strings and ``W_U``; without it the
    model named in the store's manifest is loaded. Returns ``out_dir``. If ``out_dir`` already holds
    a complete feature store made with the same inputs and config, it is returned as is. Analysis
    needs an :class:`ActivationStore` (not any activation source): examples are read back by row, with
    their token ids.
    """
    cfg = cfg or AnalyzeConfig()
    store = store if isinstance(store, ActivationStore) else ActivationStore(store)
    out = Path(out_dir)
    hook = hook or dictionary.cfg.hook_in
    if not hook:
        raise InterpError("The dictionary's cfg names no input hook (hook_in); pass the store hook it reads.")
    _check_inputs(dictionary, store, hook, out)
    fresh = _manifest(dictionary, store, cfg, hook, dictionary_path)
    if _already_complete(out, fresh):
        log.info("feature store %s is already complete", out)
        return out
    model = model or load_model(store.model["name"])
    if model.info.fingerprint != store.model.get("fingerprint"):
        raise InterpError(f"Model {model.info.name} did not make store {store.path}; pass the one that did.")
    with disk_full_errors(DISK_FULL_HINT):
        return _analyze(dictionary, store, out, cfg, model, hook, fresh, progress)


DISK_FULL_HINT = (
    "The feature store there is marked incomplete, so readers refuse it rather than read old and new files "
    "together. Free space there and run the same interp analyze command again: it recomputes the store."
)


def _analyze(
    dictionary: Dictionary,
    store: ActivationStore,
    out: Path,
    cfg: AnalyzeConfig,
    model: Model,
    hook: str,
    fresh: dict[str, Any],
    progress: bool,
) -> Path:
    """Compute and write the feature store. Before any other file changes the manifest says "incomplete", so a
    failure at any point leaves a store that readers refuse rather than old and new files that disagree."""
    out.mkdir(parents=True, exist_ok=True)
    remove_temporaries(out)
    atomic_write_json(out / "manifest.json", fresh)
    started = time.perf_counter()
    L = store.ctx_len
    n_rows = store.n_rows if cfg.max_rows is None else min(store.n_rows, cfg.max_rows // L * L)
    if n_rows < L:
        raise InterpError(f"Store {store.path} has fewer rows than one context ({L}); nothing to analyze.")
    tensors, seconds, n_counted = _compute(dictionary, store, hook, cfg, model, n_rows, progress)
    t0 = time.perf_counter()
    save_tensors(out / "features.safetensors", tensors)
    atomic_write_json(out / "vocab.json", model.token_strings(range(int(model.info.d_vocab))))
    seconds["write"] = time.perf_counter() - t0
    total = time.perf_counter() - started
    fresh.update(complete=True, n_rows=n_rows, n_rows_counted=n_counted, seconds=total, timings=seconds)
    atomic_write_json(out / "manifest.json", fresh)
    log.info(
        "analyzed %d features over %d rows in %.1fs (%s)",
        tensors["count"].numel(),
        n_rows,
        total,
        ", ".join(f"{k} {v:.1f}s" for k, v in seconds.items()),
    )
    return out


def _already_complete(out: Path, fresh: dict[str, Any]) -> bool:
    """True when ``out`` holds a complete feature store of the same inputs and config."""
    if not (out / "manifest.json").is_file():
        return False
    old = read_json(out / "manifest.json", "feature store manifest")
    return bool(old.get("complete")) and all(old.get(k) == fresh[k] for k in ("inputs", "config"))


def _compute(
    dictionary: Dictionary,
    store: ActivationStore,
    hook: str,
    cfg: AnalyzeConfig,
    model: Model,
    n_rows: int,
    progress: bool,
) -> tuple[dict[str, torch.Tensor], dict[str, float], int]:
    """Every feature-store tensor: the streaming pass, the re-encoded windows, the fixed costs; returns
    (tensors, seconds per part, rows counted)."""
    chunk_rows = max(store.ctx_len, cfg.chunk_rows // store.ctx_len * store.ctx_len)
    seconds: dict[str, float] = {}
    t0 = time.perf_counter()
    running, sample, n_counted = _pass(dictionary, store, hook, cfg, n_rows, chunk_rows, progress)
    seconds["pass"] = time.perf_counter() - t0
    tensors = finish(running, n_counted)
    min_nonzero = running.min_nonzero
    del running  # its top windows were copied out in rank order
    t0 = time.perf_counter()
    # Contexts where a feature never fires hold only activations <= 0, so 0 if none was ever negative.
    kinds = {"quant": True, "rand": min_nonzero < 0}
    tensors.update(
        reencode_windows(dictionary, store, hook, tensors, kinds, cfg.window, n_rows, chunk_rows, cfg.device)
    )
    seconds["windows"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    n_nbr = min(cfg.n_neighbours, tensors["count"].numel() - 1)
    if n_nbr > 0:
        tensors["nbr_cooc_ids"], tensors["nbr_cooc"] = cooccurrence(*sample, tensors["count"].numel(), n_nbr)
    seconds["cooccurrence"] = time.perf_counter() - t0
    out_hook = dictionary.cfg.hook_out or hook
    shape = store.hook_shape(out_hook) if out_hook in store.hooks else None
    weights, more = weight_stats(dictionary, model, shape, cfg.n_logits, cfg.n_neighbours, out_hook)
    tensors.update(weights)
    seconds.update(more)
    return tensors, seconds, n_counted


def _check_inputs(dictionary: Dictionary, store: ActivationStore, hook: str, out: Path) -> None:
    d = store.d(hook)  # raises with close matches if the store lacks the hook
    if d != dictionary.cfg.d_in:
        raise InterpError(f"The dictionary reads d_in={dictionary.cfg.d_in} but store hook {hook} has width {d}.")
    check_compatible(dictionary, store.model)
    if out.exists() and not out.is_dir():
        raise InterpError(f"Output {out} exists and is not a directory.")


def _manifest(
    dictionary: Dictionary, store: ActivationStore, cfg: AnalyzeConfig, hook: str, dictionary_path: str | None
) -> dict[str, Any]:
    dcfg = asdict(dictionary.cfg)
    return {
        "format": FORMAT,
        "version": VERSION,
        "inputs": {
            "dictionary": dictionary_path,
            "store": str(store.path),
            "store_shards": [s.sha256 for s in store.shards],
        },
        "dictionary": dcfg,
        "model": store.model,
        "corpus": store.manifest.get("corpus"),
        "hook": hook,
        "hook_out": dcfg.get("hook_out"),
        "hook_shape": store.hook_shape(hook),
        "ctx_len": store.ctx_len,
        "n_features": int(dcfg["d_sae"]),
        "config": asdict(cfg),
        "complete": False,
    }


def _pass(
    dictionary: Dictionary,
    store: ActivationStore,
    hook: str,
    cfg: AnalyzeConfig,
    n_rows: int,
    chunk_rows: int,
    progress: bool,
) -> tuple[Running, tuple[torch.Tensor, torch.Tensor], int]:
    """The streaming pass: one encode per chunk, then work on its non-zeros only.

    Returns the running state, the co-occurrence sample as the (row, feature) of its firings sorted
    by row (rows: ``cooc_rows // ctx_len`` whole contexts, every ``stride``-th one), and rows counted.
    """
    F, L = int(dictionary.cfg.d_sae), store.ctx_len
    running = Running(F, cfg, L, chunk_rows // L)
    n_ctx = n_rows // L
    stride = max(1, n_ctx * L // max(cfg.cooc_rows, 1))  # every stride-th context goes to the sample
    want = cfg.cooc_rows // L if cfg.n_neighbours else 0  # contexts in the sample
    s_rows: list[torch.Tensor] = []
    s_feats: list[torch.Tensor] = []
    taken = counted = 0
    bar = progress_bar(n_rows, "analyze", enabled=progress)
    for chunk in store.chunks(hook, chunk_rows):
        if chunk.start >= n_rows:
            break
        m = min(chunk.acts[act_key(hook)].shape[0], n_rows - chunk.start)
        f = encode(dictionary, chunk.acts[act_key(hook)][:m], cfg.device)  # (m, F)
        bos = (chunk.pos[:m] < 0).nonzero().flatten()
        f.index_fill_(0, bos, 0.0)  # BOS rows are excluded from every statistic
        counted += m - bos.numel()
        rows, feats = f.nonzero(as_tuple=True)  # the one dense scan after the encode; row-major order
        sp = SparseChunk(rows, feats, f[rows, feats])
        del f  # before the next encode, which would otherwise hold two chunks at once
        running.update(sp, chunk.start // L, chunk.tokens[:m])
        if taken < want:
            ctx = torch.arange(chunk.start // L, chunk.start // L + m // L)
            pick = (ctx % stride == 0).nonzero().flatten()[: want - taken]  # chunk-local contexts
            slot = torch.full((m // L,), -1)
            slot[pick] = torch.arange(taken, taken + pick.numel())  # their index in the sample
            keep = (sp.vals > 0) & (slot[sp.rows // L] >= 0)
            s_rows.append(slot[sp.rows[keep] // L] * L + sp.rows[keep] % L)
            s_feats.append(sp.feats[keep])
            taken += pick.numel()
        bar.update(m)
    bar.close()
    empty = torch.zeros(0, dtype=torch.int64)
    sample = (torch.cat(s_rows) if s_rows else empty, torch.cat(s_feats) if s_feats else empty)
    return running, sample, counted
