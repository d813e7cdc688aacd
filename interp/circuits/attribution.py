"""Attribution graphs (Ameisen et al. 2025, circuit-tracer): the direct effects between the nodes of one prompt's
local replacement model, one backward pass per target row (batched).

The *local replacement model* of a traced prompt (:func:`interp.circuits.replacement.trace`) freezes the attention
patterns and every LayerNorm scale at their values on the prompt and replaces each MLP output by its transcoders'
features (their activations fixed), decoder bias, skip term and *error* (MLP output minus reconstruction; a layer
without a transcoder keeps its whole MLP output as its error). Everything downstream of the sources below is then
linear, so a target's value is exactly the sum of the *direct effects* of the sources plus a constant (its bias):

- sources (columns): active transcoder features (``a_f`` times their decoders), error nodes per (layer, position),
  and embedding nodes per position (token plus position embedding, the residual stream entering block 0);
- targets (rows): features (their pre-activation ``x . W[:, i] + b_i``) and logits (``LN(x) . W_U[:, tok] + b_U``,
  optionally minus the mean over the vocabulary, as circuit-tracer does);
- a target's *bias*: its own encoder (or unembedding) bias plus every bias that reaches it (attention output and
  value biases, transcoder decoder biases).

A row is computed by injecting the target's read direction (pulled back through its frozen LayerNorm) into the
residual stream and running the transposed replacement model from the top layer down: through each residual
connection, each frozen attention pattern (``A^T`` on the OV circuit) and each skip path, never through a feature.
Rows of targets at early positions only touch the positions before them, so each batch runs on its positions only.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

import torch

from interp.circuits.decompose import ln_pullback
from interp.circuits.replacement import Trace
from interp.errors import InterpError
from interp.model import Model

_GATHER = 1 << 22
"""Elements of the (rows, features, d_model) gather of residual gradients at once (16 MiB in float32)."""
_CHUNK_ROWS = 256
"""Query positions of an attention pattern held at once (bounds it to n_heads x 256 x P)."""


@dataclass(frozen=True)
class Nodes:
    """The nodes of an attribution graph in circuit-tracer's order: features, errors, tokens, logits.

    Column ``c`` of an adjacency row is node ``c`` for the first :attr:`n_sources` nodes (logits are never
    sources): features ``[0, n_features)``, errors ``[n_features, +len(error_layers) * n_positions)`` layer-major,
    then embeddings (one per position), then logits."""

    features: torch.Tensor
    """(n_features, 3) long: layer, position, feature index within the layer; sorted in that order."""
    activations: torch.Tensor
    """(n_features,) feature activations."""
    error_layers: tuple[int, ...]
    """Every model layer (each has an error node per position; covered layers: the transcoders' error, others the
    whole MLP output)."""
    tokens: torch.Tensor
    """(P,) the prompt's token ids."""
    logit_tokens: torch.Tensor
    """(n_logits,) the explained tokens at the last position, most probable first."""
    logit_probs: torch.Tensor
    """(n_logits,) their probabilities."""

    @property
    def n_features(self) -> int:
        return len(self.features)

    @property
    def n_positions(self) -> int:
        return len(self.tokens)

    @property
    def n_sources(self) -> int:
        return self.n_features + (len(self.error_layers) + 1) * self.n_positions

    @property
    def n_nodes(self) -> int:
        return self.n_sources + len(self.logit_tokens)

    def error_index(self, layer: int, position: int) -> int:
        return self.n_features + self.error_layers.index(layer) * self.n_positions + position

    def token_index(self, position: int) -> int:
        return self.n_features + len(self.error_layers) * self.n_positions + position

    def logit_index(self, k: int) -> int:
        return self.n_sources + k


class Rows(NamedTuple):
    """Adjacency rows of a batch of targets: ``edges.sum(-1) + bias == values`` (float32 rounding only)."""

    edges: torch.Tensor
    """(B, n_sources) direct effect of every source on each target."""
    bias: torch.Tensor
    """(B,) each target's constant term."""
    values: torch.Tensor
    """(B,) each target's value on the prompt: a pre-activation or a logit."""


class Target(NamedTuple):
    """One row: a feature (``kind`` ``feature``, its layer, position and feature index ``unit``) or a logit
    (``logit``, layer = the model's n_layers, the position, ``unit`` = the token id)."""

    kind: str
    layer: int
    position: int
    unit: int


def active_nodes(model: Model, tr: Trace, max_n_logits: int = 10, desired_logit_prob: float = 0.95) -> Nodes:
    """The prompt's nodes: every active feature, every error and embedding node, and the most probable next tokens
    at the last position until their cumulative probability reaches ``desired_logit_prob`` (at most
    ``max_n_logits``)."""
    tc = tr.transcoders
    if tc is None:
        raise InterpError("Trace the prompt with transcoders to build an attribution graph.")
    found = [(layer, tr.features[layer].nonzero()) for layer in tc.layers]
    feats = torch.cat([torch.cat([torch.full((len(nz), 1), layer), nz], 1) for layer, nz in found])
    acts = torch.cat([tr.features[layer].values() for layer in tc.layers])
    probs = _final_logits(model, tr).softmax(-1)
    top = probs.sort(descending=True)
    n = int((top.values.cumsum(0) < desired_logit_prob).sum()) + 1
    k = max(1, min(n, max_n_logits))
    return Nodes(feats, acts, tuple(range(tr.n_layers)), tr.tokens, top.indices[:k], top.values[:k])


