"""Dictionaries to and from the on-disk formats of SAELens (6.x) and EleutherAI's sparsify (1.x).

Constraints this module was designed under:
- exact or refused: a conversion reproduces ``encode`` and ``forward`` of the source to float rounding, or
  raises :class:`InterpError` naming what has no counterpart and which architectures do convert;
- neither library is imported: the formats are written from their documented layouts (file names, tensor
  names, ``cfg.json`` keys), so interp needs neither installed;
- interp's ``scalar`` input normalisation is folded into the exported weights (a scalar commutes with the
  linear maps); per-token ``standardize`` has no exact counterpart and is refused.

The formats (x is a raw input row, d_in wide; n = d_sae):

SAELens: ``cfg.json`` + ``sae_weights.safetensors``. ``W_enc`` (d_in, n), ``W_dec`` (n, d_out), ``b_enc``
(n), ``b_dec`` (d_out). pre = (x - b_dec [if ``apply_b_dec_to_input``]) W_enc + b_enc, then
``standard``: ReLU; ``topk``: top ``k`` of pre, ReLU'd; ``jumprelu``: ReLU(pre) * (pre > ``threshold``);
``gated``: (pre_gate > 0) * ReLU(pre_mag) with ``b_gate`` for b_enc, pre_mag using W_enc * exp(``r_mag``)
and ``b_mag``; ``transcoder`` / ``jumprelu_transcoder`` never centre x, and their ``skip_`` variants add
x W_skip^T; ``matching_pursuit`` runs pursuit on x - b_dec with the rows of W_dec (no W_enc tensor).
Decode: f W_dec + b_dec.

sparsify: ``cfg.json`` (``activation``, ``expansion_factor``, ``normalize_decoder``, ``num_latents``,
``k``, ``multi_topk``, ``skip_connection``, ``transcode``, ``d_in``) + ``sae.safetensors`` in a directory
named after the hookpoint, with
``encoder.weight`` (n, d_in), ``encoder.bias``, ``W_dec`` (n, d_in), ``b_dec`` (d_in), optional ``W_skip``
(d_in, d_in). pre = (x - b_dec [unless ``transcode``]) encoder.weight^T + encoder.bias; f = top k of
ReLU(pre); y = f W_dec + b_dec + x W_skip^T. Outputs are d_in wide, so only d_out == d_in converts.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from interp.dictionaries import Dictionary, create, load_dictionary, save_dictionary
from interp.errors import InterpError
from interp.io import atomic_write_json, load_tensors, read_json, save_tensors

log = logging.getLogger(__name__)

FORMATS = ("interp", "saelens", "sparsify")
SAELENS_CFG, SAELENS_WEIGHTS = "cfg.json", "sae_weights.safetensors"
SPARSIFY_CFG, SPARSIFY_WEIGHTS = "cfg.json", "sae.safetensors"
SAELENS_FORMAT_VERSION = "6.0.0"
"""Written as ``metadata.sae_lens_version``: SAELens reads a config without a version >= 6 as its older
flat layout and rewrites it, so the version of the layout we write must be stated."""

TO_SAELENS = {
    "relu": "standard",
    "relu_normweighted": "standard",
    "transcoder": "transcoder (skip_transcoder with skip=True)",
    "topk": "topk",
    "gsae": "topk (gradient-guided selection needs gradients, which SAELens never sees)",
    "jumprelu": "jumprelu (jumprelu_transcoder, jumprelu_skip_transcoder for transcoders)",
    "gated": "gated",
    "batchtopk": "jumprelu (one threshold for every latent)",
    "matryoshka": "jumprelu (one threshold for every latent)",
    "mp": "matching_pursuit",
}
"""interp architecture -> the SAELens architecture it is written as."""
TO_SPARSIFY = {
    "topk": "topk (transcode / skip_connection follow the params)",
    "gsae": "topk",
    "skip_transcoder": "topk with transcode and skip_connection",
}
"""interp architecture -> the sparsify coder it is written as (d_out must equal d_in)."""


@dataclass(frozen=True)
class _Linear:
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


# ---- public API ----------------------------------------------------------------------------------
def export_dictionary(d: Dictionary, path: str | Path, fmt: str) -> Path:
    """Write ``d`` to directory ``path`` in format ``fmt`` (``saelens``, ``sparsify`` or ``interp``)."""
    _check_format(fmt)
    if fmt == "interp":
        return save_dictionary(d, path)
    if fmt == "saelens":
        return _write_saelens(d, Path(path))
    return _write_sparsify(d, Path(path))


def import_dictionary(path: str | Path, fmt: str, *, scaling_factor: float | None = None) -> Dictionary:
    """Read a dictionary directory written by SAELens, sparsify or interp.

    ``scaling_factor``: for SAELens dictionaries trained with ``normalize_activations=
    "expected_average_only_in"``, the constant their inputs were multiplied by (SAELens keeps it outside
    the directory); it becomes interp's ``scalar`` normalisation.
    """
    _check_format(fmt)
    path = Path(path)
    if fmt == "interp":
        return load_dictionary(path)
    if fmt == "saelens":
        return _read_saelens(path, scaling_factor)
    return _read_sparsify(path)


def convert(src: str | Path, src_fmt: str, out: str | Path, out_fmt: str) -> Path:
    """Read ``src`` in ``src_fmt`` and write it to ``out`` in ``out_fmt``."""
    return export_dictionary(import_dictionary(src, src_fmt), out, out_fmt)


def _check_format(fmt: str) -> None:
    if fmt not in FORMATS:
        raise InterpError(f"Unknown dictionary format {fmt!r}; use one of {', '.join(FORMATS)}.")


# ---- interp -> neutral form ----------------------------------------------------------------------
def _linear_of(d: Dictionary, target: str, supported: dict[str, str]) -> _Linear:
    """The raw-coordinate linear form of ``d``, with scalar normalisation folded in."""
    arch = d.cfg.architecture
    if arch not in supported:
        raise InterpError(
            f"A {arch!r} dictionary has no {target} counterpart. Architectures that convert to {target}: "
            f"{', '.join(sorted(supported))}."
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
    return _Linear(
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
def _dictionary_of(lin: _Linear, meta: dict[str, Any], scaling_factor: float | None = None) -> Dictionary:
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


# ---- SAELens -------------------------------------------------------------------------------------
def _saelens_metadata(d: Dictionary) -> dict[str, Any]:
    hook = d.cfg.hook_in
    layer = re.match(r"blocks\.(\d+)\.", hook or "")
    training = d.cfg.training
    return {
        "model_name": d.cfg.model_name,
        "hook_name": hook,
        "hook_layer": int(layer.group(1)) if layer else None,
        "hook_head_index": None,
        "hook_name_out": d.cfg.hook_out,
        "prepend_bos": True,
        "context_size": training.get("ctx_len"),
        "dataset_path": training.get("store") or None,
        "sae_lens_version": SAELENS_FORMAT_VERSION,
        "sae_lens_training_version": None,
        "interp_architecture": d.cfg.architecture,
        "interp_model_fingerprint": d.cfg.model_fingerprint,
    }


def _write_saelens(d: Dictionary, path: Path) -> Path:
    if d.cfg.architecture == "mp":
        return _write_saelens_mp(d, path)
    lin = _linear_of(d, "SAELens", TO_SAELENS)
    if lin.transcoder and lin.activation not in ("relu", "jumprelu"):
        raise InterpError(
            f"SAELens has transcoders only with ReLU or JumpReLU codes, not {lin.activation}. Write "
            "TopK transcoders to sparsify instead (when d_out == d_in)."
        )
    if lin.W_skip is not None and not lin.transcoder:
        raise InterpError("SAELens has skip connections only on transcoders; this autoencoder has W_skip.")
    cfg: dict[str, Any] = {
        "d_in": d.cfg.d_in,
        "d_sae": d.cfg.d_sae,
        "dtype": "float32",
        "device": "cpu",
        "normalize_activations": "none",
        "reshape_activations": "hook_z" if (d.cfg.hook_in or "").endswith("hook_z") else "none",
        "metadata": _saelens_metadata(d),
    }
    tensors = {"W_enc": lin.W_enc, "W_dec": lin.W_dec, "b_dec": lin.b_dec}
    if lin.transcoder:
        b_enc, _ = lin.centred_on(torch.zeros_like(lin.b_in))
        prefix = "jumprelu_" if lin.activation == "jumprelu" else ""
        cfg.update(architecture=f"{prefix}{'skip_' if lin.W_skip is not None else ''}transcoder")
        cfg.update(d_out=d.cfg.d_out, apply_b_dec_to_input=False)
        tensors["b_enc"] = b_enc
        if lin.W_skip is not None:
            tensors["W_skip"] = lin.W_skip
    else:
        centre_on_b_dec = torch.equal(lin.b_in, lin.b_dec) or bool(lin.b_in.any())
        b_enc, b_mag = lin.centred_on(lin.b_dec if centre_on_b_dec else lin.b_in)
        cfg["apply_b_dec_to_input"] = centre_on_b_dec
        arch = {"relu": "standard", "topk": "topk", "jumprelu": "jumprelu", "gated": "gated"}[lin.activation]
        cfg["architecture"] = arch
        if arch == "gated":
            assert lin.r_mag is not None and b_mag is not None
            tensors.update(b_gate=b_enc, r_mag=lin.r_mag, b_mag=b_mag)
        else:
            tensors["b_enc"] = b_enc
        if arch == "topk":
            cfg.update(k=lin.k, rescale_acts_by_decoder_norm=False)
    if lin.threshold is not None:
        tensors["threshold"] = lin.threshold
    return _save(path, SAELENS_CFG, SAELENS_WEIGHTS, cfg, tensors)


def _write_saelens_mp(d: Dictionary, path: Path) -> Path:
    if d.cfg.normalization != "none" and (float(d.in_scale) != 1.0 or float(d.out_scale) != 1.0):
        raise InterpError(
            "Matching pursuit codes scale with the input, so a normalised mp dictionary cannot be folded "
            "into raw-coordinate weights; retrain it with normalization='none' to export it."
        )
    threshold = d.p["threshold"]
    cfg = {
        "architecture": "matching_pursuit",
        "d_in": d.cfg.d_in,
        "d_sae": d.cfg.d_sae,
        "dtype": "float32",
        "device": "cpu",
        "apply_b_dec_to_input": True,
        "normalize_activations": "none",
        "reshape_activations": "none",
        # interp's fixed-k pursuit is SAELens's with both early stops off and k iterations
        "residual_threshold": float(threshold) if threshold is not None else 0.0,
        "max_iterations": int(d.p["max_steps"] or 4 * d.p["k"]) if threshold is not None else int(d.p["k"]),
        "stop_on_duplicate_support": False,
        "metadata": _saelens_metadata(d),
    }
    p = dict(d.named_parameters())
    tensors = {"W_dec": p["D"].detach(), "b_dec": p["b_pre"].detach()}
    return _save(path, SAELENS_CFG, SAELENS_WEIGHTS, cfg, tensors)


def _read_saelens(path: Path, scaling_factor: float | None) -> Dictionary:
    cfg = read_json(path / SAELENS_CFG, "SAELens config")
    t = {k: v.double() for k, v in load_tensors(path / SAELENS_WEIGHTS).items()}
    meta = {**{k: v for k, v in cfg.items() if k != "metadata"}, **(cfg.get("metadata") or {})}
    arch = cfg.get("architecture", "standard")
    if cfg.get("activation_fn") == "topk" or (cfg.get("activation_fn_kwargs") or {}).get("k"):
        arch = "topk"  # SAELens < 6 wrote TopK as a standard SAE with activation_fn "topk"
    norm = cfg.get("normalize_activations") or "none"
    if norm is True:
        norm = "expected_average_only_in"
    if norm not in ("none", False, "expected_average_only_in"):
        raise InterpError(
            f"SAELens normalize_activations={norm!r} has no exact interp counterpart (only 'none' and "
            "'expected_average_only_in' convert)."
        )
    if norm == "expected_average_only_in" and scaling_factor is None:
        raise InterpError(
            "This SAELens dictionary expects inputs multiplied by a constant it does not store "
            "(normalize_activations='expected_average_only_in'); pass scaling_factor= (the SAE's "
            "norm_scaling_factor) to import it."
        )
    if "scaling_factor" in t and not torch.allclose(t["scaling_factor"], torch.ones(())):
        raise InterpError("SAELens finetuning scaling factors are not supported; fold them into W_dec first.")
    hooks = {"hook_in": meta.get("hook_name"), "hook_out": meta.get("hook_name_out"), **meta}
    factor = scaling_factor if norm == "expected_average_only_in" else None
    if arch == "matching_pursuit":
        return _read_saelens_mp(cfg, t, hooks)
    return _dictionary_of(_saelens_linear(arch, cfg, t), hooks, factor)


_SAELENS_READS = (
    "standard",
    "topk",
    "jumprelu",
    "gated",
    "transcoder",
    "skip_transcoder",
    "jumprelu_transcoder",
    "jumprelu_skip_transcoder",
    "matching_pursuit",
)


def _saelens_linear(arch: str, cfg: dict[str, Any], t: dict[str, torch.Tensor]) -> _Linear:
    if arch not in _SAELENS_READS:
        raise InterpError(
            f"SAELens architecture {arch!r} has no interp counterpart. Architectures that import: "
            f"{', '.join(_SAELENS_READS)}."
        )
    transcoder = arch.endswith("transcoder")
    W_enc, W_dec, b_dec = t["W_enc"], t["W_dec"], t["b_dec"]
    centred = cfg.get("apply_b_dec_to_input", True) and not transcoder
    b_in = b_dec.clone() if centred else torch.zeros(W_enc.shape[0], dtype=W_enc.dtype)
    b_enc = t["b_gate"] if arch == "gated" else t["b_enc"]
    k = None
    if arch == "topk":
        k = int(cfg.get("k") or cfg["activation_fn_kwargs"]["k"])
        if cfg.get("rescale_acts_by_decoder_norm"):
            # selection on pre * ||d_i|| and decoding with d_i / ||d_i||: fold the norms into the encoder
            norms = W_dec.norm(dim=1)
            W_enc, b_enc, W_dec = W_enc * norms, b_enc * norms, W_dec / norms[:, None]
    activation = {
        "standard": "relu",
        "topk": "topk",
        "gated": "gated",
        "transcoder": "relu",
        "skip_transcoder": "relu",
    }.get(arch, "jumprelu")
    return _Linear(
        activation=activation,
        W_enc=W_enc,
        b_enc=b_enc,
        W_dec=W_dec,
        b_dec=b_dec,
        b_in=b_in,
        transcoder=transcoder,
        W_skip=t.get("W_skip"),
        k=k,
        threshold=t.get("threshold"),
        r_mag=t.get("r_mag"),
        b_mag=t.get("b_mag"),
    )


def _read_saelens_mp(cfg: dict[str, Any], t: dict[str, torch.Tensor], meta: dict[str, Any]) -> Dictionary:
    if cfg.get("stop_on_duplicate_support", True):
        raise InterpError(
            "This SAELens matching-pursuit SAE stops a row once its support repeats "
            "(stop_on_duplicate_support), which interp's pursuit does not do; set it to false in cfg.json "
            "to import (pursuit then runs to residual_threshold or max_iterations)."
        )
    d_sae, d_in = t["W_dec"].shape
    steps = int(cfg.get("max_iterations") or d_in)
    threshold = float(cfg.get("residual_threshold", 0.0))
    params = {"k": steps} if threshold <= 0 else {"k": steps, "threshold": threshold, "max_steps": steps}
    d = create("mp", d_in, d_sae, hook_in=meta.get("hook_in"), model_name=meta.get("model_name"), **params)
    b = t["b_dec"] if cfg.get("apply_b_dec_to_input", True) else torch.zeros(d_in)
    d.load_state_dict({**d.state_dict(), "D": t["W_dec"].float(), "b_pre": b.float()})
    return d


# ---- sparsify ------------------------------------------------------------------------------------
def _write_sparsify(d: Dictionary, path: Path) -> Path:
    lin = _linear_of(d, "sparsify", TO_SPARSIFY)
    if d.cfg.d_out != d.cfg.d_in:
        raise InterpError(f"sparsify coders output d_in values; this dictionary maps {d.cfg.d_in} to {d.cfg.d_out}.")
    b_enc, _ = lin.centred_on(torch.zeros_like(lin.b_in) if lin.transcoder else lin.b_dec)
    n = d.cfg.d_sae
    cfg = {
        "activation": "topk",
        "expansion_factor": max(1, n // d.cfg.d_in),
        "normalize_decoder": True,
        "num_latents": n,
        "k": lin.k,
        "multi_topk": False,
        "skip_connection": lin.W_skip is not None,
        "transcode": lin.transcoder,
        "d_in": d.cfg.d_in,
    }
    tensors = {"encoder.weight": lin.W_enc.T, "encoder.bias": b_enc, "W_dec": lin.W_dec, "b_dec": lin.b_dec}
    if lin.W_skip is not None:
        tensors["W_skip"] = lin.W_skip
    return _save(path, SPARSIFY_CFG, SPARSIFY_WEIGHTS, cfg, tensors)


def _read_sparsify(path: Path) -> Dictionary:
    cfg = read_json(path / SPARSIFY_CFG, "sparsify config")
    if cfg.get("activation", "topk") != "topk":
        raise InterpError(f"sparsify activation {cfg['activation']!r} has no interp counterpart; only 'topk' imports.")
    t = {k: v.double() for k, v in load_tensors(path / SPARSIFY_WEIGHTS).items()}
    if "W_dec" not in t:
        raise InterpError(f"{path / SPARSIFY_WEIGHTS} has no W_dec (saved without a decoder); cannot import.")
    W = t["encoder.weight"]
    transcoder = bool(cfg.get("transcode", False))
    b_in = torch.zeros(W.shape[1], dtype=W.dtype) if transcoder else t["b_dec"].clone()
    lin = _Linear(
        "topk",
        W.T,
        t["encoder.bias"],
        t["W_dec"],
        t["b_dec"],
        b_in,
        transcoder,
        W_skip=t.get("W_skip"),
        k=int(cfg["k"]),
    )
    # sparsify names a coder's directory after its hookpoint and keeps nothing else about provenance
    return _dictionary_of(lin, {"hook_in": path.name})


# ---- writing -------------------------------------------------------------------------------------
def _save(path: Path, cfg_name: str, weights_name: str, cfg: dict[str, Any], tensors: dict[str, torch.Tensor]) -> Path:
    """Weights first, then the config (atomically), float32 and contiguous."""
    path.mkdir(parents=True, exist_ok=True)
    save_tensors(path / weights_name, {k: v.detach().float().cpu().contiguous() for k, v in tensors.items()})
    atomic_write_json(path / cfg_name, cfg)
    return path


__all__ = ["FORMATS", "TO_SAELENS", "TO_SPARSIFY", "convert", "export_dictionary", "import_dictionary"]
