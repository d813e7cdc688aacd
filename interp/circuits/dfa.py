"""Direct feature attribution (DFA) for attention-output SAEs (Kissane et al. 2024, ``get_per_src_pos_dfa_all_heads``).

An attention SAE reads z_cat = concat_h z_h at ``blocks.L.attn.hook_z`` (n_heads * d_head wide, head-major). Its
pre-activations are affine in z: ``h_i = sum_h z_h . w_ih + b_i`` (w_ih the head-h block of the raw encoder column,
b_i the encoder bias with the pre-encoder bias folded in). Since ``z_h[t] = sum_s A_h[t, s] v_h[s]``:

- DFA by head: ``z_h[t] . w_ih``;
- DFA by source position: ``DFA(h, s) = A_h[t, s] (v_h[s] . w_ih)``; summed over heads and sources it is
  ``h_i - b_i`` exactly;
- recursive DFA, one step upstream: with LayerNorm 1's scale frozen, ``v_h[s] = LN1(resid_pre[s]) W_V^h + b_V^h``,
  so the source-s term splits over the components that wrote ``resid_pre[s]`` (embeddings, earlier heads at every
  position, earlier MLPs or their transcoder features, biases) plus the value-bias term
  (:func:`interp.circuits.decompose.decompose` at site ``pre`` (L, s)).

An attention feature is also a root for the transcoder path search (:func:`attention_feature_root`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch

from interp.circuits.decompose import Component, Decomposition, Site, child, decompose
from interp.circuits.pathsearch import Root
from interp.circuits.replacement import Trace, affine_encoder
from interp.dictionaries import Dictionary, check_compatible
from interp.errors import InterpError
from interp.model import Model


@dataclass(frozen=True)
class FeatureDFA:
    """One attention-SAE feature at one destination position, attributed to heads and source positions."""

    layer: int
    feature: int
    position: int
    pre_activation: float
    activation: float
    bias: float
    """b_i: the pre-activation is ``by_head_source.sum() + bias``."""
    by_head_source: torch.Tensor
    """(n_heads, position + 1) DFA(h, s)."""

    @property
    def by_head(self) -> torch.Tensor:
        """(n_heads,) z_h[t] . w_ih."""
        return self.by_head_source.sum(1)

    @property
    def by_source(self) -> torch.Tensor:
        """(position + 1,) summed over heads."""
        return self.by_head_source.sum(0)


def _layer_of(model: Model, sae: Dictionary) -> int:
    check_compatible(sae, model.info)
    m = re.fullmatch(r"blocks\.(\d+)\.attn\.hook_z", sae.cfg.hook_in or "")
    width = model.info.n_heads * model.info.d_head
    if m is None or sae.cfg.d_in != width:
        raise InterpError(f"DFA needs a dictionary trained on blocks.L.attn.hook_z ({width} wide); this one reads "
                          f"{sae.cfg.hook_in!r} ({sae.cfg.d_in} wide).")
    return int(m.group(1))


@torch.no_grad()
def attention_dfa(model: Model, trace: Trace, sae: Dictionary, feature: int, position: int = -1) -> FeatureDFA:
    """DFA of ``feature`` of attention SAE ``sae`` at ``position`` of the traced prompt, by head and source."""
    layer = _layer_of(model, sae)
    t = position % len(trace.tokens)
    if not 0 <= feature < sae.cfg.d_sae:
        raise InterpError(f"The SAE has {sae.cfg.d_sae} features; {feature} is out of range.")
    W, b = affine_encoder(sae)
    w = W[:, feature].float()
    dec = decompose(model, trace, w, Site("z", layer, t))
    z = trace.acts[f"blocks.{layer}.attn.hook_z"][t].reshape(-1)
    pre = float(z @ w + b[feature])
    act = float(sae.encode(z[None])[0, feature])
    return FeatureDFA(layer, feature, t, pre, act, float(b[feature]), dec.heads[layer])


@torch.no_grad()
def recursive_dfa(model: Model, trace: Trace, sae: Dictionary, feature: int, position: int, source: int,
                  head: int | None = None) -> tuple[Decomposition, float]:
    """The source-``source`` DFA term (one ``head``, or summed over heads) split over the components that wrote the
    residual stream at ``source`` before the SAE's layer. Returns (decomposition, value-bias term):
    ``decomposition.total() + value_bias`` equals ``by_head_source[head or all, source]``."""
    layer = _layer_of(model, sae)
    t = position % len(trace.tokens)
    if not 0 <= source <= t:
        raise InterpError(f"Source position {source} must be in [0, {t}] (attention is causal).")
    W, _ = affine_encoder(sae)
    parent = decompose(model, trace, W[:, feature].float(), Site("z", layer, t))
    heads = range(model.info.n_heads) if head is None else [head]
    vector, value_bias = torch.zeros(model.info.d_model), 0.0
    for h in heads:
        c = child(model, trace, parent, Component("head", layer, source, h, t))
        assert c is not None
        vector, value_bias = vector + c.vector, value_bias + c.bias_value
    return decompose(model, trace, vector, Site("pre", layer, source)), value_bias


@torch.no_grad()
def attention_feature_root(model: Model, trace: Trace, sae: Dictionary, feature: int, position: int = -1) -> Root:
    """An attention-SAE feature as the root of a transcoder path search (its children are heads at sources)."""
    dfa = attention_dfa(model, trace, sae, feature, position)
    W, _ = affine_encoder(sae)
    site = Site("z", dfa.layer, dfa.position)
    return Root("attn_feature", dfa.layer, dfa.position, dfa.pre_activation, W[:, feature].float(), site, dfa.bias,
                f"L{dfa.layer} attention feature {feature} @ {dfa.position}", feature, dfa.activation)
