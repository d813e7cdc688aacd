"""Transcoders that replace a model's MLPs, and one prompt's forward pass seen through them.

:class:`TranscoderSet` gives per-layer transcoders (``transcoder``, ``skip_transcoder``, or any architecture trained
from one layer's MLP input to its output) and a cross-layer transcoder (``clt``) one view, per model layer and in
raw (un-normalised) coordinates:

- a feature of layer l reads the MLP input of layer l: ``blocks.l.ln2.hook_normalized`` (then LayerNorm 2 sits
  between it and the residual stream) or ``blocks.l.hook_resid_mid`` / ``hook_mlp_in`` (the residual itself);
  its pre-activation is ``x @ W + b`` (:meth:`TranscoderSet.encoder`), and an active feature's value is its
  pre-activation (ReLU, JumpReLU, TopK and BatchTopK codes; architectures whose values differ, such as gated
  SAEs, are refused);
- features of layer l write ``a @ decoder(l, m)`` into the MLP output of every layer m in ``targets(l)`` (l alone
  for a per-layer transcoder, l..L-1 for a CLT), plus ``bias(m)`` and, for skip transcoders, ``x_m @ skip(m).T``.

:func:`trace` runs one prompt and keeps what the circuit methods read (residual streams, LayerNorm scales,
attention patterns and values, MLP outputs) with every covered layer's feature activations, reconstruction and
error (MLP output minus reconstruction). Circuit methods need LayerNorm folded into the weights (the model
loaded with processing ``default`` or ``transformer_lens``) and sequential attention and MLP.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import torch

from interp.dictionaries import Dictionary, check_compatible, load_dictionary
from interp.errors import InterpError
from interp.model import Model

_INPUTS = {"ln2.hook_normalized": True, "hook_resid_mid": False, "hook_mlp_in": False}
"""MLP-input hook suffix -> whether LayerNorm 2 lies between it and the residual stream."""


@dataclass(frozen=True)
class _Layer:
    """One model layer's replacement."""

    dictionary: Dictionary
    index: int
    """The layer's index in a CLT's hook lists (0 for a per-layer transcoder)."""
    reads_ln: bool
    W: torch.Tensor
    """(d_model, n) raw encoder."""
    b: torch.Tensor
    """(n,) encoder bias: pre-activations are ``x @ W + b``."""


