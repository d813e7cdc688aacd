"""SAELens (6.x) dictionaries: ``cfg.json`` + ``sae_weights.safetensors`` (layout in ``interp.formats.interop``).

What a SAELens user needs besides the weights is in ``cfg["metadata"]``: ``hook_name``, ``context_size`` (the
training data's context length, which ``ActivationsStore.from_sae`` requires), ``prepend_bos``, and the model:
``model_name`` with ``model_from_pretrained_kwargs``, the weight processing the activations were computed under
(interp's ``processing``, as the flags of ``HookedTransformer.from_pretrained``; SAELens passes them to
``from_pretrained_no_processing``, so all four are written). For a hub model ``model_name`` is its name. The demo
model and local checkpoints are written as the checkpoint's absolute path, which TransformerLens's
``HookedTransformer.from_pretrained`` does not accept (it loads official names only); ``interp_model_loading``
says how to load it instead: ``TransformerBridge.boot_transformers(model_name)`` then
``enable_compatibility_mode(**model_from_pretrained_kwargs)`` (TransformerLens >= 3), which gives the same
activations interp trained on (checked by ``bench/peer_formats.py``).
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any

import torch

from interp.activations.store import ActivationStore
from interp.dictionaries import Dictionary, create
from interp.errors import InterpError
from interp.formats.linear import LinearForm, dictionary_of, linear_of, save_format
from interp.io import load_tensors, read_json
from interp.model import DEMO_DIR, DEMO_NAME, PROCESSING

log = logging.getLogger(__name__)

SAELENS_CFG, SAELENS_WEIGHTS = "cfg.json", "sae_weights.safetensors"
SAELENS_FORMAT_VERSION = "6.0.0"
"""Written as ``metadata.sae_lens_version``: SAELens reads a config without a version >= 6 as its older
flat layout and rewrites it, so the version of the layout we write must be stated."""


TO_SAELENS = {
    "relu": "standard",
    "relu_normweighted": "standard",
    "relu_unitnorm": "standard",
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


FLAGS = ("fold_ln", "center_writing_weights", "center_unembed", "fold_value_biases")
PRETRAINED_KWARGS = {
    name: {flag: not flags.get("no_processing", False) and bool(flags[flag]) for flag in FLAGS}
    for name, flags in PROCESSING.items()
}
"""interp ``processing`` -> SAELens ``model_from_pretrained_kwargs`` (HookedTransformer.from_pretrained flags)."""

LOCAL_LOADING = (
    "model_name is a local checkpoint, which HookedTransformer.from_pretrained does not load (official names only). "
    "Load it with TransformerLens >= 3: from transformer_lens.model_bridge import TransformerBridge; "
    "model = TransformerBridge.boot_transformers(model_name); "
    "model.enable_compatibility_mode(**model_from_pretrained_kwargs). Its hooks hold the activations this SAE was "
    "trained on, and it can be passed to ActivationsStore.from_sae."
)


# ---- SAELens -------------------------------------------------------------------------------------
def _training_facts(d: Dictionary) -> tuple[int | None, str | None]:
    """(context length, processing) of the data ``d`` was trained on: from its training record, else from the
    store it names (dictionaries trained before interp recorded them), else None."""
    training = d.cfg.training
    ctx_len, processing = training.get("ctx_len"), (training.get("model") or {}).get("processing")
    store = training.get("store")
    if (ctx_len is None or processing is None) and store and Path(store, "manifest.json").is_file():
        try:
            manifest = ActivationStore(store).manifest
        except InterpError:
            manifest = {}
        ctx_len = ctx_len if ctx_len is not None else manifest.get("ctx_len")
        processing = processing or manifest.get("model", {}).get("processing")
    return ctx_len, processing


def _local_checkpoint(name: str | None) -> Path | None:
    """The checkpoint directory of the demo model or of a local path; None for a hub name."""
    if name == DEMO_NAME:
        return Path(DEMO_DIR).resolve()
    if name and Path(name).expanduser().is_dir():
        return Path(name).expanduser().resolve()
    return None


def _saelens_metadata(d: Dictionary) -> dict[str, Any]:
    hook = d.cfg.hook_in
    layer = re.match(r"blocks\.(\d+)\.", hook or "")
    training = d.cfg.training
    ctx_len, processing = _training_facts(d)
    if ctx_len is None:
        log.warning("the training context length of this dictionary is unknown (it was not trained on a store or "
                    "a model); SAELens's ActivationsStore.from_sae will need context_size= passed")
    if processing is None and d.cfg.model_name:
        log.warning("the weight processing this dictionary was trained under is unknown; "
                    "model_from_pretrained_kwargs is left empty")
    local = _local_checkpoint(d.cfg.model_name)
    return {
        "model_name": str(local) if local else d.cfg.model_name,
        "model_class_name": "HookedTransformer",
        "model_from_pretrained_kwargs": PRETRAINED_KWARGS[processing] if processing in PRETRAINED_KWARGS else None,
        "hook_name": hook,
        "hook_layer": int(layer.group(1)) if layer else None,
        "hook_head_index": None,
        "hook_name_out": d.cfg.hook_out,
        "prepend_bos": True,
        "context_size": ctx_len,
        "dataset_path": training.get("store") or None,
        "sae_lens_version": SAELENS_FORMAT_VERSION,
        "sae_lens_training_version": None,
        "interp_architecture": d.cfg.architecture,
        "interp_model_name": d.cfg.model_name,
        "interp_model_fingerprint": d.cfg.model_fingerprint,
        "interp_processing": processing,
        "interp_model_loading": LOCAL_LOADING if local else None,
    }


def write_saelens(d: Dictionary, path: Path) -> Path:
    if d.cfg.architecture == "mp":
        return _write_saelens_mp(d, path)
    lin = linear_of(d, "SAELens", TO_SAELENS)
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
    return save_format(path, SAELENS_CFG, SAELENS_WEIGHTS, cfg, tensors)


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
    return save_format(path, SAELENS_CFG, SAELENS_WEIGHTS, cfg, tensors)


def read_saelens(path: Path, scaling_factor: float | None) -> Dictionary:
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
    hooks = {"hook_in": meta.get("hook_name"), "hook_out": meta.get("hook_name_out"), **meta,
             "model_name": meta.get("interp_model_name") or meta.get("model_name")}
    factor = scaling_factor if norm == "expected_average_only_in" else None
    if arch == "matching_pursuit":
        return _read_saelens_mp(cfg, t, hooks)
    return dictionary_of(_saelens_linear(arch, cfg, t), hooks, factor)


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


def _saelens_linear(arch: str, cfg: dict[str, Any], t: dict[str, torch.Tensor]) -> LinearForm:
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
    return LinearForm(
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
