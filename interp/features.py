"""The analyze stage: per-feature statistics and examples of a dictionary over an activation store.

Constraints this module was designed under:
- one streaming pass over the store (``store.chunks``), encoding chunk by chunk; memory is bounded by
  per-feature tensors of size ``n_features x k`` plus one encoded chunk, never by the store's size;
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
    (bottom-k of a hash key of (context, feature, seed) -- reservoir sampling that merges with topk);
    after the pass the sample is sorted by value, cut into ``n_quantiles`` equal-count bands, and the
    ``per_quantile`` entries with the smallest keys are taken from each band (delphi's quantile scheme).
  - ``rand``: ``n_random`` contexts in which the feature never fires, chosen the same way by hash key;
    the window starts at a hash-chosen position.
  The per-token activations of the windows are recomputed after the pass by re-reading and encoding
  just the windows' rows, chunk by chunk.
- ``logit_pos/neg``: the tokens most promoted / suppressed by each decoder direction, ``W_dec @ W_U``,
  when the dictionary writes to a residual-stream-like hook of width d_model and a model is given.
- ``nbr_dec``: nearest features by decoder cosine; ``nbr_cooc``: by Jaccard co-occurrence of firing,
  measured on a strided sample of about ``cooc_rows`` rows.
- ``head_attr`` (attention-output SAEs on ``attn.hook_z``): each head's share of the decoder norm.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from interp.errors import InterpError
from interp.featurestore import FORMAT, KINDS, VERSION, FeatureStore, load_feature_store  # noqa: F401
from interp.io import atomic_write_json, read_json, remove_temporaries, save_tensors
from interp.store import ActivationStore, act_key

log = logging.getLogger(__name__)

__all__ = ["AnalyzeConfig", "analyze_features", "FeatureStore", "load_feature_store"]

_RESID_LIKE = ("hook_resid_pre", "hook_resid_mid", "hook_resid_post", "hook_mlp_out", "hook_attn_out")
_MASK32 = 0xFFFFFFFF
_NO_KEY = -(2**62)  # padding of the bottom-k key sets (stored negated), below every real key


@dataclass(frozen=True)
class AnalyzeConfig:
    """How to analyze a dictionary's features. Every field changes the feature store's contents."""

    n_top: int = 20
    """Top-activating contexts kept per feature."""
    n_quantiles: int = 10
    """Equal-count activation bands that quantile examples are drawn from."""
    per_quantile: int = 3
    """Examples drawn per band."""
    quantile_pool: int = 200
    """Size of the uniform sample of firing contexts per feature that bands are cut from."""
    n_random: int = 10
    """Random contexts per feature in which it does not fire (negatives for scoring)."""
    window: int = 32
    """Tokens per example window (clipped to the store's context length)."""
    hist_min: float = 1e-3
    """Lower edge of the first log-spaced histogram bin."""
    hist_max: float = 1e4
    """Upper edge of the last log-spaced histogram bin."""
    bins_per_decade: int = 12
    """Log-spaced histogram bins per factor of ten."""
    n_logits: int = 10
    """Promoted and suppressed tokens kept per feature."""
    n_neighbours: int = 10
    """Neighbours kept per feature, by decoder cosine and by co-occurrence."""
    cooc_rows: int = 8192
    """Rows (approximately; whole contexts, strided over the store) used to measure co-occurrence."""
    chunk_rows: int = 4096
    """Rows encoded at once (rounded down to whole contexts); bounds memory at chunk_rows x n_features."""
    max_rows: int | None = None
    """Analyse only the first rows of the store (rounded down to whole contexts); None: all of it."""
    seed: int = 0
    """Seed of the hash keys that choose quantile and random examples."""
    device: str = "cpu"
    """Where the dictionary encodes (cpu, cuda ...); results are kept on the CPU."""

    def __post_init__(self) -> None:
        for name in (
            "n_top",
            "n_quantiles",
            "per_quantile",
            "quantile_pool",
            "window",
            "bins_per_decade",
            "chunk_rows",
        ):
            if getattr(self, name) < 1:
                raise InterpError(f"AnalyzeConfig.{name} must be >= 1, got {getattr(self, name)}.")
        for name in ("n_random", "n_logits", "n_neighbours", "cooc_rows"):
            if getattr(self, name) < 0:
                raise InterpError(f"AnalyzeConfig.{name} must be >= 0, got {getattr(self, name)}.")
        if not 0 < self.hist_min < self.hist_max:
            raise InterpError(f"Need 0 < hist_min < hist_max, got {self.hist_min}, {self.hist_max}.")
        if self.quantile_pool < self.n_quantiles:
            raise InterpError("quantile_pool must be at least n_quantiles so every band can hold an example.")
        if self.max_rows is not None and self.max_rows < 1:
            raise InterpError(f"max_rows must be positive or None, got {self.max_rows}.")

    def hist_edges(self) -> torch.Tensor:
        """Bin edges (B + 1,), log-spaced from hist_min to hist_max."""
        decades = torch.log10(torch.tensor(self.hist_max / self.hist_min, dtype=torch.float64))
        n = max(1, int(round(float(decades) * self.bins_per_decade)))
        lo, hi = torch.log10(torch.tensor([self.hist_min, self.hist_max], dtype=torch.float64)).tolist()
        return torch.logspace(lo, hi, n + 1, dtype=torch.float64).float()


def hash_keys(ctx: torch.Tensor, n_features: int, salt: int) -> torch.Tensor:
    """Deterministic pseudo-random int64 keys in [0, 2^32) for every (context, feature): (C, F).

    A pure function of (context index, feature index, salt), so the examples chosen do not depend on
    how the store is chunked, and a brute-force reference can recompute them.
    """
    feat = torch.arange(n_features, dtype=torch.int64)
    h = (ctx.long()[:, None] * 0x9E3779B1 + feat[None, :] * 0x85EBCA77 + salt * 0xC2B2AE3D) & _MASK32
    for _ in range(2):
        h = ((h ^ (h >> 16)) * 0x45D9F3B) & _MASK32
    return h ^ (h >> 16)


class _Running:
    """Per-feature running state of the pass: counts, histograms and bounded candidate sets."""

    def __init__(self, n_features: int, cfg: AnalyzeConfig, n_bins: int):
        F = n_features
        self.cfg = cfg
        self.count = torch.zeros(F, dtype=torch.int64)
        self.total = torch.zeros(F, dtype=torch.float64)
        self.max = torch.zeros(F)
        self.hist = torch.zeros(F * (n_bins + 2), dtype=torch.int64)
        self.n_bins = n_bins

        def slots(k: int, fill: float | int, dtype: torch.dtype) -> torch.Tensor:
            return torch.full((F, k), fill, dtype=dtype)

        k = cfg.n_top
        self.top = {
            "val": slots(k, float("-inf"), torch.float32),
            "ctx": slots(k, -1, torch.int64),
            "pos": slots(k, 0, torch.int64),
        }
        # Bottom-k keys are kept as top-k of -key; padding has key -inf (never beats a real key).
        K = cfg.quantile_pool
        self.pool = {
            "key": slots(K, _NO_KEY, torch.int64),
            "ctx": slots(K, -1, torch.int64),
            "pos": slots(K, 0, torch.int64),
            "val": slots(K, 0.0, torch.float32),
        }
        R = cfg.n_random
        self.rand = {"key": slots(R, _NO_KEY, torch.int64), "ctx": slots(R, -1, torch.int64)}

    def update_rows(self, f: torch.Tensor, edges: torch.Tensor) -> None:
        """Counts, sums, histogram from f (rows, F) with BOS rows already zeroed."""
        F = self.count.numel()
        rows, feats = (f > 0).nonzero(as_tuple=True)  # one sparse view serves every statistic
        vals = f[rows, feats]
        self.count += torch.bincount(feats, minlength=F)
        sums = torch.bincount(feats, weights=vals.double(), minlength=F)
        if not torch.isfinite(sums).all():  # NaN / inf propagate into the sums: checked at O(nnz)
            raise InterpError(
                "The dictionary produced non-finite activations (NaN or inf); check its weights."
            )
        self.total += sums
        bins = torch.bucketize(vals, edges, right=True)  # 0 underflow, 1..B, B+1 overflow
        self.hist += torch.bincount(feats * (self.n_bins + 2) + bins, minlength=self.hist.numel())

    def update_contexts(self, cmax: torch.Tensor, cpos: torch.Tensor, ctx: torch.Tensor) -> None:
        """Merge one chunk's per-context maxima cmax, cpos (C, F) for contexts ``ctx`` (C,)."""
        F = cmax.shape[1]
        fired = cmax > 0
        self.max = torch.maximum(self.max, cmax.max(0).values)
        c_ctx = ctx[None, :].expand(F, -1)
        # top: largest value; -inf for contexts where the feature did not fire
        val = torch.where(fired, cmax, float("-inf")).T
        self.top = _merge(self.top, {"val": val, "ctx": c_ctx, "pos": cpos.T}, "val")
        keys = hash_keys(ctx, F, self.cfg.seed).T
        pool_key = torch.where(fired.T, -keys, _NO_KEY)
        self.pool = _merge(self.pool, {"key": pool_key, "ctx": c_ctx, "pos": cpos.T, "val": cmax.T}, "key")
        if self.cfg.n_random:
            rkeys = hash_keys(ctx, F, self.cfg.seed + 1).T
            rand_key = torch.where(fired.T, _NO_KEY, -rkeys)
            self.rand = _merge(self.rand, {"key": rand_key, "ctx": c_ctx}, "key")


def _merge(run: dict[str, torch.Tensor], new: dict[str, torch.Tensor], by: str) -> dict[str, torch.Tensor]:
    """Keep the k largest ``by`` per feature row of the running set and a chunk's candidates.

    Running entries come first in the concatenation and topk is stable on ties, so among equal values
    the earlier context wins (also for the brute-force reference)."""
    k = run[by].shape[1]
    cat = {name: torch.cat([run[name], new[name]], dim=1) for name in run}
    idx = torch.sort(cat[by], dim=1, descending=True, stable=True).indices[:, :k]
    out = {name: t.gather(1, idx) for name, t in cat.items()}
    pad = float("-inf") if out[by].is_floating_point() else _NO_KEY
    out["ctx"] = torch.where(out[by] == pad, -1, out["ctx"])  # a non-candidate's context is not an example
    return out


@torch.no_grad()
def analyze_features(
    dictionary: Any,
    store: ActivationStore | str | Path,
    out_dir: str | Path,
    cfg: AnalyzeConfig | None = None,
    model: Any = None,
    *,
    dictionary_path: str | None = None,
    hook: str | None = None,
    progress: bool = True,
) -> Path:
    """Analyze every feature of ``dictionary`` over ``store`` and write a feature store to ``out_dir``.

    ``model`` (an :class:`interp.models.Model`) supplies token strings and ``W_U``; without it the
    model named in the store's manifest is loaded. Returns ``out_dir``. If ``out_dir`` already holds
    a complete feature store made with the same inputs and config, it is returned as is.
    """
    cfg = cfg or AnalyzeConfig()
    store = store if isinstance(store, ActivationStore) else ActivationStore(store)
    out = Path(out_dir)
    hook = hook or dictionary.cfg.hook_in
    if not hook:
        raise InterpError("The dictionary's cfg names no input hook (hook_in); pass the store hook it reads.")
    _check_inputs(dictionary, store, hook, out)
    fresh = _manifest(dictionary, store, cfg, hook, dictionary_path)
    if (out / "manifest.json").is_file():
        old = read_json(out / "manifest.json", "feature store manifest")
        if old.get("complete") and {k: old.get(k) for k in ("inputs", "config")} == {
            k: fresh[k] for k in ("inputs", "config")
        }:
            log.info("feature store %s is already complete", out)
            return out
    if model is None:
        from interp.models import load_model

        model = load_model(store.model["name"])
    if model.info.fingerprint != store.model.get("fingerprint"):
        raise InterpError(f"Model {model.info.name} did not make store {store.path}; pass the one that did.")
    out.mkdir(parents=True, exist_ok=True)
    remove_temporaries(out)
    started = time.perf_counter()
    L = store.ctx_len
    n_rows = store.n_rows if cfg.max_rows is None else min(store.n_rows, cfg.max_rows // L * L)
    if n_rows < L:
        raise InterpError(f"Store {store.path} has fewer rows than one context ({L}); nothing to analyze.")
    chunk_rows = max(L, cfg.chunk_rows // L * L)
    running, cooc, n_counted = _pass(dictionary, store, hook, cfg, n_rows, chunk_rows, progress)
    tensors = _finish(running, n_counted, cfg)
    tokens = store.column("tokens")[:n_rows].long()
    tensors.update(_windows(dictionary, store, hook, cfg, tensors, tokens, n_rows, chunk_rows, progress))
    tensors.update(_weights_stats(dictionary, model, store, cfg, cooc, hook))
    save_tensors(out / "features.safetensors", tensors)
    vocab = model.token_strings(range(int(model.info.d_vocab)))
    atomic_write_json(out / "vocab.json", vocab)
    seconds = time.perf_counter() - started
    fresh.update(complete=True, n_rows=n_rows, n_rows_counted=n_counted, seconds=seconds)
    atomic_write_json(out / "manifest.json", fresh)
    log.info("analyzed %d features over %d rows in %.1fs", tensors["count"].numel(), n_rows, fresh["seconds"])
    return out


def _check_inputs(dictionary: Any, store: ActivationStore, hook: str, out: Path) -> None:
    dcfg = dictionary.cfg
    d = store.d(hook)  # raises with close matches if the store lacks the hook
    if d != dcfg.d_in:
        raise InterpError(f"The dictionary reads d_in={dcfg.d_in} but store hook {hook} has width {d}.")
    fp = getattr(dcfg, "model_fingerprint", None)
    if fp and store.model.get("fingerprint") and fp != store.model["fingerprint"]:
        raise InterpError(
            f"The dictionary was trained on model {getattr(dcfg, 'model_name', '?')} but store {store.path} "
            f"was made with {store.model.get('name')}: their fingerprints differ. Use a store of its model."
        )
    if out.exists() and not out.is_dir():
        raise InterpError(f"Output {out} exists and is not a directory.")


def _dict_cfg(dcfg: Any) -> dict[str, Any]:
    if hasattr(dcfg, "to_dict"):
        return dict(dcfg.to_dict())
    if hasattr(dcfg, "__dataclass_fields__"):
        return asdict(dcfg)
    return dict(vars(dcfg))


def _manifest(
    dictionary: Any, store: ActivationStore, cfg: AnalyzeConfig, hook: str, dictionary_path: str | None
) -> dict[str, Any]:
    dcfg = _dict_cfg(dictionary.cfg)
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
        "hook": hook,
        "hook_out": dcfg.get("hook_out"),
        "hook_shape": store.hook_shape(hook),
        "ctx_len": store.ctx_len,
        "n_features": int(dcfg["d_sae"]),
        "config": asdict(cfg),
        "complete": False,
    }


def _pass(
    dictionary: Any,
    store: ActivationStore,
    hook: str,
    cfg: AnalyzeConfig,
    n_rows: int,
    chunk_rows: int,
    progress: bool,
) -> tuple[_Running, torch.Tensor, int]:
    """The streaming pass. Returns running state, the co-occurrence sample (rows, F) bool, rows counted."""
    F, L = int(dictionary.cfg.d_sae), store.ctx_len
    edges = cfg.hist_edges()
    running = _Running(F, cfg, edges.numel() - 1)
    n_ctx = n_rows // L
    stride = max(1, n_ctx * L // max(cfg.cooc_rows, 1))  # every stride-th context goes to the sample
    cooc: list[torch.Tensor] = []
    counted = 0
    bar = tqdm(total=n_rows, unit="tok", unit_scale=True, desc="analyze", disable=not progress, smoothing=0.1)
    for chunk in store.chunks(hook, chunk_rows):
        if chunk.start >= n_rows:
            break
        m = min(chunk.acts[act_key(hook)].shape[0], n_rows - chunk.start)
        x = chunk.acts[act_key(hook)][:m]
        f = _encode(dictionary, x, cfg.device)  # (m, F)
        keep = chunk.pos[:m] >= 0
        f[~keep] = 0.0
        counted += int(keep.sum())
        running.update_rows(f, edges)
        fc = f.view(m // L, L, F)  # (C, L, F)
        cmax, cpos = fc.max(dim=1)  # first position reaching the max
        ctx = torch.arange(chunk.start // L, chunk.start // L + m // L)
        running.update_contexts(cmax, cpos, ctx)
        if cfg.cooc_rows and len(cooc) * L < cfg.cooc_rows:
            take = (ctx % stride == 0).nonzero().flatten()
            cooc.extend((fc[c] > 0) for c in take.tolist()[: max(0, cfg.cooc_rows // L - len(cooc))])
        bar.update(m)
    bar.close()
    sample = torch.cat(cooc) if cooc else torch.zeros(0, F, dtype=torch.bool)
    return running, sample, counted


def _encode(dictionary: Any, x: torch.Tensor, device: str) -> torch.Tensor:
    return dictionary.encode(x.to(device, torch.float32)).float().cpu()


def _finish(r: _Running, n_counted: int, cfg: AnalyzeConfig) -> dict[str, torch.Tensor]:
    """Dense per-feature tensors from the running state; picks quantile examples from the pool."""
    F = r.count.numel()
    t = {
        "count": r.count,
        "density": r.count.double().div(max(n_counted, 1)).float(),
        "max_act": r.max,
        "mean_act": torch.where(r.count > 0, r.total / r.count.clamp(min=1), 0.0).float(),
        "hist": r.hist.view(F, r.n_bins + 2),
        "hist_edges": cfg.hist_edges(),
        "top_ctx": r.top["ctx"],
        "top_pos": r.top["pos"],
        "top_act": r.top["val"].clamp(min=0),
        "rand_ctx": r.rand["ctx"],
        "rand_pos": torch.where(r.rand["ctx"] >= 0, (-r.rand["key"]) >> 7, 0),  # reduced mod L later
    }
    t.update(_pick_quantiles(r.pool, cfg))
    return t


def _pick_quantiles(pool: dict[str, torch.Tensor], cfg: AnalyzeConfig) -> dict[str, torch.Tensor]:
    """From each feature's sample: sort by value, cut into equal-count bands, take smallest keys per band."""
    Q, q = cfg.n_quantiles, cfg.per_quantile
    valid = pool["ctx"] >= 0  # (F, K)
    n = valid.sum(1, keepdim=True)  # (F, 1)
    by_val = torch.sort(torch.where(valid, pool["val"], float("inf")), dim=1, stable=True).indices
    rank = torch.empty_like(by_val)
    rank.scatter_(1, by_val, torch.arange(by_val.shape[1]).expand_as(by_val))
    band = torch.where(valid, rank * Q // n.clamp(min=1), Q)  # (F, K); Q = invalid
    key = -pool["key"]  # back to the original key, smaller = chosen first
    order = torch.sort(band * (2**33) + key, dim=1).indices  # by band, then by key
    band_sorted = band.gather(1, order)
    starts = torch.searchsorted(band_sorted, torch.arange(Q).expand(band.shape[0], Q).contiguous())
    ends = torch.searchsorted(band_sorted, torch.arange(1, Q + 1).expand(band.shape[0], Q).contiguous())
    pick = starts[:, :, None] + torch.arange(q)  # (F, Q, q)
    ok = pick < ends[:, :, None]
    src = order.gather(1, pick.clamp(max=order.shape[1] - 1).flatten(1))  # (F, Q*q)
    ok = ok.flatten(1)
    return {
        "quant_ctx": torch.where(ok, pool["ctx"].gather(1, src), -1),
        "quant_pos": torch.where(ok, pool["pos"].gather(1, src), 0),
        "quant_band": torch.where(ok, torch.arange(Q).repeat_interleave(q).expand_as(ok), -1),
    }


def _windows(
    dictionary: Any,
    store: ActivationStore,
    hook: str,
    cfg: AnalyzeConfig,
    t: dict[str, torch.Tensor],
    tokens: torch.Tensor,
    n_rows: int,
    chunk_rows: int,
    progress: bool,
) -> dict[str, torch.Tensor]:
    """Token ids and per-token activations of every example window, by re-encoding only those rows."""
    L = store.ctx_len
    W = min(cfg.window, L)
    lead = W - W // 4
    F = t["count"].numel()
    kinds = {
        "top": (t["top_ctx"], t["top_pos"]),
        "quant": (t["quant_ctx"], t["quant_pos"]),
        "rand": (t["rand_ctx"], t["rand_pos"] % L),
    }
    ctx = torch.cat([c for c, _ in kinds.values()], dim=1)  # (F, E)
    at = torch.cat([p for _, p in kinds.values()], dim=1)
    feat = torch.arange(F)[:, None].expand_as(ctx)
    start = (at - lead).clamp(min=0, max=L - W)
    valid = ctx >= 0
    row0 = torch.where(valid, ctx * L + start, 0)  # (F, E) first row of each window
    rows = row0[..., None] + torch.arange(W)  # (F, E, W)
    acts = torch.zeros(rows.shape)
    flat_rows, flat_feat = rows[valid].flatten(), feat[valid][:, None].expand(-1, W).flatten()
    order = torch.argsort(flat_rows, stable=True)
    flat_rows, flat_feat = flat_rows[order], flat_feat[order]
    vals = torch.zeros(flat_rows.numel())
    bar = tqdm(total=n_rows, unit="tok", unit_scale=True, desc="examples", disable=not progress)
    for chunk in store.chunks(hook, chunk_rows):
        if chunk.start >= n_rows:
            break
        a = int(torch.searchsorted(flat_rows, chunk.start))
        b = int(torch.searchsorted(flat_rows, chunk.start + chunk.tokens.shape[0]))
        bar.update(min(chunk.tokens.shape[0], n_rows - chunk.start))
        if a == b:
            continue
        need, local = torch.unique(flat_rows[a:b] - chunk.start, return_inverse=True)
        f = _encode(dictionary, chunk.acts[act_key(hook)][need], cfg.device)  # (n_need, F)
        f[chunk.pos[need] < 0] = 0.0
        vals[a:b] = f[local, flat_feat[a:b]]
    bar.close()
    unsorted = torch.empty_like(vals)
    unsorted[order] = vals
    acts[valid] = unsorted.view(-1, W)
    toks = torch.where(valid[..., None], tokens[rows.clamp(max=n_rows - 1)], -1).to(torch.int32)
    out: dict[str, torch.Tensor] = {}
    offset = 0
    for name, (c, _) in kinds.items():
        k = c.shape[1]
        out[f"{name}_tokens"] = toks[:, offset : offset + k].contiguous()
        out[f"{name}_acts"] = acts[:, offset : offset + k].contiguous()
        out[f"{name}_start"] = torch.where(c >= 0, start[:, offset : offset + k], -1)
        offset += k
    out["rand_pos"] = kinds["rand"][1]
    return out


def _weights_stats(
    dictionary: Any, model: Any, store: ActivationStore, cfg: AnalyzeConfig, cooc: torch.Tensor, hook: str
) -> dict[str, torch.Tensor]:
    """Logit effects, neighbours and head attribution, computed from weights in feature blocks."""
    W_dec = dictionary.W_dec.detach().float().cpu()  # (F, d_out)
    F = W_dec.shape[0]
    dcfg = dictionary.cfg
    out_hook = dcfg.hook_out or hook
    t: dict[str, torch.Tensor] = {}
    block = max(1, (1 << 24) // max(F, 1))
    if cfg.n_logits and model is not None and out_hook.endswith(_RESID_LIKE):
        W_U = model.W_U.detach().float().cpu()  # (d_model, d_vocab)
        if W_U.shape[0] == W_dec.shape[1]:
            n = min(cfg.n_logits, W_U.shape[1])
            step = max(1, (1 << 24) // W_U.shape[1])  # bounds the (step, d_vocab) logit block
            parts = [_logit_block(W_dec[a : a + step] @ W_U, n) for a in range(0, F, step)]
            for i, name in enumerate(("logit_pos_ids", "logit_pos", "logit_neg_ids", "logit_neg")):
                t[name] = torch.cat([p[i] for p in parts])
    if cfg.n_neighbours and F > 1:
        n = min(cfg.n_neighbours, F - 1)
        unit = W_dec / W_dec.norm(dim=1, keepdim=True).clamp(min=1e-12)
        ids, vals = [], []
        for a in range(0, F, block):
            sims = unit[a : a + block] @ unit.T  # (b, F)
            sims[torch.arange(sims.shape[0]), torch.arange(a, a + sims.shape[0])] = float("-inf")
            v, i = sims.topk(n, dim=1)
            ids.append(i)
            vals.append(v)
        t["nbr_dec_ids"], t["nbr_dec_cos"] = torch.cat(ids), torch.cat(vals)
        t["nbr_cooc_ids"], t["nbr_cooc"] = _cooccurrence(cooc, n, block)
    if out_hook.endswith("attn.hook_z"):
        shape = store.hook_shape(out_hook) if out_hook in store.hooks else None
        if shape and len(shape) == 2 and shape[0] * shape[1] == W_dec.shape[1]:
            norms = W_dec.view(F, shape[0], shape[1]).norm(dim=-1)  # (F, n_heads)
            t["head_attr"] = norms / norms.sum(1, keepdim=True).clamp(min=1e-12)
    return t


def _logit_block(logits: torch.Tensor, n: int) -> tuple[torch.Tensor, ...]:
    pos, neg = logits.topk(n, dim=1), logits.topk(n, dim=1, largest=False)
    return pos.indices.int(), pos.values, neg.indices.int(), neg.values


def _cooccurrence(sample: torch.Tensor, n: int, block: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-n Jaccard neighbours per feature from a (rows, F) bool firing sample; -1 ids where none."""
    R, F = sample.shape
    ids = torch.full((F, n), -1, dtype=torch.int32)
    vals = torch.zeros(F, n)
    if R == 0 or not sample.any():
        return ids, vals
    counts = sample.sum(0).float()  # (F,)
    r, c = sample.nonzero(as_tuple=True)
    sparse_t = torch.sparse_coo_tensor(
        torch.stack([c, r]), torch.ones(r.numel()), (F, R), check_invariants=False
    ).coalesce()
    for a in range(0, F, block):
        dense = sample[:, a : a + block].float()  # (R, b)
        jac = torch.sparse.mm(sparse_t, dense).T.contiguous()  # (b, F) co-firing counts
        union = counts[a : a + block, None] + counts[None, :]
        union.sub_(jac).clamp_(min=1)
        jac.div_(union)  # Jaccard, in place: these blocks are the largest temporaries of the stage
        jac[torch.arange(jac.shape[0]), torch.arange(a, a + jac.shape[0])] = 0.0
        v, i = jac.topk(n, dim=1)
        ids[a : a + block] = torch.where(v > 0, i, -1).int()
        vals[a : a + block] = v
    return ids, vals
