"""QK attribution (what circuit-tracer leaves out): why one attention head at query position t attends to key
position s, split into pairs of (query-side, key-side) components.

With the LayerNorm scales frozen, head h of block L scores ``q_t . k_s / sqrt(d_head)`` with
``q_t = LN1(x_t) W_Q + b_Q`` and ``k_s = LN1(x_s) W_K + b_K``, and the residual stream ``x`` at either position is
the sum of what wrote it (:func:`residual_writes`): the embeddings, every earlier head's output and attention
output bias, every transcoder feature active there (activation times its decoders into the layers below L), each
MLP's decoder bias, skip term and error (or the whole MLP output where no transcoder replaces it). The score is
bilinear in those writes, so ``score = sum_ij Q_i . K_j / sqrt(d_head)`` exactly, with ``Q_i`` the query made from
write i alone (the query bias is one more query-side term, the key bias one more key-side term). In a model with
rotary position embeddings the rotation at a position is a fixed linear map, so it acts on every term (``Q_i``
rotated by the query position's angles, ``K_j`` by the key position's; the angles are the model's own, read from
one forward of the prompt) and the sum stays exact.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from interp.circuits.attribution import attention_pattern
from interp.circuits.decompose import Component, ln_pullback
from interp.circuits.replacement import Trace
from interp.errors import InterpError
from interp.model import Model, rotate


def residual_writes(model: Model, tr: Trace, layer: int, position: int) -> tuple[list[Component], torch.Tensor]:
    """The components that wrote the residual stream entering block ``layer`` at ``position`` and their writes
    (n, d_model), which sum to it (float32 rounding only)."""
    t = position
    comps = [Component("embed", -1, t, int(tr.tokens[t]))]
    rows = [tr.acts["hook_embed"][t]]
    if "hook_pos_embed" in tr.acts:
        comps.append(Component("pos", -1, t))
        rows.append(tr.acts["hook_pos_embed"][t])
    tc = tr.transcoders
    covered = set(tc.layers) if tc is not None else set()
    for m in range(layer):
        z = tr.acts[f"blocks.{m}.attn.hook_z"][t]  # (H, d_head)
        rows += list(torch.einsum("hf,hfd->hd", z, model.W_O[m].float()))
        comps += [Component("head", m, t, h) for h in range(len(z))]
        comps.append(Component("attn_bias", m, t))
        rows.append(model.b_O[m].float())
        if m not in covered:
            comps.append(Component("mlp", m, t))
            rows.append(tr.acts[f"blocks.{m}.hook_mlp_out"][t])
            continue
        assert tc is not None
        comps += [Component("dec_bias", m, t), Component("error", m, t)]
        rows += [tc.bias(m).float(), tr.error[m][t]]
        S = tc.skip(m)
        if S is not None:
            comps.append(Component("skip", m, t))
            rows.append(tr.acts[tc.input_hook(m)][t] @ S.T.float())
    for src in sorted(covered):
        assert tc is not None
        reach = [m for m in tc.targets(src) if m < layer]
        row = tr.features[src].row(t)
        active = row.nonzero().flatten()
        if reach and len(active):
            decoder = sum(tc.decoder(src, m).float()[active] for m in reach)
            assert isinstance(decoder, torch.Tensor)
            comps += [Component("feature", src, t, int(i)) for i in active]
            rows += list(row[active, None] * decoder)
    return comps, torch.stack(rows)


class QKAttribution(NamedTuple):
    """One attention score split into (query-side, key-side) pairs; ``pairs.sum() == score``."""

    layer: int
    head: int
    query_position: int
    key_position: int
    score: float
    """The pre-softmax score ``q . k / sqrt(d_head)``."""
    pattern: float
    """The attention probability of this edge (from the trace)."""
    query: list[Component]
    """Query-side terms: the writes at the query position, then ``q_bias``."""
    key: list[Component]
    """Key-side terms: the writes at the key position, then ``k_bias``."""
    pairs: torch.Tensor
    """(len(query), len(key)) contribution of every pair."""

    def top(self, k: int = 10) -> list[tuple[Component, Component, float]]:
        """The ``k`` pairs of largest absolute contribution."""
        flat = self.pairs.flatten()
        idx = flat.abs().topk(min(k, len(flat))).indices.tolist()
        n = self.pairs.shape[1]
        return [(self.query[i // n], self.key[i % n], float(flat[i])) for i in idx]


@torch.no_grad()
def qk_attribution(model: Model, tr: Trace, layer: int, head: int, query_position: int,
                   key_position: int) -> QKAttribution:
    """Attribute head ``head`` of block ``layer``'s score from ``query_position`` to ``key_position``."""
    P = len(tr.tokens)
    if model.W_pos is None and not model.rotary:
        raise InterpError("QK attribution needs learned or rotary position embeddings; this model has neither.")
    if not 0 <= layer < tr.n_layers or not 0 <= head < model.info.n_heads:
        raise InterpError(f"No head {head} in block {layer} (the model has {tr.n_layers} blocks of "
                          f"{model.info.n_heads} heads).")
    if not 0 <= key_position <= query_position < P:
        raise InterpError(f"Need 0 <= key_position <= query_position < {P}; got {key_position}, {query_position}.")
    sides = []
    angles = rotary_angles(model, tr, layer)
    for pos, W, b, name in ((query_position, model.W_Q, model.b_Q, "q_bias"),
                            (key_position, model.W_K, model.b_K, "k_bias")):
        h = head if W.shape[1] == model.info.n_heads else head // (model.info.n_heads // W.shape[1])
        comps, writes = residual_writes(model, tr, layer, pos)
        normed = ln_pullback(model, tr, writes, "pre", layer, pos)  # LN1 is linear with its scale frozen
        vecs = torch.cat([normed @ W[layer, h].float(), b[layer, h].float()[None]])
        if angles is not None:  # the rotation at this position is linear: it acts on each term
            vecs = rotate(vecs, angles[0][pos].to(vecs), angles[1][pos].to(vecs))
        sides.append((comps + [Component(name, layer, pos, head)], vecs))
    (q_comps, Q), (k_comps, K) = sides
    pairs = Q @ K.T / Q.shape[1] ** 0.5
    score = float(Q.sum(0) @ K.sum(0)) / Q.shape[1] ** 0.5
    pattern = float(attention_pattern(model, tr, layer, query_position, query_position + 1,
                                      query_position + 1)[head, 0, key_position])
    return QKAttribution(layer, head, query_position, key_position, score, pattern, q_comps, k_comps, pairs)


