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
named after the hookpoint (a Hugging Face module path; mapped from and to hook names in
``interp.formats.hookpoints``), with
``encoder.weight`` (n, d_in), ``encoder.bias``, ``W_dec`` (n, d_in), ``b_dec`` (d_in), optional ``W_skip``
(d_in, d_in). pre = (x - b_dec [unless ``transcode``]) encoder.weight^T + encoder.bias; f = top k of
ReLU(pre); y = f W_dec + b_dec + x W_skip^T. Outputs are d_in wide, so only d_out == d_in converts.
"""

from __future__ import annotations

import logging
from pathlib import Path

from interp.dictionaries import Dictionary, load_dictionary, save_dictionary
from interp.errors import InterpError
from interp.formats.saelens import read_saelens, write_saelens
from interp.formats.sparsify import read_sparsify, write_sparsify

log = logging.getLogger(__name__)

FORMATS = ("interp", "saelens", "sparsify")


# ---- public API ----------------------------------------------------------------------------------
def export_dictionary(d: Dictionary, path: str | Path, fmt: str, *, hookpoint: str | None = None) -> Path:
    """Write ``d`` to directory ``path`` in format ``fmt`` (``saelens``, ``sparsify`` or ``interp``); returns the
    directory holding it. sparsify's layout is one directory per hookpoint: ``path/<hookpoint>/``, the hookpoint
    (a Hugging Face module path) derived from the dictionary's hook unless ``hookpoint`` is given."""
    _check_format(fmt)
    if fmt == "interp":
        return save_dictionary(d, path)
    if fmt == "saelens":
        return write_saelens(d, Path(path))
    return write_sparsify(d, Path(path), hookpoint)


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
        return read_saelens(path, scaling_factor)
    return read_sparsify(path)


def convert(src: str | Path, src_fmt: str, out: str | Path, out_fmt: str) -> Path:
    """Read ``src`` in ``src_fmt`` and write it to ``out`` in ``out_fmt``."""
    return export_dictionary(import_dictionary(src, src_fmt), out, out_fmt)


def _check_format(fmt: str) -> None:
    if fmt not in FORMATS:
        raise InterpError(f"Unknown dictionary format {fmt!r}; use one of {', '.join(FORMATS)}.")


