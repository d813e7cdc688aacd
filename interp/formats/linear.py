"""The neutral form every dictionary conversion passes through: a linear encoder in raw input coordinates.

``LinearForm``: pre = (x - b_in) W_enc + b_enc; f = activation(pre); y = f W_dec + b_dec + x W_skip^T.
:func:`linear_of` reads an interp dictionary into it (folding ``scalar`` normalisation into the weights),
:func:`dictionary_of` builds the interp dictionary that computes it, and :func:`save_format` writes another
tool's weights and config files.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from interp.dictionaries import Dictionary, create
from interp.errors import InterpError
from interp.io import atomic_write_json, save_tensors

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LinearForm:
    """A linear-encoder dictionary in raw input coordinates (the neutral form every conversion passes).

    pre = (x - b_in) W_enc + b_enc; f = activation(pre); y = f W_dec + b_dec + x W_skip^T.
    """

    activation: str
    """``relu``, ``topk``, ``jumprelu`` or ``gated``."""
    W_enc: torch.Tensor
    """(d_in, n)."""
    b_enc: torch.Tensor
    """(n,); the gate bias for ``gated``."""
    W_dec: torch.Tensor
    """(n, d_out)."""
    b_dec: torch.Tensor
    """(d_out,)."""
    b_in: torch.Tensor
    """(d_in,) centring of the input (zeros when the input is not centred)."""
    transcoder: bool
    """Reads one hook and predicts another (its b_in is not tied to b_dec)."""
    W_skip: torch.Tensor | None = None
    """(d_out, d_in) linear skip path."""
    k: int | None = None
    """Active latents per row, for ``topk``."""
    threshold: torch.Tensor | None = None
    """(n,) JumpReLU thresholds, for ``jumprelu``."""
    r_mag: torch.Tensor | None = None
    """(n,) log scale of the magnitude path, for ``gated``."""
    b_mag: torch.Tensor | None = None
    """(n,) magnitude-path bias, for ``gated``."""

    def centred_on(self, c: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(b_enc, b_mag) such that (x - c) W_enc + b_enc equals this pre-activation (exact in maths).

        Returns the stored biases untouched when ``c`` is already the centring, so unnormalised round
        trips stay bit-exact.
        """
        if torch.equal(c, self.b_in):
            return self.b_enc, self.b_mag
        shift = (c - self.b_in).double()
        b_enc = (self.b_enc.double() + shift @ self.W_enc.double()).to(self.b_enc.dtype)
        b_mag = None
        if self.b_mag is not None and self.r_mag is not None:
            W_mag = self.W_enc.double() * self.r_mag.double().exp()
            b_mag = (self.b_mag.double() + shift @ W_mag).to(self.b_mag.dtype)
        return b_enc, b_mag


# ---- interp -> neutral form ----------------------------------------------------------------------
def linear_of(d: Dictionary, target: str, supported: dict[str, str]) -> LinearForm:
    """The raw-coordinate linear form of ``d``, with scalar normalisation folded in."""
    arch = d.cfg.architecture
    if arch not in supported:
        raise InterpError(
            f"A {arch!r} dictionary has no {target} counterpart. Architectures that convert to {target}: "
            f"{', '.join(sorted(supported))}."
        )
    if len(d.cfg.hooks_in) > 1 or len(d.cfg.hooks_out) > 1:
        raise InterpError(
            f"This {arch!r} dictionary reads several hooks ({d.cfg.hook_in}); {target} dictionaries read one."
        )
    if d.cfg.normalization == "standardize":
        raise InterpError(
            f"Per-token 'standardize' normalisation has no exact {target} counterpart. Retrain with "
            "normalization='scalar' (folded into the weights on export) or 'none'."
        )
    p = dict(d.named_parameters())
    s_in, s_out = float(d.in_scale), float(d.out_scale)
    W_enc = p["W_enc_"].detach() * s_in
    if arch == "relu_normweighted" or d.p.get("norm_weighted"):
        b_in = torch.zeros(d.cfg.d_in)
    else:
        b_in = (p["b_in"] if "b_in" in p else p["b_dec"]).detach() / s_in
    W_skip = p["W_skip"].detach() * (s_in / s_out) if "W_skip" in p else None
    activation, k, threshold = "relu", None, None
    if arch in ("topk", "gsae", "skip_transcoder"):
        activation, k = "topk", int(d.p["k"])
    elif arch == "jumprelu":
        activation, threshold = "jumprelu", p["log_threshold"].detach().exp()
    elif arch in ("batchtopk", "matryoshka"):
        theta = float(d.state_dict()["threshold"])
        if theta < 0:
            raise InterpError(
                f"This {arch} dictionary has no inference threshold yet (it was never trained); train it first."
            )
        activation, threshold = "jumprelu", torch.full((d.cfg.d_sae,), theta)
    elif arch == "gated":
        activation = "gated"
    return LinearForm(
        activation=activation,
        W_enc=W_enc,
        b_enc=p["b_enc"].detach().clone(),
        W_dec=p["W_dec_"].detach() / s_out,
        b_dec=p["b_dec"].detach() / s_out,
        b_in=b_in,
        transcoder=d.cfg.is_transcoder,
        W_skip=W_skip,
        k=k,
        threshold=threshold,
        r_mag=p["r_mag"].detach().clone() if "r_mag" in p else None,
        b_mag=p["b_mag"].detach().clone() if "b_mag" in p else None,
    )


