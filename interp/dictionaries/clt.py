"""Cross-layer transcoders (Ameisen et al. 2025, "Circuit Tracing"; circuit-tracer's ``CrossLayerTranscoder``).

A CLT replaces every MLP of a model at once. It reads several hooks, ``hooks_in[l]`` for l = 0..L-1 (each layer's
MLP input, ``blocks.{l}.ln2.hook_normalized`` by default), and predicts as many, ``hooks_out[l]`` (each layer's
``blocks.{l}.hook_mlp_out``); l indexes those lists, and ``hooks_in[l]`` and ``hooks_out[l]`` are one model
layer. Its input and output rows are the layers' rows concatenated (the multi-hook contract of
:class:`~interp.dictionaries.base.DictionaryConfig`), so d_in = L * d_model and d_sae = L * n (layer-major: latent
``l * n + i`` is feature i of layer l). In normalised coordinates::

    h^l = x^l W_enc^l + b_enc^l                                    pre-activations, (N, n) per layer
    a^l = h^l * [h^l > theta^l],  theta^l = exp(t^l)                 JumpReLU
    y_hat^m = sum_{l <= m} a^l W_dec^{l->m} + b_dec^m (+ x^m W_skip^m^T with ``skip``)

Loss (Anthropic's January 2025 update; means over the batch)::

    sum_m ||y_hat^m - y^m||^2 + lambda_S * sum_{l,i} tanh(c * ||W_dec,i^l|| * a_i^l)
                              + lambda_P * sum_{l,i} ReLU(theta_i^l - h_i^l) * ||W_dec,i^l||

||W_dec,i^l|| is the norm of feature (l, i)'s decoder over the concatenation of every layer it writes to.
lambda_S ramps up linearly over the first ``sparsity_warmup`` of the run. The threshold's gradient is the
rectangle-kernel straight-through estimator of :mod:`interp.dictionaries.jumprelu` (bandwidth eps), taken with
respect to theta, and autograd carries it through theta = exp(t) to t. The decoder is unconstrained (its norm
is in the penalty), so nothing is renormalised. Init: encoder U(-1/sqrt(d), 1/sqrt(d)); decoder
U(-1/sqrt(L d), 1/sqrt(L d)); t = log ``threshold_init``; b_dec^m = mean of y^m; b_enc set so that each
feature fires on ``init_density`` of the init sample.

For circuits (``interp.circuits``) the CLT gives, per layer and in raw (un-normalised) coordinates:
:meth:`layer_encoder`, :meth:`pre_acts_layer`, :meth:`encode_layer`, :meth:`layer_decoder` for a (source,
target) pair, :meth:`layer_bias`, :meth:`layer_skip`, the thresholds (:attr:`threshold`, (L, n)) and
:meth:`layer_of` (the model layer of index l).
"""

from __future__ import annotations

import math
import re
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from interp.dictionaries.base import Dictionary, DictionaryConfig, StepOutput, TrainBatch, TrainState
from interp.dictionaries.jumprelu import _JumpReLU
from interp.dictionaries.registry import register
from interp.dictionaries.relu import warmup
from interp.errors import InterpError


