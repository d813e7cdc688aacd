"""EleutherAI sparsify (1.x) coders: ``cfg.json`` + ``sae.safetensors`` (layout in ``interp.formats.interop``)."""

from __future__ import annotations

from pathlib import Path

import torch

from interp.dictionaries import Dictionary
from interp.errors import InterpError
from interp.formats.linear import LinearForm, dictionary_of, linear_of, save_format
from interp.io import load_tensors, read_json

SPARSIFY_CFG, SPARSIFY_WEIGHTS = "cfg.json", "sae.safetensors"
TO_SPARSIFY = {
    "topk": "topk (transcode / skip_connection follow the params)",
    "gsae": "topk",
    "skip_transcoder": "topk with transcode and skip_connection",
}
"""interp architecture -> the sparsify coder it is written as (d_out must equal d_in)."""


# ---- sparsify ------------------------------------------------------------------------------------
def write_sparsify(d: Dictionary, path: Path) -> Path:
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
    }
    tensors = {"encoder.weight": lin.W_enc.T, "encoder.bias": b_enc, "W_dec": lin.W_dec, "b_dec": lin.b_dec}
    if lin.W_skip is not None:
        tensors["W_skip"] = lin.W_skip
    return save_format(path, SPARSIFY_CFG, SPARSIFY_WEIGHTS, cfg, tensors)


def read_sparsify(path: Path) -> Dictionary:
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
    # sparsify names a coder's directory after its hookpoint and keeps nothing else about provenance
    return dictionary_of(lin, {"hook_in": path.name})
