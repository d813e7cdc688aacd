"""Per-feature running statistics of the analyze pass, and the example windows they point at.

Constraints this module was designed under:
- the pass sees each chunk as its non-zero activations (one dense ``nonzero`` after the encode); all
  work here is O(nnz) plus O(features x contexts) per chunk (1/ctx_len of a dense pass over rows);
- state is bounded by ``n_features x k`` (top windows: ``n_features x n_top x window``), never by rows;
- ties resolve to the earlier context everywhere, as in the brute-force reference of the tests: the top
  set merges by a stable sort with running entries first, and the hash-keyed samples order entries by
  (key, context).

See :mod:`interp.features.analyze` for what each statistic means.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from interp.errors import InterpError
from interp.features.config import AnalyzeConfig

_MASK32 = 0xFFFFFFFF
NO_KEY = -(2**62)  # padding of the bottom-k key sets (stored negated), below every real key
_EMPTY = 2**63 - 1  # order value of an empty BottomK slot, above every real one
_CTX_BITS = 31  # BottomK orders are key << 31 | context


def hash_keys(ctx: torch.Tensor, n_features: int, salt: int) -> torch.Tensor:
    """Deterministic pseudo-random int64 keys in [0, 2^32) for every (context, feature): (C, F).

    A pure function of (context index, feature index, salt), so the examples chosen do not depend on
    how the store is chunked, and a brute-force reference can recompute them.
    """
    return _mix(ctx.long()[:, None], torch.arange(n_features)[None, :], salt)


def _mix(ctx: torch.Tensor, feat: torch.Tensor, salt: int) -> torch.Tensor:
    """The keys of :func:`hash_keys` for broadcastable int64 ``ctx`` and ``feat``."""
    h = (ctx * 0x9E3779B1 + feat * 0x85EBCA77 + salt * 0xC2B2AE3D) & _MASK32
    for _ in range(2):
        h = ((h ^ (h >> 16)) * 0x45D9F3B) & _MASK32
    return h ^ (h >> 16)


class SparseChunk(NamedTuple):
    """The non-zero activations of one encoded chunk, in row-major order (rows ascending)."""

    rows: torch.Tensor
    """(nnz,) int64 row index within the chunk."""
    feats: torch.Tensor
    """(nnz,) int64 feature index."""
    vals: torch.Tensor
    """(nnz,) float32 activation (non-zero; may be negative for signed dictionaries)."""


class BottomK:
    """Per feature, the ``k`` entries with the smallest ``order`` (unique within a feature) seen so far,
    with payload columns.

    Candidates are appended to ``k + spare`` slots, and only features whose slots would overflow are
    compacted (cut to their k smallest); a feature that holds k entries rejects any candidate above
    its k-th order at once. So a chunk costs O(features x contexts) plus amortised O(candidates), and
    the pools of most features stop changing once a few hundred contexts have been seen.
    """

    def __init__(self, n_features: int, k: int, spare: int, payload: dict[str, torch.dtype]):
        self.k = k
        cap = k + max(spare, k)
        self.order = torch.full((n_features, cap), _EMPTY, dtype=torch.int64)
        self.cols = {name: torch.zeros(n_features, cap, dtype=dtype) for name, dtype in payload.items()}
        self.count = torch.zeros(n_features, dtype=torch.int64)
        self.limit = torch.full((n_features,), _EMPTY, dtype=torch.int64)  # candidates must be below

    def add(self, order: torch.Tensor, cols: dict[str, torch.Tensor]) -> None:
        """Offer candidates ``order`` (F, C), ``_EMPTY`` where there is none, with payload (F, C) each."""
        ok = order < self.limit[:, None]
        n = ok.sum(1)
        full = (self.count + n > self.order.shape[1]).nonzero().flatten()
        if full.numel():
            self._compact(full)
        f, c = ok.nonzero(as_tuple=True)
        at = self.count[f] + ok.cumsum(1)[f, c] - 1
        self.order[f, at] = order[f, c]
        for name, t in cols.items():
            self.cols[name][f, at] = t[f, c]
        self.count += n

    def _compact(self, feats: torch.Tensor) -> None:
        order, idx = self.order[feats].topk(self.k, dim=1, largest=False)  # sorted ascending
        spare = self.order.shape[1] - self.k
        self.order[feats] = torch.cat([order, order.new_full((order.shape[0], spare), _EMPTY)], 1)
        for t in self.cols.values():
            t[feats, : self.k] = t[feats].gather(1, idx)
        self.count[feats] = (order < _EMPTY).sum(1)
        self.limit[feats] = torch.where(self.count[feats] == self.k, order[:, -1], _EMPTY)

    def result(self) -> dict[str, torch.Tensor]:
        """The k entries of every feature in ascending order: ``key`` (negated, ``NO_KEY`` for none, as
        :func:`merge` keeps them), ``ctx`` (-1 for none) and the payload columns."""
        self._compact(torch.arange(self.order.shape[0]))
        order = self.order[:, : self.k]
        valid = order < _EMPTY
        out = {name: t[:, : self.k] for name, t in self.cols.items()}
        out["key"] = torch.where(valid, -(order >> _CTX_BITS), NO_KEY)
        out["ctx"] = torch.where(valid, order & ((1 << _CTX_BITS) - 1), -1)
        return out


def _orders(keys: torch.Tensor, ctx: torch.Tensor, candidate: torch.Tensor) -> torch.Tensor:
    """BottomK orders (F, C) of hash ``keys`` (F, C) of contexts ``ctx`` (C,); ``_EMPTY`` off ``candidate``."""
    return torch.where(candidate, (keys << _CTX_BITS) | ctx[None, :], _EMPTY)


def window_start(pos: torch.Tensor, L: int, W: int) -> torch.Tensor:
    """First position of the W-token window that shows position ``pos`` at index ``W - W // 4``."""
    return (pos - (W - W // 4)).clamp(min=0, max=L - W)


class Running:
    """Per-feature running state of the pass: counts, histograms, bounded candidate sets, top windows."""

    def __init__(self, n_features: int, cfg: AnalyzeConfig, L: int, chunk_contexts: int):
        F = n_features
        self.cfg, self.L, self.W = cfg, L, min(cfg.window, L)
        self.edges = cfg.hist_edges()
        self.n_bins = self.edges.numel() - 1
        self.count = torch.zeros(F, dtype=torch.int64)
        self.total = torch.zeros(F, dtype=torch.float64)
        self.max = torch.zeros(F)
        self.min_nonzero = 0.0  # smallest non-zero activation seen: < 0 only for signed dictionaries
        self.hist = torch.zeros(F * (self.n_bins + 2), dtype=torch.int64)

        def slots(k: int, fill: float | int, dtype: torch.dtype) -> torch.Tensor:
            return torch.full((F, k), fill, dtype=dtype)

        k, W = cfg.n_top, self.W
        self.top = {
            "val": slots(k, float("-inf"), torch.float32),
            "ctx": slots(k, -1, torch.int64),
            "pos": slots(k, 0, torch.int64),
            "slot": torch.arange(k).repeat(F, 1),  # where each entry's window is stored; -1: not yet
        }
        # Windows stay in their storage slot while entries are re-ranked; finish() puts them in order.
        self.top_acts = torch.zeros(F, k, W)  # (F, k slots, W)
        self.top_tokens = torch.full((F, k, W), -1, dtype=torch.int32)
        # quantile pool and random contexts: smallest hash keys (ties: the earlier context)
        self.pool = BottomK(F, cfg.quantile_pool, chunk_contexts, {"pos": torch.int64, "val": torch.float32})
        self.rand = BottomK(F, max(cfg.n_random, 1), chunk_contexts, {})

    def update(self, sp: SparseChunk, ctx0: int, tokens: torch.Tensor) -> None:
        """Merge one encoded chunk given by its non-zeros ``sp`` (BOS rows excluded): contexts
        ``ctx0 ..`` of ``L`` rows each, with token ids ``tokens`` (rows,)."""
        if sp.vals.numel():
            if not torch.isfinite(sp.vals).all():
                raise InterpError("The dictionary produced non-finite activations (NaN or inf); check its weights.")
            self.min_nonzero = min(self.min_nonzero, float(sp.vals.min()))
        fire = sp.vals > 0
        rows, feats, vals = sp.rows[fire], sp.feats[fire], sp.vals[fire]
        F, L = self.count.numel(), self.L
        self.count.index_add_(0, feats, torch.ones_like(feats))
        self.total.index_add_(0, feats, vals.double())
        bins = torch.bucketize(vals, self.edges, right=True)  # 0 underflow, 1..B, B+1 overflow
        self.hist.index_add_(0, feats * (self.n_bins + 2) + bins, torch.ones_like(feats))
        self.max.scatter_reduce_(0, feats, vals, "amax")
        C = tokens.shape[0] // L
        # per-(feature, context) max and the first position reaching it, from the non-zeros only
        key = feats * C + rows // L
        cmax = torch.zeros(F * C).scatter_reduce_(0, key, vals, "amax")
        at = vals == cmax[key]
        cpos = torch.full((F * C,), L, dtype=torch.int64).scatter_reduce_(0, key[at], (rows % L)[at], "amin")
        ctx = torch.arange(ctx0, ctx0 + C)
        self._contexts(cmax.view(F, C), cpos.view(F, C), ctx, sp, tokens)

    def _contexts(
        self, cmax: torch.Tensor, cpos: torch.Tensor, ctx: torch.Tensor, sp: SparseChunk, tokens: torch.Tensor
    ) -> None:
        """Merge per-context maxima cmax, cpos (F, C) of contexts ``ctx`` (C,) into the candidate sets."""
        F = cmax.shape[0]
        fired = cmax > 0
        c_ctx = ctx[None, :].expand(F, -1)
        val = torch.where(fired, cmax, float("-inf"))  # -inf: did not fire
        no_slot = torch.full_like(cpos, -1)
        changed, idx = merge(self.top, {"val": val, "ctx": c_ctx, "pos": cpos, "slot": no_slot}, "val")
        self._capture_windows(changed, idx, cpos, sp, tokens)
        feat = torch.arange(F)[:, None]
        keys = _mix(ctx[None, :], feat, self.cfg.seed)  # (F, C), as hash_keys(ctx, F, seed).T
        self.pool.add(_orders(keys, ctx, fired), {"pos": cpos, "val": cmax})
        if self.cfg.n_random:
            self.rand.add(_orders(_mix(ctx[None, :], feat, self.cfg.seed + 1), ctx, ~fired), {})

    def _capture_windows(
        self, changed: torch.Tensor, idx: torch.Tensor, cpos: torch.Tensor, sp: SparseChunk, tokens: torch.Tensor
    ) -> None:
        """Store the windows of top entries that came from this chunk (``idx >= k`` among the
        ``changed`` features' kept sources, see :func:`merge`) in the slots their evicted entries freed.

        Activations come from the chunk's non-zeros (a window is zero elsewhere): O(nnz + new x window).
        """
        if not changed.numel():
            return
        k, L, W = idx.shape[1], self.L, self.W
        slot = self.top["slot"][changed]  # (b, k); -1 for entries from this chunk
        used = torch.zeros(changed.numel(), k + 1, dtype=torch.bool)
        used.scatter_(1, torch.where(slot >= 0, slot, k), True)
        b_new, j_new = (slot < 0).nonzero(as_tuple=True)  # row-major, as are the free slots below
        s_free = (~used[:, :k]).nonzero(as_tuple=True)[1]  # as many per row as new entries
        feat = changed[b_new]
        if not feat.numel():
            return
        self.top["slot"][feat, j_new] = s_free
        c = idx[b_new, j_new] - k  # context within the chunk
        C = cpos.shape[1]
        start = window_start(cpos[feat, c], L, W)
        window_of = torch.full((cpos.numel(),), -1, dtype=torch.int64)  # (feature, context) -> new window
        window_of[feat * C + c] = torch.arange(feat.numel())
        w = window_of[sp.feats * C + sp.rows // L]
        offset = sp.rows % L - start[w.clamp(min=0)]
        hit = (w >= 0) & (offset >= 0) & (offset < W)
        acts = torch.zeros(feat.numel(), W)
        acts[w[hit], offset[hit]] = sp.vals[hit]
        self.top_acts[feat, s_free] = acts
        self.top_tokens[feat, s_free] = tokens[(c * L + start)[:, None] + torch.arange(W)].to(torch.int32)

    def top_windows(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Top windows' activations (F, k, W) and token ids in rank order; 0 / -1 for empty entries."""
        valid = (self.top["ctx"] >= 0)[..., None]
        at = self.top["slot"].clamp(min=0)[..., None].expand(-1, -1, self.W)
        return (
            torch.where(valid, self.top_acts.gather(1, at), 0.0),
            torch.where(valid, self.top_tokens.gather(1, at), -1),
        )


def merge(run: dict[str, torch.Tensor], new: dict[str, torch.Tensor], by: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Keep, in place, the k largest ``by`` per feature row of the running set and a chunk's candidates.

    Only features with a candidate strictly above their k-th running value are re-sorted (a tie loses
    to the running entry, which is earlier). Returns those features (b,) and, for each, the source of
    every kept slot (b, k): ``j < k`` is running slot j, ``j >= k`` is candidate ``j - k``.
    """
    k = run[by].shape[1]
    F = run[by].shape[0]
    changed = (new[by] > run[by][:, -1:]).any(1).nonzero().flatten()
    if not changed.numel():
        return changed, torch.zeros(0, k, dtype=torch.int64)
    if changed.numel() > F // 4:  # copying most rows out and back costs more than sorting them all
        changed = torch.arange(F)
        cat = {name: torch.cat([run[name], new[name]], dim=1) for name in run}
    else:
        cat = {name: torch.cat([run[name][changed], new[name][changed]], dim=1) for name in run}
    idx = torch.sort(cat[by], dim=1, descending=True, stable=True).indices[:, :k]
    pad = float("-inf") if run[by].is_floating_point() else NO_KEY
    kept = {name: t.gather(1, idx) for name, t in cat.items()}
    kept["ctx"] = torch.where(kept[by] == pad, -1, kept["ctx"])  # a non-candidate is not an example
    for name, t in kept.items():
        if changed.numel() == F:
            run[name] = t
        else:
            run[name][changed] = t
    return changed, idx


def finish(r: Running, n_counted: int) -> dict[str, torch.Tensor]:
    """Dense per-feature tensors from the running state; picks quantile examples from the pool."""
    F, cfg = r.count.numel(), r.cfg
    valid = r.top["ctx"] >= 0
    top_acts, top_tokens = r.top_windows()
    t = {
        "count": r.count,
        "density": r.count.double().div(max(n_counted, 1)).float(),
        "max_act": r.max,
        "mean_act": torch.where(r.count > 0, r.total / r.count.clamp(min=1), 0.0).float(),
        "hist": r.hist.view(F, r.n_bins + 2),
        "hist_edges": r.edges,
        "top_ctx": r.top["ctx"],
        "top_pos": r.top["pos"],
        "top_act": r.top["val"].clamp(min=0),
        "top_tokens": top_tokens,
        "top_acts": top_acts,
        "top_start": torch.where(valid, window_start(r.top["pos"], r.L, r.W), -1),
    }
    rand = r.rand.result()
    rand = {name: v[:, : cfg.n_random] for name, v in rand.items()}
    t["rand_ctx"] = rand["ctx"]
    t["rand_pos"] = torch.where(rand["ctx"] >= 0, ((-rand["key"]) >> 7) % r.L, 0)
    t.update(pick_quantiles(r.pool.result(), cfg))
    return t


def pick_quantiles(pool: dict[str, torch.Tensor], cfg: AnalyzeConfig) -> dict[str, torch.Tensor]:
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


