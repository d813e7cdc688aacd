"""Input-dependent attributions averaged over a dataset, against the input-invariant pullback (Dunefsky et al.'s
``get_mean_ixg``).

For a later transcoder feature (layer L, feature j, encoder column w read after LayerNorm 2) and an earlier
transcoder layer l, the attribution of feature i at a token t is ``a_i(t) p_i / sigma(t)`` with the pullback
``p = sum_{m in targets(l), m < L} W_dec^{l->m} (P w)`` (P the LayerNorm centring) and sigma(t) the frozen LayerNorm
scale at t: the feature terms of :func:`interp.circuits.decompose.decompose` at every token. Averaged over the
tokens where feature j fires above the ``quantile`` of its positive activations, the top of that mean is
compared with the top of the pullback.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from interp.circuits.replacement import TranscoderSet
from interp.errors import InterpError
from interp.model import Model


class MeanAttribution(NamedTuple):
    mean: torch.Tensor
    """(n,) mean input-dependent attribution of layer l's features over the selected tokens."""
    pullback: torch.Tensor
    """(n,) the input-invariant pullback p (the attribution per unit activation at sigma = 1)."""
    n_tokens: int
    """Tokens where the later feature fired above the quantile."""

    def top_k_overlap(self, k: int) -> float:
        """|top-k of ``mean`` ∩ top-k of ``pullback``| / k."""
        top_mean = set(self.mean.topk(k).indices.tolist())
        return len(top_mean & set(self.pullback.topk(k).indices.tolist())) / k


@torch.no_grad()
def mean_attribution(model: Model, transcoders: TranscoderSet, layer: int, feature: int, source_layer: int,
                     tokens: torch.Tensor, quantile: float = 0.2, batch: int = 8) -> MeanAttribution:
    """Mean attribution of ``source_layer``'s features to ``feature`` of ``layer`` over ``tokens`` (contexts,
    (B, P)); BOS positions (0) are left out."""
    reach = [m for m in transcoders.targets(source_layer) if m < layer]
    if not reach:
        raise InterpError(f"Features of layer {source_layer} write to no MLP below layer {layer}.")
    W, _ = transcoders.encoder(layer)
    w = W[:, feature].float()
    reads_ln = transcoders.reads_ln(layer)
    direction = (w - w.mean() if model.norm_centers else w) if reads_ln else w
    p = sum(transcoders.decoder(source_layer, m) @ direction for m in reach)
    assert isinstance(p, torch.Tensor)
    hooks = [transcoders.input_hook(source_layer), transcoders.input_hook(layer), f"blocks.{layer}.ln2.hook_scale"]
    acts, attrs = [], []
    for a in range(0, len(tokens), batch):
        cap = model.capture(tokens[a : a + batch], hooks).acts
        target = transcoders.encode(layer, cap[hooks[1]].float())[:, 1:, feature]
        sigma = cap[hooks[2]][:, 1:, 0].float() if reads_ln else torch.ones_like(target)
        source = transcoders.encode(source_layer, cap[hooks[0]].float())[:, 1:]
        acts.append(target.flatten())
        attrs.append((source * p / sigma[..., None]).flatten(0, 1))
    act, attr = torch.cat(acts), torch.cat(attrs)
    positive = act[act > 0]
    if positive.numel() == 0:
        raise InterpError(f"Feature {feature} of layer {layer} never fires on these tokens.")
    keep = (act > 0) & (act >= torch.quantile(positive, quantile))
    return MeanAttribution(attr[keep].mean(0), p, int(keep.sum()))