def _final_logits(model: Model, tr: Trace) -> torch.Tensor:
    """(d_vocab,) the logits at the last position, from the traced final residual stream (frozen final norm)."""
    P = len(tr.tokens)
    x = ln_pullback(model, tr, tr.resid("pre", tr.n_layers)[P - 1], "pre", tr.n_layers, P - 1)
    return x @ model.W_U.float() + model.b_U.float()


class Linearised:
    """The transposed local replacement model of one traced prompt (see the module docstring)."""

    def __init__(self, model: Model, tr: Trace, nodes: Nodes, demean: bool = True):
        if tr.transcoders is None:
            raise InterpError("Trace the prompt with transcoders to build an attribution graph.")
        self.model, self.tr, self.nodes, self.demean = model, tr, nodes, demean
        self.tc = tr.transcoders
        H = model.info.n_heads
        self.W_O = model.W_O.float()  # (L, H, d_head, d)
        W_V = model.W_V.float()
        self.W_V = W_V if W_V.shape[1] == H else W_V.repeat_interleave(H // W_V.shape[1], dim=1)
        b_V = model.b_V.float()
        b_V = b_V if b_V.shape[1] == H else b_V.repeat_interleave(H // b_V.shape[1], dim=1)
        # attention biases reach a residual row unchanged: rows of a pattern sum to one
        self.attn_bias = model.b_O.float() + torch.einsum("lhf,lhfd->ld", b_V, self.W_O)
        self.errors = {m: tr.error[m] if m in self.tc.layers else tr.acts[f"blocks.{m}.hook_mlp_out"]
                       for m in range(tr.n_layers)}
        self.embed = tr.resid("pre", 0)
        f = nodes.features
        self.by_layer = {l: (torch.nonzero(f[:, 0] == l).flatten(), f[f[:, 0] == l, 1], f[f[:, 0] == l, 2])
                         for l in self.tc.layers}

    # ---- targets ------------------------------------------------------------------------------
    def read(self, target: Target) -> tuple[torch.Tensor, float, float]:
        """(residual direction, own bias, value) of a target: where it reads the residual stream."""
        tr, t = self.tr, target.position
        if target.kind == "logit":
            W_U, b_U = self.model.W_U.float(), self.model.b_U.float()
            u, b = W_U[:, target.unit], float(b_U[target.unit])
            if self.demean:
                u, b = u - W_U.mean(1), b - float(b_U.mean())
            x = tr.resid("pre", tr.n_layers)[t]
            r = ln_pullback(self.model, tr, u, "pre", tr.n_layers, t)
            return r, b, float(x @ r) + b
        W, bias = self.tc.encoder(target.layer)
        w, b = W[:, target.unit].float(), float(bias[target.unit])
        if self.tc.reads_ln(target.layer):
            w = ln_pullback(self.model, tr, w, "mid", target.layer, t)
        return w, b, float(tr.resid("mid", target.layer)[t] @ w) + b

    # ---- the backward -------------------------------------------------------------------------
    @torch.no_grad()
    def rows(self, targets: Sequence[Target]) -> Rows:
        """Adjacency rows of ``targets`` (one transposed pass for all of them)."""
        B, L = len(targets), self.tr.n_layers
        T = max(t.position for t in targets) + 1
        reads = [self.read(t) for t in targets]
        edges = torch.zeros(B, self.nodes.n_sources)
        bias = torch.tensor([r[1] for r in reads])
        g = torch.zeros(B, T, self.embed.shape[1])  # gradient on the residual stream, positions < T
        self._inject(g, targets, reads, L)
        for m in reversed(range(L)):
            bias += self._mlp(g, edges, m, T)
            self._inject(g, targets, reads, m)
            bias += g.sum(1) @ self.attn_bias[m]
            g += self._attention_transpose(g, m, T)
        cols = self.nodes.token_index(0)
        edges[:, cols : cols + T] = (g * self.embed[:T]).sum(-1)
        return Rows(edges, bias, torch.tensor([r[2] for r in reads]))

    @staticmethod
    def _inject(g: torch.Tensor, targets: Sequence[Target], reads: list[tuple[torch.Tensor, float, float]],
                layer: int) -> None:
        """Add the read directions of the targets of ``layer`` (n_layers: the logits) to their rows of ``g``."""
        for b, (target, read) in enumerate(zip(targets, reads)):
            if target.layer == layer:
                g[b, target.position] += read[0]

    def _mlp(self, g: torch.Tensor, edges: torch.Tensor, m: int, T: int) -> torch.Tensor:
        """Edges of the sources written at MLP ``m`` (features, its error), the skip path into ``g`` (in place);
        returns the decoder bias's share of each row."""
        start = self.nodes.error_index(m, 0)
        edges[:, start : start + T] = (g * self.errors[m][:T]).sum(-1)
        if m not in self.tc.layers:
            return torch.zeros(len(g))
        for layer in self.tc.layers:
            if m not in self.tc.targets(layer):
                continue
            cols, pos, feat = self.by_layer[layer]
            keep = pos < T
            cols, pos, feat = cols[keep], pos[keep], feat[keep]
            D = self.tc.decoder(layer, m).float()
            acts = self.nodes.activations[cols]
            chunk = max(1, _GATHER // (len(g) * g.shape[-1]))
            for i in range(0, len(cols), chunk):
                s = slice(i, i + chunk)
                edges[:, cols[s]] += torch.einsum("bnd,nd->bn", g[:, pos[s]], D[feat[s]]) * acts[s]
        bias = g.sum(1) @ self.tc.bias(m).float()
        S = self.tc.skip(m)
        if S is not None:
            gx = g @ S.float()
            if self.tc.reads_ln(m):
                gx = ln_pullback(self.model, self.tr, gx, "mid", m, slice(0, T))
            g += gx
        return bias

    def _attention_transpose(self, g: torch.Tensor, m: int, T: int) -> torch.Tensor:
        """What ``g`` at block ``m``'s attention output sends to its input (frozen patterns and LayerNorm); the
        pattern is read (or recomputed) ``_CHUNK_ROWS`` query positions at a time. Memory: besides ``g``, at most
        three buffers of its size at once (gradients on z, on v, and the pulled-back result)."""
        H = self.W_O.shape[1]
        gz = torch.einsum("btd,hfd->htbf", g, self.W_O[m]).contiguous()  # (H, T, B, d_head)
        gv = torch.zeros_like(gz)
        for t0 in range(0, T, _CHUNK_ROWS):
            t1 = min(T, t0 + _CHUNK_ROWS)
            A = attention_pattern(self.model, self.tr, m, t0, t1, T)  # (H, t1 - t0, T)
            # gv[h, s] += sum_t A[h, t, s] gz[h, t], in place (no (H, T, B, d_head) temporary per block)
            gv.view(H, T, -1).baddbmm_(A.transpose(1, 2), gz[:, t0:t1].reshape(H, t1 - t0, -1))
        del gz
        gx = torch.einsum("hsbf,hdf->bsd", gv, self.W_V[m])
        del gv
        return ln_pullback(self.model, self.tr, gx, "pre", m, slice(0, T))


def attention_pattern(model: Model, tr: Trace, layer: int, t0: int, t1: int, T: int) -> torch.Tensor:
    """(n_heads, t1 - t0, T) block ``layer``'s attention pattern for query positions [t0, t1) over keys [0, T):
    from the trace when it kept the patterns, else recomputed from its rotated queries and keys (rotary models traced
    on the module path) or from the traced residual stream and LayerNorm scale (learned position embeddings)."""
    kept = tr.acts.get(f"blocks.{layer}.attn.hook_pattern")
    if kept is not None:
        return kept[:, t0:t1, :T]
    H = model.info.n_heads
    rot_q = tr.acts.get(f"blocks.{layer}.attn.hook_rot_q")  # (P, H, d_head)
    if rot_q is not None:
        k = tr.acts[f"blocks.{layer}.attn.hook_rot_k"][:T].transpose(0, 1)  # (n_kv_heads, T, d_head)
        k = k.repeat_interleave(H // len(k), 0)
        q = rot_q[t0:t1].transpose(0, 1)
    elif model.W_pos is None:
        raise InterpError("Recomputing attention patterns of a rotary model needs its rotated queries and keys; trace "
                          "it with patterns=True.")
    else:
        x = ln_pullback(model, tr, tr.resid("pre", layer)[:T], "pre", layer, slice(0, T))  # = ln1.hook_normalized
        W_Q, W_K, b_Q, b_K = model.W_Q[layer].float(), model.W_K[layer].float(), model.b_Q[layer].float(), \
            model.b_K[layer].float()
        if W_K.shape[0] != H:
            W_K, b_K = W_K.repeat_interleave(H // W_K.shape[0], 0), b_K.repeat_interleave(H // b_K.shape[0], 0)
        q = torch.einsum("td,hdf->htf", x[t0:t1], W_Q) + b_Q[:, None]
        k = torch.einsum("sd,hdf->hsf", x, W_K) + b_K[:, None]
    scores = q @ k.transpose(1, 2) / q.shape[-1] ** 0.5
    future = torch.arange(T)[None, :] > torch.arange(t0, t1)[:, None]
    return scores.masked_fill(future, float("-inf")).softmax(-1)