@register(
    "clt",
    description="Cross-layer transcoder: JumpReLU features read layer l's MLP input and write every MLP output "
    "l' >= l, tanh sparsity penalty (Ameisen et al. 2025)",
)
class CrossLayerTranscoder(Dictionary):
    """Cross-layer transcoder over L layers: n JumpReLU features per layer, decoders to every later layer."""

    param_defaults: dict[str, Any] = {
        "n_layers": 0,
        "sparsity_coeff": 1.0,
        "sparsity_c": 4.0,
        "sparsity_warmup": 1.0,
        "preact_coeff": 3e-6,
        "bandwidth": 2.0,
        "threshold_init": math.exp(0.1),
        "init_density": 0.1,
        "skip": False,
        "init_seed": 0,
    }
    causal = True

    def __init__(self, cfg: DictionaryConfig):
        super().__init__(cfg)
        n_hooks = len(cfg.hooks_in)
        L = int(self.p["n_layers"]) or n_hooks or 1
        if n_hooks and L != n_hooks or cfg.hooks_out and len(cfg.hooks_out) != L:
            raise InterpError(
                f"A cross-layer transcoder over {L} layers needs {L} input and {L} output hooks (got "
                f"{len(cfg.hooks_in)} and {len(cfg.hooks_out)}). Train it with --hook 'blocks.*.ln2.hook_normalized' "
                "--hook-out 'blocks.*.hook_mlp_out' on a store (or model) holding both for every layer."
            )
        if cfg.d_in % L or cfg.d_sae % L or cfg.d_out % L:
            raise InterpError(f"d_in, d_sae and d_out ({cfg.d_in}, {cfg.d_sae}, {cfg.d_out}) must be multiples of "
                              f"the {L} layers of a cross-layer transcoder.")
        self.n_layers = L
        self.d_layer_in, self.n_features, self.d_layer_out = cfg.d_in // L, cfg.d_sae // L, cfg.d_out // L
        d, n, e = self.d_layer_in, self.n_features, self.d_layer_out
        self.W_enc_ = nn.Parameter(torch.empty(L, d, n))
        self.b_enc = nn.Parameter(torch.zeros(L, n))
        self.W_dec_ = nn.ParameterList([nn.Parameter(torch.empty(n, L - l, e)) for l in range(L)])
        self.b_dec = nn.Parameter(torch.zeros(L, e))
        self.log_threshold = nn.Parameter(torch.full((L, n), math.log(float(self.p["threshold_init"]))))
        self.W_skip = nn.Parameter(torch.zeros(L, e, d)) if self.p["skip"] else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        gen = torch.Generator().manual_seed(int(self.p["init_seed"]))
        enc, dec = 1 / math.sqrt(self.d_layer_in), 1 / math.sqrt(self.n_layers * self.d_layer_out)
        with torch.no_grad():
            self.W_enc_.copy_((torch.rand(self.W_enc_.shape, generator=gen) * 2 - 1) * enc)
            for W in self.W_dec_:
                W.copy_((torch.rand(W.shape, generator=gen) * 2 - 1) * dec)

    # ---- the generic dictionary contract (rows are layers concatenated) ----------------------
    @property
    def threshold(self) -> torch.Tensor:
        """(L, n) thresholds theta = exp(t), in pre-activation units (the same raw or normalised)."""
        return self.log_threshold.exp()

    @property
    def W_enc(self) -> torch.Tensor:
        """(L d, L n) block diagonal: layer l's features read only layer l's input."""
        return torch.block_diag(*self.W_enc_)

    @property
    def W_dec(self) -> torch.Tensor:
        """(L n, L d_out) block upper triangular: row l n + i is feature (l, i)'s decoder to every layer >= l."""
        L, n, e = self.n_layers, self.n_features, self.d_layer_out
        W = self.W_enc_.new_zeros(L * n, L * e)
        for l, W_l in enumerate(self.W_dec_):
            W[l * n : (l + 1) * n, l * e :] = W_l.flatten(1)
        return W

    def pre_acts(self, x: torch.Tensor) -> torch.Tensor:
        """Normalised inputs (N, L d) -> pre-activations (N, L, n)."""
        return torch.einsum("bld,ldn->bln", x.view(len(x), self.n_layers, self.d_layer_in), self.W_enc_) + self.b_enc

    def encode_normalized(self, x: torch.Tensor, **kw: Any) -> torch.Tensor:
        h = self.pre_acts(x)
        return (h * (h > self.threshold)).flatten(1)

    def decode_normalized(self, f: torch.Tensor) -> torch.Tensor:
        L, n, e = self.n_layers, self.n_features, self.d_layer_out
        a = f.view(len(f), L, n)
        y = self.b_dec.flatten().expand(len(f), L * e).clone()
        for l, W_l in enumerate(self.W_dec_):
            y[:, l * e :] += a[:, l] @ W_l.flatten(1)
        return y

    def skip_path(self, x: torch.Tensor) -> torch.Tensor | float:
        """The per-layer linear term x^m W_skip^m^T, (N, L d_out) (0 without ``skip``)."""
        if self.W_skip is None:
            return 0.0
        return torch.einsum("bld,led->ble", x.view(len(x), self.n_layers, self.d_layer_in), self.W_skip).flatten(1)

    def reconstruct_normalized(self, xn: torch.Tensor, **kw: Any) -> torch.Tensor:
        return self.decode_normalized(self.encode_normalized(xn)) + self.skip_path(xn)

    def decoder_norms(self) -> torch.Tensor:
        """(L, n): each feature's decoder norm over the concatenation of the layers it writes to."""
        return torch.stack([W_l.flatten(1).norm(dim=1) for W_l in self.W_dec_])

    def training_step(self, batch: TrainBatch, state: TrainState) -> StepOutput:
        h = self.pre_acts(batch.x)
        theta = self.threshold
        a = _JumpReLU.apply(h, theta, float(self.p["bandwidth"]))
        y_hat = self.decode_normalized(a.flatten(1)) + self.skip_path(batch.x)
        mse = (y_hat - batch.y).pow(2).sum(1).mean()
        norms = self.decoder_norms()
        sparsity = torch.tanh(float(self.p["sparsity_c"]) * norms * a).sum((1, 2)).mean()
        preact = (F.relu(theta - h) * norms).sum((1, 2)).mean()
        lam = float(self.p["sparsity_coeff"]) * warmup(state, float(self.p["sparsity_warmup"]))
        loss = mse + lam * sparsity + float(self.p["preact_coeff"]) * preact
        active = a > 0
        return StepOutput(loss, y_hat, active.any(0).flatten(), float(active.sum()) / len(a),
                          {"mse": mse.item(), "sparsity": sparsity.item(), "preact": preact.item()})

    @torch.no_grad()
    def init_from_data(self, x: torch.Tensor, y: torch.Tensor, generator: torch.Generator) -> None:
        """b_dec^m = mean of y^m; b_enc so that each feature's pre-activation passes its threshold on
        ``init_density`` of the sample rows (normalised ``x`` (M, L d), ``y`` (M, L d_out))."""
        self.b_dec.copy_(y.view(len(y), self.n_layers, self.d_layer_out).mean(0))
        density = float(self.p["init_density"])
        if not 0 < density < 1:
            raise InterpError(f"init_density must be in (0, 1), got {density}.")
        h = torch.einsum("bld,ldn->bln", x.view(len(x), self.n_layers, self.d_layer_in), self.W_enc_)
        k = min(len(x), max(1, math.ceil((1 - density) * len(x))))
        self.b_enc.copy_(self.threshold - h.kthvalue(k, dim=0).values)

    # ---- per-layer views in raw coordinates (for circuits and attribution graphs) --------------
    def layer_of(self, l: int) -> int:
        """The model layer (block index) that index ``l`` reads, from ``hooks_in[l]``; ``l`` without hooks."""
        hooks = self.cfg.hooks_in
        if not hooks:
            return l
        m = re.match(r"blocks\.(\d+)\.", hooks[l])
        if m is None:
            raise InterpError(f"Cannot tell the model layer of hook {hooks[l]!r}.")
        return int(m.group(1))

    def _in_scale(self, l: int) -> torch.Tensor:
        return self.in_scale[l] if self.in_scale.dim() else self.in_scale

    def _out_scale(self, l: int) -> torch.Tensor:
        return self.out_scale[l] if self.out_scale.dim() else self.out_scale

    def layer_encoder(self, l: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(W (d, n), b (n,)) with pre-activations h^l = x W + b for the raw input x of layer index ``l``."""
        return self._in_scale(l) * self.W_enc_[l], self.b_enc[l]

    def pre_acts_layer(self, x: torch.Tensor, l: int) -> torch.Tensor:
        """Raw inputs (..., d) of layer index ``l`` -> pre-activations (..., n)."""
        W, b = self.layer_encoder(l)
        return x.to(W.dtype) @ W + b

    def encode_layer(self, x: torch.Tensor, l: int) -> torch.Tensor:
        """Raw inputs (..., d) of layer index ``l`` -> JumpReLU activations (..., n)."""
        h = self.pre_acts_layer(x, l)
        return h * (h > self.threshold[l])

    def layer_decoder(self, source: int, target: int) -> torch.Tensor:
        """(n, d_out): what features of layer index ``source`` write to the raw output of ``target`` (>= source)."""
        if not 0 <= source <= target < self.n_layers:
            raise InterpError(
                f"A CLT feature of layer index {source} writes only to layers {source}..{self.n_layers - 1}."
            )
        return self.W_dec_[source][:, target - source] / self._out_scale(target)

    def layer_bias(self, target: int) -> torch.Tensor:
        """(d_out,) the decoder bias of layer index ``target`` in raw output coordinates."""
        return self.b_dec[target] / self._out_scale(target)

    def layer_skip(self, l: int) -> torch.Tensor | None:
        """(d_out, d) raw-coordinate skip matrix of layer index ``l`` (y += x S^T), or None without ``skip``."""
        if self.W_skip is None:
            return None
        return self.W_skip[l] * (self._in_scale(l) / self._out_scale(l))