# ---- neutral form -> interp ----------------------------------------------------------------------
def dictionary_of(lin: LinearForm, meta: dict[str, Any], scaling_factor: float | None = None) -> Dictionary:
    """An interp dictionary computing ``lin`` (in the coordinates ``scaling_factor`` maps raw x to)."""
    d_in, n = lin.W_enc.shape
    d_out = lin.W_dec.shape[1]
    unit = bool(torch.allclose(lin.W_dec.norm(dim=1), torch.ones(n, dtype=lin.W_dec.dtype), atol=1e-4))
    params: dict[str, Any] = {}
    if lin.activation == "relu":
        arch = "transcoder" if lin.transcoder else ("relu" if unit else "relu_normweighted")
        params = {"norm_weighted": not unit, "skip": lin.W_skip is not None}
    elif lin.activation == "topk":
        arch = "skip_transcoder" if lin.transcoder and lin.W_skip is not None else "topk"
        params = {"k": lin.k, "transcoder": lin.transcoder, "skip": lin.W_skip is not None}
    elif lin.activation == "jumprelu":
        arch, params = "jumprelu", {"transcoder": lin.transcoder, "skip": lin.W_skip is not None}
    else:
        arch = "gated"
    d = create(
        arch,
        d_in,
        n,
        d_out=d_out,
        hook_in=meta.get("hook_in"),
        hook_out=meta.get("hook_out"),
        model_name=meta.get("model_name"),
        normalization="scalar" if scaling_factor is not None else "none",
        **params,
    )
    state = {k: v.clone() for k, v in d.state_dict().items()}
    tied = "b_in" not in state
    centre = torch.zeros(d_in) if params.get("norm_weighted") else lin.b_dec if tied else lin.b_in
    b_enc, b_mag = lin.centred_on(centre.to(lin.b_in.dtype))
    state.update(W_enc_=lin.W_enc, b_enc=b_enc, W_dec_=lin.W_dec, b_dec=lin.b_dec)
    if not tied:
        state["b_in"] = lin.b_in
    if lin.W_skip is not None:
        state["W_skip"] = lin.W_skip
    if lin.threshold is not None:
        if (lin.threshold <= 0).any():
            log.warning("non-positive JumpReLU thresholds act as 0 (plain ReLU); stored as log(0) = -inf")
        state["log_threshold"] = lin.threshold.clamp_min(0).log()
    if lin.r_mag is not None and b_mag is not None:
        state.update(r_mag=lin.r_mag, b_mag=b_mag)
    if scaling_factor is not None:
        state.update(in_scale=torch.tensor(float(scaling_factor)), out_scale=torch.tensor(float(scaling_factor)))
    d.load_state_dict({k: v.float().contiguous() for k, v in state.items()})
    return d


def save_format(
    path: Path, cfg_name: str, weights_name: str, cfg: dict[str, Any], tensors: dict[str, torch.Tensor]
) -> Path:
    """Weights first, then the config (atomically), float32 and contiguous."""
    path.mkdir(parents=True, exist_ok=True)
    save_tensors(path / weights_name, {k: v.detach().float().cpu().contiguous() for k, v in tensors.items()})
    atomic_write_json(path / cfg_name, cfg)
    return path