def rotary_angles(model: Model, tr: Trace, layer: int) -> tuple[torch.Tensor, torch.Tensor] | None:
    """(cos, sin), each (P, rotary dims), of block ``layer``'s rotary embedding on the traced prompt, from one
    forward of the bridge (its ``attn.hook_cos`` / ``hook_sin``); None for a model without rotary positions."""
    if not model.rotary:
        return None
    hooks = [f"blocks.{layer}.attn.hook_cos", f"blocks.{layer}.attn.hook_sin"]
    acts = model.capture(tr.tokens[None], hooks, path="bridge").acts
    return acts[hooks[0]][0].float(), acts[hooks[1]][0].float()


def qk_metadata(result: QKAttribution, k: int = 20) -> dict[str, object]:
    """A JSON-ready summary: the edge, its score and pattern, the ``k`` largest pairs and each side's totals."""
    return {
        "layer": result.layer, "head": result.head, "query_position": result.query_position,
        "key_position": result.key_position, "score": result.score, "pattern": result.pattern,
        "top": [[q.id, kc.id, v] for q, kc, v in result.top(k)],
        "query_totals": {c.id: float(v) for c, v in zip(result.query, result.pairs.sum(1))},
        "key_totals": {c.id: float(v) for c, v in zip(result.key, result.pairs.sum(0))},
    }