class TranscoderSet:
    """Per-layer transcoders (one per covered layer) or one cross-layer transcoder, seen per model layer."""

    def __init__(self, dictionaries: Sequence[Dictionary], model: Model):
        if not dictionaries:
            raise InterpError("No transcoders given; pass per-layer transcoders or one cross-layer transcoder.")
        if model.parallel_blocks:
            raise InterpError("This model runs attention and MLP in parallel; circuits need sequential blocks.")
        self.model = model
        self._layers: dict[int, _Layer] = {}
        self._clt: Dictionary | None = None
        for d in dictionaries:
            check_compatible(d, model.info)
            if d.cfg.normalization == "standardize":
                raise InterpError(f"A {d.cfg.architecture} dictionary with per-token standardisation cannot be "
                                  "unfolded into raw weights; use transcoders trained with 'scalar' or 'none'.")
            pairs: list[tuple[str | None, str | None]] = list(zip(d.cfg.hooks_in, d.cfg.hooks_out))
            pairs = pairs or [(d.cfg.hook_in, d.cfg.hook_out)]
            if len(pairs) > 1 or hasattr(d, "layer_decoder"):
                if len(dictionaries) > 1:
                    raise InterpError("Pass one cross-layer transcoder alone, not with other transcoders.")
                self._clt = d
            for index, (hook_in, hook_out) in enumerate(pairs):
                layer, reads_ln = _check_pair(d, hook_in, hook_out, model.info.n_layers)
                if layer in self._layers:
                    raise InterpError(f"Two transcoders replace the MLP of layer {layer}; pass one per layer.")
                W, b = self._raw_encoder(d, index)
                self._layers[layer] = _Layer(d, index, reads_ln, W, b)
        self.layers: tuple[int, ...] = tuple(sorted(self._layers))
        """Model layers whose MLP is replaced, ascending."""

    @classmethod
    def load(cls, paths: Sequence[str | Path], model: Model) -> TranscoderSet:
        """Transcoders from dictionary directories (per-layer transcoders, or one CLT)."""
        return cls([load_dictionary(p, device=str(model.device)) for p in paths], model)

    # ---- the per-layer view ------------------------------------------------------------------
    def _layer(self, layer: int) -> _Layer:
        if layer not in self._layers:
            raise InterpError(f"No transcoder replaces the MLP of layer {layer} (covered: {list(self._layers)}).")
        return self._layers[layer]

    def _raw_encoder(self, d: Dictionary, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        if self._clt is d:
            W, b = d.layer_encoder(index)  # type: ignore[operator]
            return W.detach(), b.detach()
        return affine_encoder(d)

    def reads_ln(self, layer: int) -> bool:
        """True when layer ``layer``'s features read ``ln2.hook_normalized`` (else the residual stream itself)."""
        return self._layer(layer).reads_ln

    def input_hook(self, layer: int) -> str:
        return f"blocks.{layer}.ln2.hook_normalized" if self.reads_ln(layer) else f"blocks.{layer}.hook_resid_mid"

    def n_features(self, layer: int) -> int:
        return int(self._layer(layer).W.shape[1])

    def encoder(self, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(W (d_model, n), b (n,)): pre-activations of layer ``layer``'s features are ``x @ W + b``."""
        entry = self._layer(layer)
        return entry.W, entry.b

    @torch.no_grad()
    def encode(self, layer: int, x: torch.Tensor) -> torch.Tensor:
        """Activations (..., n) of layer ``layer``'s features on its raw MLP inputs ``x`` (..., d_model)."""
        entry = self._layer(layer)
        if self._clt is not None:
            return self._clt.encode_layer(x, entry.index)  # type: ignore[operator]
        return entry.dictionary.encode(x.reshape(-1, x.shape[-1])).view(*x.shape[:-1], -1)

    def targets(self, layer: int) -> tuple[int, ...]:
        """The MLP layers that features of ``layer`` write to."""
        if self._clt is None:
            return (layer,) if layer in self._layers else ()
        return tuple(m for m in self.layers if m >= layer)

    @torch.no_grad()
    def decoder(self, layer: int, target: int) -> torch.Tensor:
        """(n, d_model): what features of ``layer`` write into the MLP output of ``target``."""
        entry = self._layer(layer)
        if target not in self.targets(layer):
            raise InterpError(f"Features of layer {layer} do not write to layer {target}.")
        if self._clt is not None:
            return self._clt.layer_decoder(entry.index, self._layer(target).index)  # type: ignore[operator]
        return entry.dictionary.W_dec.detach() / entry.dictionary.out_scale

    @torch.no_grad()
    def bias(self, target: int) -> torch.Tensor:
        """(d_model,): the decoder bias added to the MLP output of ``target``."""
        entry = self._layer(target)
        if self._clt is not None:
            return self._clt.layer_bias(entry.index)  # type: ignore[operator]
        d = entry.dictionary
        return cast(torch.Tensor, d.b_dec).detach() / d.out_scale

    @torch.no_grad()
    def skip(self, target: int) -> torch.Tensor | None:
        """(d_model, d_model) S with ``x @ S.T`` added to the MLP output of ``target`` (x its MLP input); None
        without a skip path."""
        entry = self._layer(target)
        if self._clt is not None:
            S = self._clt.layer_skip(entry.index)  # type: ignore[operator]
            return None if S is None else S.detach()
        W = getattr(entry.dictionary, "W_skip", None)
        return None if W is None else W.detach() * (entry.dictionary.in_scale / entry.dictionary.out_scale)

    def latent(self, layer: int, feature: int) -> int:
        """The dictionary's own latent index of feature ``feature`` of ``layer`` (what its feature store lists)."""
        entry = self._layer(layer)
        return entry.index * self.n_features(layer) + feature if self._clt is not None else feature

    def dictionary(self, layer: int) -> Dictionary:
        return self._layer(layer).dictionary


@torch.no_grad()
def affine_encoder(d: Dictionary) -> tuple[torch.Tensor, torch.Tensor]:
    """(W (d_in, d_sae), b (d_sae,)) with the dictionary's pre-activations ``x @ W + b`` on raw inputs x, read off
    its ``pre_acts`` (normalisation folded in). InterpError for architectures without a linear pre-activation or
    whose active latents do not take its value (gated SAEs, matching pursuit, codebooks)."""
    pre_acts = getattr(d, "pre_acts", None)
    if pre_acts is None or len(d.input_hooks) > 1:
        raise InterpError(f"A {d.cfg.architecture} dictionary has no linear pre-activation per hook; circuits need "
                          "ReLU, JumpReLU, TopK or BatchTopK dictionaries (or a cross-layer transcoder).")
    eye = torch.eye(d.cfg.d_in, device=d.in_scale.device)
    b = pre_acts(torch.zeros_like(eye[:1]))[0]
    W = (pre_acts(eye) - b) * d.in_scale
    probe = torch.randn(64, d.cfg.d_in, generator=torch.Generator().manual_seed(0)).to(eye) * 2
    f, h = d.encode_normalized(probe), pre_acts(probe)
    if not torch.allclose(f[f != 0], h[f != 0], rtol=1e-4, atol=1e-5):
        raise InterpError(f"Active latents of a {d.cfg.architecture} dictionary do not take their pre-activation's "
                          "value, so their inputs cannot be decomposed; use ReLU, JumpReLU, TopK or BatchTopK.")
    return W, b


def _check_pair(d: Dictionary, hook_in: str | None, hook_out: str | None, n_layers: int) -> tuple[int, bool]:
    """(model layer, reads LayerNorm) of a transcoder's hook pair; InterpError unless it maps one layer's MLP
    input to the same layer's MLP output."""
    m_in = re.fullmatch(r"blocks\.(\d+)\.(.+)", hook_in or "")
    m_out = re.fullmatch(r"blocks\.(\d+)\.hook_mlp_out", hook_out or "")
    if m_in is None or m_out is None or m_in.group(2) not in _INPUTS or m_in.group(1) != m_out.group(1):
        raise InterpError(
            f"A {d.cfg.architecture} dictionary maps {hook_in!r} to {hook_out!r}; transcoder circuits need the hook "
            "pair blocks.L.ln2.hook_normalized (or hook_resid_mid / hook_mlp_in) -> blocks.L.hook_mlp_out."
        )
    layer = int(m_in.group(1))
    if layer >= n_layers:
        raise InterpError(f"The transcoder reads layer {layer}, but the model has {n_layers} layers.")
    return layer, _INPUTS[m_in.group(2)]


class SparseActs:
    """(P, n) feature activations kept as their active entries only (compressed rows): a trace holds L0 values per
    position and layer instead of ``P x n`` (at 2,048 tokens and 24,576 features a dense layer is 200 MB)."""

    def __init__(self, dense: torch.Tensor):
        self.csr = dense.to_sparse_csr()
        self.shape = tuple(dense.shape)

    def row(self, t: int) -> torch.Tensor:
        """(n,) the activations at position ``t``, dense."""
        crow = self.csr.crow_indices()
        a, b = int(crow[t]), int(crow[t + 1])
        out = torch.zeros(self.shape[1], dtype=self.csr.dtype)
        out[self.csr.col_indices()[a:b]] = self.csr.values()[a:b]
        return out

    def at(self, t: int, feature: int) -> float:
        """The activation of ``feature`` at position ``t`` (0.0 when inactive)."""
        crow = self.csr.crow_indices()
        a, b = int(crow[t]), int(crow[t + 1])
        hit = (self.csr.col_indices()[a:b] == feature).nonzero()
        return float(self.csr.values()[a + int(hit[0, 0])]) if len(hit) else 0.0

    def nonzero(self) -> torch.Tensor:
        """(nnz, 2) (position, feature) of every active entry, in position-major order (as ``Tensor.nonzero``)."""
        crow = self.csr.crow_indices()
        rows = torch.repeat_interleave(torch.arange(self.shape[0]), crow[1:] - crow[:-1])
        return torch.stack([rows, self.csr.col_indices()], 1)

    def values(self) -> torch.Tensor:
        """(nnz,) the active values, in :meth:`nonzero`'s order."""
        return self.csr.values()

    def to_dense(self) -> torch.Tensor:
        return self.csr.to_dense()

    @property
    def nbytes(self) -> int:
        """Bytes held (row offsets, feature indices, values)."""
        c = self.csr
        return sum(t.numel() * t.element_size() for t in (c.crow_indices(), c.col_indices(), c.values()))

    def __matmul__(self, w: torch.Tensor) -> torch.Tensor:
        """(P, n) @ (n, d) -> (P, d)."""
        return self.csr @ w


@dataclass(frozen=True)
class Trace:
    """One prompt's forward pass, batch dimension dropped (P positions), and its transcoder features."""

    tokens: torch.Tensor
    """(P,) token ids."""
    acts: dict[str, torch.Tensor]
    """hook -> activation (P, ...) for the hooks the circuit methods read."""
    features: dict[int, SparseActs]
    """covered layer -> feature activations (P, n), active entries only."""
    reconstruction: dict[int, torch.Tensor]
    """covered layer -> the transcoders' MLP output (P, d_model), bias and skip included."""
    error: dict[int, torch.Tensor]
    """covered layer -> MLP output minus reconstruction (P, d_model)."""
    transcoders: TranscoderSet | None
    n_layers: int

    def resid(self, kind: str, layer: int) -> torch.Tensor:
        """(P, d_model) residual stream: ``pre`` enters block ``layer`` (``pre`` of ``n_layers`` is the final
        residual stream), ``mid`` sits between its attention and its MLP."""
        if kind == "pre" and layer == self.n_layers:
            return self.acts[f"blocks.{layer - 1}.hook_resid_post"]
        return self.acts[f"blocks.{layer}.hook_resid_{kind}"]

    @property
    def nbytes(self) -> int:
        """Bytes the trace holds (activations, feature activations, reconstructions, errors)."""
        dense = sum(t.numel() * t.element_size() for part in (self.acts, self.reconstruction, self.error)
                    for t in part.values())
        return dense + sum(f.nbytes for f in self.features.values())

    def ln_scale(self, kind: str, layer: int) -> torch.Tensor:
        """(P, 1) the frozen scale of the LayerNorm that reads ``resid(kind, layer)``."""
        if kind == "pre" and layer == self.n_layers:
            return self.acts["ln_final.hook_scale"]
        return self.acts[f"blocks.{layer}.{'ln1' if kind == 'pre' else 'ln2'}.hook_scale"]


def _trace_hooks(n_layers: int, with_pos: bool, patterns: bool = True) -> list[str]:
    per_layer = ["hook_resid_pre", "ln1.hook_scale", "attn.hook_pattern", "attn.hook_v", "attn.hook_z",
                 "hook_resid_mid", "ln2.hook_scale", "ln2.hook_normalized", "hook_mlp_out"]
    if not patterns:  # recomputed from the residual stream, or (rotary models) from the rotated queries and keys
        per_layer.remove("attn.hook_pattern")
        per_layer += [] if with_pos else ["attn.hook_rot_q", "attn.hook_rot_k"]
    hooks = ["hook_embed"] + (["hook_pos_embed"] if with_pos else [])
    hooks += [f"blocks.{l}.{h}" for l in range(n_layers) for h in per_layer]
    return hooks + [f"blocks.{n_layers - 1}.hook_resid_post", "ln_final.hook_scale"]


@torch.no_grad()
def trace(model: Model, tokens: torch.Tensor | str, transcoders: TranscoderSet | None = None,
          patterns: bool = True) -> Trace:
    """Run one prompt (a string, or token ids (P,) or (1, P)) and keep what the circuit methods read; without
    ``patterns`` the attention patterns (n_heads x P x P per layer) are left out (attribution graphs recompute them
    a block of rows at a time; rotary models keep their rotated queries and keys for that)."""
    if model.info.processing == "none":
        raise InterpError("Circuit methods need LayerNorm folded into the weights; load the model with "
                          "processing='default'.")
    if model.parallel_blocks:
        raise InterpError("This model runs attention and MLP in parallel; transcoder circuits need sequential blocks.")
    toks = model.to_tokens(tokens, truncate=False) if isinstance(tokens, str) else tokens.reshape(1, -1)
    if toks.shape[1] > model.info.n_ctx:
        raise InterpError(f"The prompt has {toks.shape[1]} tokens; the model reads at most {model.info.n_ctx}.")
    L = model.info.n_layers
    hooks = _trace_hooks(L, model.W_pos is not None, patterns)
    acts = {h: a[0].float() for h, a in model.capture(toks, hooks).acts.items()}
    features: dict[int, SparseActs] = {}
    recon: dict[int, torch.Tensor] = {}
    error: dict[int, torch.Tensor] = {}
    if transcoders is not None:
        if transcoders.model.info.fingerprint != model.info.fingerprint:
            raise InterpError("These transcoders were loaded for another model; load them with this one.")
        inputs = {l: acts[transcoders.input_hook(l)] for l in transcoders.layers}
        features = {l: SparseActs(transcoders.encode(l, inputs[l]).float()) for l in transcoders.layers}
        for m in transcoders.layers:
            recon[m] = _reconstruct(transcoders, m, features, inputs[m])
            error[m] = acts[f"blocks.{m}.hook_mlp_out"] - recon[m]
    return Trace(toks[0].cpu(), acts, features, recon, error, transcoders, L)


@torch.no_grad()
def replacement_logits(model: Model, transcoders: TranscoderSet, tokens: torch.Tensor,
                       with_error: bool = False) -> torch.Tensor:
    """Logits (batch, pos, d_vocab) of the replacement model: the output of every MLP the transcoders cover is
    replaced by their reconstruction, computed layer by layer from this forward pass's own MLP inputs (so a CLT
    feature of layer l reads the replaced layers before it). ``with_error`` adds back each layer's error on the
    clean run (MLP output minus reconstruction), which gives the model's own logits."""
    tokens = tokens.to(model.device)
    errors: dict[int, torch.Tensor] = {}
    if with_error:
        hooks = [h for layer in transcoders.layers
                 for h in (transcoders.input_hook(layer), f"blocks.{layer}.hook_mlp_out")]
        # the same engine as the spliced forward below, so each feature sees bit-identical inputs in both passes
        # (the module path agrees with the bridge to ~1e-7, enough to flip a JumpReLU or TopK feature at its edge)
        clean = model.capture(tokens, hooks, path="bridge").acts
        inputs = {layer: clean[transcoders.input_hook(layer)] for layer in transcoders.layers}
        features = {layer: transcoders.encode(layer, inputs[layer]) for layer in transcoders.layers}
        errors = {m: clean[f"blocks.{m}.hook_mlp_out"] - _reconstruct(transcoders, m, features, inputs[m])
                  for m in transcoders.layers}
    seen: dict[int, torch.Tensor] = {}
    feats: dict[int, torch.Tensor] = {}

    def read(layer: int) -> Callable[[torch.Tensor, Any], torch.Tensor | None]:
        def hook(x: torch.Tensor, hook: Any) -> None:
            seen[layer], feats[layer] = x, transcoders.encode(layer, x.float())
        return hook

    def write(layer: int) -> Callable[[torch.Tensor, Any], torch.Tensor | None]:
        def hook(y: torch.Tensor, hook: Any) -> torch.Tensor:
            out = _reconstruct(transcoders, layer, feats, seen[layer].float())
            return (out + errors[layer] if with_error else out).to(y.dtype)
        return hook

    fwd = [(transcoders.input_hook(layer), read(layer)) for layer in transcoders.layers]
    fwd += [(f"blocks.{layer}.hook_mlp_out", write(layer)) for layer in transcoders.layers]
    with model.hooks(fwd):
        return model.forward(tokens)


def _reconstruct(transcoders: TranscoderSet, target: int, features: Any,
                 x: torch.Tensor) -> torch.Tensor:
    """The transcoders' output at MLP ``target`` from the features of the layers that write it (layer -> dense
    tensor or :class:`SparseActs`) and its input x."""
    y = transcoders.bias(target).expand_as(x).clone()
    for layer in transcoders.layers:
        if target in transcoders.targets(layer):
            y += features[layer] @ transcoders.decoder(layer, target)
    S = transcoders.skip(target)
    return y + x @ S.T if S is not None else y
