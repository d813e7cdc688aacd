"""EleutherAI sparsify (1.x) coders: ``cfg.json`` + ``sae.safetensors`` (layout in ``interp.formats.interop``).

sparsify keeps one directory per hookpoint (a Hugging Face module path, see ``interp.formats.hookpoints``) inside
a run directory, and loads them with ``SparseCoder.load_many(run_dir)`` or ``load_from_disk(run_dir / hookpoint)``.
An export writes that layout: ``<path>/<hookpoint>/``. ``cfg.json`` also carries ``interp_hook_in`` /
``interp_hook_out`` / ``interp_model_name`` (sparsify drops keys it does not know), so a round trip keeps them; a
coder without them gets its hooks from its hookpoint.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch

from interp.dictionaries import Dictionary
from interp.errors import InterpError
from interp.formats.hookpoints import from_hookpoint, is_hook_name, to_hookpoint
from interp.formats.linear import LinearForm, dictionary_of, linear_of, save_format
from interp.io import load_tensors, read_json

log = logging.getLogger(__name__)

SPARSIFY_CFG, SPARSIFY_WEIGHTS = "cfg.json", "sae.safetensors"
TO_SPARSIFY = {
    "topk": "topk (transcode / skip_connection follow the params)",
    "gsae": "topk",
    "skip_transcoder": "topk with transcode and skip_connection",
}
"""interp architecture -> the sparsify coder it is written as (d_out must equal d_in)."""


# ---- sparsify ------------------------------------------------------------------------------------
def sparsify_hookpoint(d: Dictionary) -> str:
    """The module path sparsify hooks for ``d`` (raises when its hook has none; see ``interp.formats.hookpoints``)."""
    hook_in = d.cfg.hook_in
    if hook_in is None or not is_hook_name(hook_in):  # toy data, or a module path kept from an import
        if hook_in is None:
            log.warning("the dictionary names no hook; its sparsify directory is called 'sae'")
        return hook_in or "sae"
    model: dict[str, Any] = d.cfg.training.get("model") or {}
    if model.get("processing") == "transformer_lens":
        raise InterpError(
            "This dictionary was trained on activations of TransformerLens-processed weights (processing="
            "transformer_lens, centred writing weights), which the Hugging Face modules sparsify hooks never produce. "
            "Train it with processing default or none, or export to SAELens, which records the processing."
        )
    hook_out = d.cfg.hook_out if d.cfg.hook_out not in (None, hook_in) else None
    return to_hookpoint(hook_in, hook_out, model.get("architecture"))


def write_sparsify(d: Dictionary, path: Path, hookpoint: str | None = None) -> Path:
    """Write ``d`` to ``path/<hookpoint>/`` (sparsify's layout; the hookpoint from the dictionary's hook unless
    given); returns that directory."""
    hookpoint = hookpoint or sparsify_hookpoint(d)
    lin = linear_of(d, "sparsify", TO_SPARSIFY)
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
        "interp_hook_in": d.cfg.hook_in,
        "interp_hook_out": d.cfg.hook_out,
        "interp_model_name": d.cfg.model_name,
    }
    tensors = {"encoder.weight": lin.W_enc.T, "encoder.bias": b_enc, "W_dec": lin.W_dec, "b_dec": lin.b_dec}
    if lin.W_skip is not None:
        tensors["W_skip"] = lin.W_skip
    return save_format(path / hookpoint, SPARSIFY_CFG, SPARSIFY_WEIGHTS, cfg, tensors)


def _coder_dir(path: Path) -> Path:
    """``path`` itself when it holds a coder, else its one hookpoint subdirectory."""
    if (path / SPARSIFY_CFG).is_file() or not path.is_dir():
        return path
    coders = sorted(p for p in path.iterdir() if (p / SPARSIFY_CFG).is_file())
    if len(coders) != 1:
        raise InterpError(
            f"{path} holds no sparsify coder (cfg.json)" if not coders else
            f"{path} holds coders for {len(coders)} hookpoints ({', '.join(p.name for p in coders)}); pass one of "
            "those directories."
        )
    return coders[0]


def read_sparsify(path: Path) -> Dictionary:
    path = _coder_dir(path)
    cfg = read_json(path / SPARSIFY_CFG, "sparsify config")
    if cfg.get("activation", "topk") != "topk":
        raise InterpError(f"sparsify activation {cfg['activation']!r} has no interp counterpart; only 'topk' imports.")
    t = {k: v.double() for k, v in load_tensors(path / SPARSIFY_WEIGHTS).items()}
    if "W_dec" not in t:
        raise InterpError(f"{path / SPARSIFY_WEIGHTS} has no W_dec (saved without a decoder); cannot import.")
    W = t["encoder.weight"]
    transcoder = bool(cfg.get("transcode", False))
    b_in = torch.zeros(W.shape[1], dtype=W.dtype) if transcoder else t["b_dec"].clone()
    lin = LinearForm(
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
    if "interp_hook_in" in cfg:  # written by interp: the hooks as they were
        meta = {"hook_in": cfg["interp_hook_in"], "hook_out": cfg.get("interp_hook_out")}
    else:  # sparsify names a coder's directory after its hookpoint and keeps nothing else about provenance
        hooks = from_hookpoint(path.name, transcoder)
        if not hooks.mapped:
            log.warning("sparsify hookpoint %r has no TransformerLens hook equivalent (see interp.formats.hookpoints); "
                        "kept as the hook name", path.name)
        meta = {"hook_in": hooks.hook_in, "hook_out": hooks.hook_out}
    return dictionary_of(lin, {**meta, "model_name": cfg.get("interp_model_name")})
