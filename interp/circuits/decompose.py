"""Exact linear decompositions of one direction at one place of a traced prompt into the components that wrote it
(Dunefsky et al. 2024, with LayerNorm scales frozen as in circuit-tracer).

A *site* is where a direction ``e`` is read (:class:`Site`):

- ``pre`` (layer L, position t): the residual stream entering block L (``pre`` of n_layers is the final residual);
- ``mid`` (layer L, position t): the residual stream between block L's attention and its MLP;
- ``z`` (layer L, position t): the concatenated head outputs ``blocks.L.attn.hook_z`` (an attention SAE's input).

:func:`decompose` splits ``e . x`` (x the activation at the site) into one term per upstream component: token and
position embeddings at t; every attention head of the layers before the site at every source position s <= t
(``A[t, s] (v[s] W_O) . e``) and the heads' output biases; per MLP layer before the site, either the transcoder
features active at t (activation x pullback: input-dependent attribution), the transcoder's decoder bias, skip
term and error (MLP output minus reconstruction), or, for a layer without a transcoder, the MLP output itself.
The terms sum to ``e . x`` exactly (float32 rounding only).

Every term whose component reads the residual stream linearly has a *child direction* (:func:`child`): the
direction at that component's own input site whose decomposition sums to the term minus the component's own
bias. A feature's child is its encoder direction times its pullback; a head's is ``A[t, s] W_V W_O e`` at source
s. Directions read through a LayerNorm are pulled back through it with the LayerNorm's scale frozen at this
prompt (``P e / scale``, P the centring projection for LayerNorm, identity for RMSNorm): the same linearisation
circuit-tracer uses. (Dunefsky et al. multiply by the ratio e.x_norm / e.x instead; both sum exactly.)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple

import torch

from interp.circuits.replacement import Trace
from interp.errors import InterpError
from interp.model import Model


class Site(NamedTuple):
    """Where a direction is read: ``kind`` (``pre``, ``mid`` or ``z``), block ``layer``, token ``position``."""

    kind: str
    layer: int
    position: int


@dataclass(frozen=True)
class Component:
    """One upstream component of a decomposition.

    ``kind``: ``embed`` (index = token id), ``pos``, ``head`` (index = head, position = the source position it reads,
    target = the destination position), ``feature`` (index = feature of the layer's transcoder), ``skip``,
    ``mlp`` (a layer without a transcoder), and the leaves ``attn_bias``, ``dec_bias``, ``error``, ``value_bias``,
    ``enc_bias``; roots are ``logit`` (index = token), ``vector`` and ``attn_feature`` (an attention-SAE feature).
    """

    kind: str
    layer: int
    position: int
    index: int | None = None
    target: int | None = None

    @property
    def id(self) -> str:
        """Stable node id, e.g. ``f1.42@7``, ``a0.h3@2>7``, ``embed@0``, ``err1@7``."""
        where = f"@{self.position}" + (f">{self.target}" if self.target is not None else "")
        names = {"feature": f"f{self.layer}.{self.index}", "head": f"a{self.layer}.h{self.index}",
                 "embed": "embed", "pos": "pos", "skip": f"skip{self.layer}", "mlp": f"m{self.layer}",
                 "attn_bias": f"attn_bias{self.layer}", "dec_bias": f"dec_bias{self.layer}",
                 "error": f"err{self.layer}", "value_bias": f"v_bias{self.layer}.h{self.index}",
                 "enc_bias": f"enc_bias{self.layer}.{self.index}", "logit": f"logit{self.index}",
                 "vector": f"vector{self.layer}", "attn_feature": f"z{self.layer}.{self.index}"}
        return names.get(self.kind, f"{self.kind}{self.layer}") + where

    @property
    def is_leaf(self) -> bool:
        return self.kind not in ("feature", "head", "skip")


LEAF_KINDS = ("attn_bias", "dec_bias", "error", "value_bias", "enc_bias")
"""Bias and error terms: never expanded, and kept out of path rankings (they become a graph's error nodes)."""


@dataclass
class Decomposition:
    """Every upstream term of ``vector . x`` at ``site``; :meth:`total` is ``vector . x`` (exactly, in float32)."""

    site: Site
    vector: torch.Tensor
    heads: dict[int, torch.Tensor] = field(default_factory=dict)
    """layer -> (n_heads, t + 1) contributions by head and source position."""
    features: dict[int, torch.Tensor] = field(default_factory=dict)
    """transcoder layer -> (n,) activation x pullback of its features at t."""
    pullbacks: dict[int, torch.Tensor] = field(default_factory=dict)
    """transcoder layer -> (n,) input-invariant pullback (decoders . vector, summed over the layers in reach)."""
    scalars: dict[Component, float] = field(default_factory=dict)
    """Every other term: embeddings, biases, errors, skip terms, MLPs without transcoders."""

    def total(self) -> float:
        parts = [float(t.sum()) for t in self.heads.values()] + [float(t.sum()) for t in self.features.values()]
        return sum(parts) + sum(self.scalars.values())

    def terms(self, ignore_bos: bool = False, leaves: bool = False) -> tuple[list[Component], torch.Tensor]:
        """All components and their values (1-D tensor), biases and errors only with ``leaves``; with
        ``ignore_bos`` heads reading source position 0 are left out (BOS is an attention sink)."""
        comps: list[Component] = []
        values: list[torch.Tensor] = []
        t = self.site.position
        for layer, c in self.heads.items():
            H, S = c.shape
            lo = 1 if ignore_bos and S > 1 else 0
            comps += [Component("head", layer, s, h, t) for h in range(H) for s in range(lo, S)]
            values.append(c[:, lo:].reshape(-1))
        for layer, c in self.features.items():
            idx = c.nonzero().flatten().tolist()
            comps += [Component("feature", layer, t, i) for i in idx]
            values.append(c[idx])
        for comp, v in self.scalars.items():
            if leaves or comp.kind not in LEAF_KINDS:
                comps.append(comp)
                values.append(torch.tensor([v]))
        return comps, torch.cat(values) if values else torch.zeros(0)

    def leaf_total(self, kinds: tuple[str, ...]) -> float:
        """The summed value of the scalar terms of these kinds (e.g. ``("error",)``)."""
        return sum(v for c, v in self.scalars.items() if c.kind in kinds)


def ln_pullback(model: Model, trace: Trace, v: torch.Tensor, kind: str, layer: int,
                position: int | slice) -> torch.Tensor:
    """The residual-stream direction r with ``r . x = v . LN(x)`` at this site, LayerNorm scale frozen. With a slice
    of positions, ``v`` is (..., positions, d_model) and each position is pulled back with its own scale."""
    scale = trace.ln_scale(kind, layer)[position]
    u = v - v.mean(-1, keepdim=True) if model.norm_centers else v
    return u / scale


@torch.no_grad()
def decompose(model: Model, trace: Trace, vector: torch.Tensor, site: Site) -> Decomposition:
    """Split ``vector . x`` at ``site`` into its upstream terms (see the module docstring)."""
    kind, L, t = site
    if not 0 <= t < len(trace.tokens):
        raise InterpError(f"Position {t} is outside the prompt of {len(trace.tokens)} tokens.")
    e = vector.float()
    out = Decomposition(site, e)
    if kind == "z":
        out.heads[L] = _z_heads(trace, e.view(model.info.n_heads, -1), L, t)
        return out
    if kind not in ("pre", "mid") or not 0 <= L <= trace.n_layers or kind == "mid" and L == trace.n_layers:
        raise InterpError(f"Cannot decompose a direction at site {site}.")
    out.scalars[Component("embed", -1, t, int(trace.tokens[t]))] = float(trace.acts["hook_embed"][t] @ e)
    if "hook_pos_embed" in trace.acts:
        out.scalars[Component("pos", -1, t)] = float(trace.acts["hook_pos_embed"][t] @ e)
    for layer in range(L + 1 if kind == "mid" else L):
        out.heads[layer] = _z_heads(trace, torch.einsum("hfd,d->hf", model.W_O[layer].float(), e), layer, t)
        out.scalars[Component("attn_bias", layer, t)] = float(model.b_O[layer].float() @ e)
    tc = trace.transcoders
    covered = set(tc.layers) if tc is not None else set()
    for m in range(L):
        if m not in covered:
            out.scalars[Component("mlp", m, t)] = float(trace.acts[f"blocks.{m}.hook_mlp_out"][t] @ e)
            continue
        assert tc is not None
        out.scalars[Component("dec_bias", m, t)] = float(tc.bias(m) @ e)
        out.scalars[Component("error", m, t)] = float(trace.error[m][t] @ e)
        S = tc.skip(m)
        if S is not None:
            out.scalars[Component("skip", m, t)] = float(trace.acts[tc.input_hook(m)][t] @ S.T @ e)
    for layer in sorted(covered):
        assert tc is not None
        reach = [m for m in tc.targets(layer) if m < L]
        if reach:
            p = sum(tc.decoder(layer, m) @ e for m in reach)
            assert isinstance(p, torch.Tensor)
            out.pullbacks[layer] = p
            out.features[layer] = trace.features[layer].row(t) * p
    return out


def _z_heads(trace: Trace, u: torch.Tensor, layer: int, t: int) -> torch.Tensor:
    """(n_heads, t + 1): A[h, t, s] (v[s, h] . u[h]) for head-space directions u (n_heads, d_head)."""
    v = _values(trace, layer, u.shape[0])[: t + 1]  # (S, H, d_head)
    A = trace.acts[f"blocks.{layer}.attn.hook_pattern"][:, t, : t + 1]  # (H, S)
    return A * torch.einsum("shf,hf->hs", v, u)


def _values(trace: Trace, layer: int, n_heads: int) -> torch.Tensor:
    """(P, n_heads, d_head) value vectors, key-value heads repeated for grouped-query attention."""
    v = trace.acts[f"blocks.{layer}.attn.hook_v"]
    return v if v.shape[1] == n_heads else v.repeat_interleave(n_heads // v.shape[1], dim=1)


class Child(NamedTuple):
    """A component's own input: the direction at its input site whose decomposition sums to ``value - bias``."""

    vector: torch.Tensor
    site: Site
    bias: Component | None
    """The component's own bias term (encoder bias times pullback, or a head's value bias), a leaf."""
    bias_value: float


@torch.no_grad()
def child(model: Model, trace: Trace, parent: Decomposition, comp: Component) -> Child | None:
    """The child direction of a term of ``parent`` (None for leaves: embeddings, biases, errors, opaque MLPs)."""
    e, t = parent.vector, parent.site.position
    if comp.kind == "feature":
        tc = trace.transcoders
        assert tc is not None and comp.index is not None
        p = float(parent.pullbacks[comp.layer][comp.index])
        W, b = tc.encoder(comp.layer)
        w = W[:, comp.index].float() * p
        if tc.reads_ln(comp.layer):
            w = ln_pullback(model, trace, w, "mid", comp.layer, t)
        bias = Component("enc_bias", comp.layer, t, comp.index)
        return Child(w, Site("mid", comp.layer, t), bias, float(b[comp.index]) * p)
    if comp.kind == "head":
        assert comp.index is not None
        h, s, layer = comp.index, comp.position, comp.layer
        u = e.view(model.info.n_heads, -1)[h] if parent.site.kind == "z" else model.W_O[layer, h].float() @ e
        a = float(trace.acts[f"blocks.{layer}.attn.hook_pattern"][h, t, s])
        r = ln_pullback(model, trace, a * (model.W_V[layer, h].float() @ u), "pre", layer, s)
        bias = Component("value_bias", layer, s, h, t)
        return Child(r, Site("pre", layer, s), bias, a * float(model.b_V[layer, h].float() @ u))
    if comp.kind == "skip":
        tc = trace.transcoders
        assert tc is not None
        S = tc.skip(comp.layer)
        assert S is not None
        w = S.T.float() @ e
        if tc.reads_ln(comp.layer):
            w = ln_pullback(model, trace, w, "mid", comp.layer, t)
        return Child(w, Site("mid", comp.layer, t), None, 0.0)
    return None


# ---- input-invariant views ------------------------------------------------------------------------
def pullback(trace_or_set: Trace, vector: torch.Tensor, layer: int, below: int) -> torch.Tensor:
    """(n,) input-invariant pullback of a residual direction onto the features of transcoder layer ``layer``: the
    sum over the MLP layers m < ``below`` it writes to of ``decoder(layer, m) @ vector`` (Dunefsky's
    W_dec e; for a CLT, over every layer in reach)."""
    tc = trace_or_set.transcoders
    if tc is None:
        raise InterpError("This trace has no transcoders.")
    reach = [m for m in tc.targets(layer) if m < below]
    if not reach:
        raise InterpError(f"Features of layer {layer} write to no MLP below layer {below}.")
    total = sum(tc.decoder(layer, m) @ vector.float() for m in reach)
    assert isinstance(total, torch.Tensor)
    return total


def deembedding(model: Model, vector: torch.Tensor) -> torch.Tensor:
    """(d_vocab,) input-invariant scores of every token for a direction read at the first layer's input:
    ``W_E @ P vector`` (P the LayerNorm centring; the per-token scale is input-dependent and left out)."""
    v = vector.float()
    if model.norm_centers:
        v = v - v.mean()
    return model.W_E.float() @ v


def ov_pullback(model: Model, vector: torch.Tensor, layer: int, head: int) -> torch.Tensor:
    """(d_model,) input-invariant pullback of a residual direction through one head's OV circuit: W_V W_O e."""
    return model.W_V[layer, head].float() @ (model.W_O[layer, head].float() @ vector.float())
