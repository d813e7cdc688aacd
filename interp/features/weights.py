"""The fixed costs of the analyze stage: statistics of the weights and of a bounded firing sample.

Logit effects, decoder-cosine neighbours and head attribution depend only on the weights; co-occurrence
neighbours on a sample of at most ``cooc_rows`` rows. None grows with the store, so their cost is paid
once (the bench reports each apart from the streaming pass).

Constraints: every (F, F) quantity is computed in blocks of features whose top-n is kept and the block
dropped, so memory is O(block x F); co-occurrence counts come from the sample's non-zeros
(O(sum over rows of nnz_row^2)), never from a dense (rows, F) matrix product.
"""

from __future__ import annotations

import time

import torch

from interp.dictionaries import Dictionary, head_attribution
from interp.model import Model

_RESID_LIKE = ("hook_resid_pre", "hook_resid_mid", "hook_resid_post", "hook_mlp_out", "hook_attn_out")
_BLOCK_ELEMS = 1 << 22  # (block, F) temporaries hold about this many elements


def weight_stats(
    dictionary: Dictionary,
    model: Model | None,
    hook_shape: list[int] | None,
    n_logits: int,
    n_neighbours: int,
    hook: str,
) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
    """Logit effects, decoder neighbours and head attribution; returns the tensors and seconds per part.

    ``hook`` is the hook the dictionary writes, ``hook_shape`` its per-row shape in the store (if any).
    """
    W_dec = dictionary.W_dec.detach().float().cpu()  # (F, d_out)
    F = W_dec.shape[0]
    t: dict[str, torch.Tensor] = {}
    seconds: dict[str, float] = {}
    t0 = time.perf_counter()
    if n_logits and model is not None and hook.endswith(_RESID_LIKE):
        W_U = model.W_U.detach().float().cpu()  # (d_model, d_vocab)
        if W_U.shape[0] == W_dec.shape[1]:
            n = min(n_logits, W_U.shape[1])
            step = max(1, (1 << 24) // W_U.shape[1])  # bounds the (step, d_vocab) logit block
            parts = [_logit_block(W_dec[a : a + step] @ W_U, n) for a in range(0, F, step)]
            for i, name in enumerate(("logit_pos_ids", "logit_pos", "logit_neg_ids", "logit_neg")):
                t[name] = torch.cat([p[i] for p in parts])
    seconds["logits"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    if n_neighbours and F > 1:
        t["nbr_dec_ids"], t["nbr_dec_cos"] = decoder_neighbours(W_dec, min(n_neighbours, F - 1))
    seconds["decoder_neighbours"] = time.perf_counter() - t0
    if hook.endswith("attn.hook_z") and hook_shape and len(hook_shape) == 2:
        if hook_shape[0] * hook_shape[1] == W_dec.shape[1]:
            t["head_attr"] = head_attribution(dictionary, hook_shape[0]).float().cpu()  # (F, n_heads)
    return t, seconds


def _logit_block(logits: torch.Tensor, n: int) -> tuple[torch.Tensor, ...]:
    pos, neg = logits.topk(n, dim=1), logits.topk(n, dim=1, largest=False)
    return pos.indices.int(), pos.values, neg.indices.int(), neg.values


def decoder_neighbours(W_dec: torch.Tensor, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-n other features by decoder cosine: ids (F, n) int64 and cosines (F, n), largest first."""
    F = W_dec.shape[0]
    unit = W_dec / W_dec.norm(dim=1, keepdim=True).clamp(min=1e-12)
    block = max(1, _BLOCK_ELEMS // F)
    ids, vals = [], []
    for a in range(0, F, block):
        sims = unit[a : a + block] @ unit.T  # (b, F)
        sims[torch.arange(sims.shape[0]), torch.arange(a, a + sims.shape[0])] = float("-inf")
        v, i = sims.topk(n, dim=1)
        ids.append(i)
        vals.append(v)
    return torch.cat(ids), torch.cat(vals)


def cooccurrence(rows: torch.Tensor, feats: torch.Tensor, n_features: int, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-n Jaccard neighbours per feature from a firing sample given as its non-zeros.

    ``rows``, ``feats`` (nnz,): sample row and feature of every firing, sorted by row. Returns ids
    (F, n) int32 (-1 where there is no co-firing neighbour) and Jaccard values (F, n), largest first.
    """
    F = n_features
    ids = torch.full((F, n), -1, dtype=torch.int32)
    vals = torch.zeros(F, n)
    if not rows.numel():
        return ids, vals
    counts = torch.bincount(feats, minlength=F).float()  # (F,) firing rows per feature
    per_row = torch.bincount(rows)
    row_ptr = torch.cumsum(per_row, 0) - per_row  # first entry of each row
    by_feat = torch.argsort(feats, stable=True)
    feat_sorted = feats[by_feat]
    block = max(1, _BLOCK_ELEMS // F)
    for a in range(0, F, block):
        b = min(a + block, F)
        lo, hi = (int(torch.searchsorted(feat_sorted, v)) for v in (a, b))
        e = by_feat[lo:hi]  # entries of features in [a, b)
        rep = per_row[rows[e]]  # each pairs with every entry of its row
        first = torch.repeat_interleave(row_ptr[rows[e]] - torch.cumsum(rep, 0) + rep, rep)
        partner = feats[first + torch.arange(first.numel())]
        key = torch.repeat_interleave(feats[e] - a, rep) * F + partner
        both = torch.bincount(key, minlength=(b - a) * F).view(b - a, F).float()  # (b, F) co-firing rows
        union = (counts[a:b, None] + counts[None, :]).sub_(both).clamp_(min=1)
        jac = both.div_(union)
        jac[torch.arange(b - a), torch.arange(a, b)] = 0.0
        v, i = jac.topk(n, dim=1)
        ids[a:b] = torch.where(v > 0, i, -1).int()
        vals[a:b] = v
    return ids, vals
