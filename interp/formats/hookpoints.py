"""TransformerLens hook names <-> the Hugging Face module paths that sparsify calls hookpoints.

sparsify hooks a module of ``model.base_model`` (``h.3`` in GPT-2, ``layers.3`` in Llama and GPT-NeoX) and
trains on its output (a transcoder: its input -> its output). A TransformerLens hook maps to a module only where
the two hold the same numbers, checked against the modules in ``tests/test_hookpoints.py``:

- ``blocks.l.hook_resid_post``: the output of block ``l`` (``<layers>.l``);
- ``blocks.l.hook_resid_pre``: the output of block ``l-1``; for l = 0, of the embedding module (GPT-2 ``drop``,
  GPT-NeoX ``emb_dropout``, Llama ``embed_tokens``);
- ``blocks.l.hook_mlp_out``: the output of ``<layers>.l.<mlp>``;
- ``blocks.l.hook_attn_out``: the output of ``<layers>.l.<attn>``.

``hook_resid_mid`` is the input of the block's second norm, not any module's output; LayerNorm hooks
(``ln2.hook_normalized``) are taken before the norm's affine weights, which every HF module applies; per-head
hooks (``attn.hook_z``) are reshaped inside the attention module. Those have no module equivalent and are
refused on export. A transcoder maps only when its input and output are one module's input and output: a whole
block (``hook_resid_pre`` -> ``hook_resid_post`` of one layer).

Hookpoints are written relative to ``base_model``, as sparsify writes them; on import the full path
(``transformer.h.3``, ``model.layers.3``, ``gpt_neox.layers.3``) is read too.
"""

from __future__ import annotations

import re
from typing import NamedTuple

from interp.errors import InterpError


class ModulePaths(NamedTuple):
    """Where an architecture keeps its modules, relative to its ``base_model``."""

    base: str
    """The base model's attribute in the causal-LM wrapper (``transformer``, ``model``, ``gpt_neox``)."""
    layers: str
    """The list of blocks (``h``, ``layers``)."""
    attn: str
    """The attention module inside a block."""
    mlp: str
    """The MLP module inside a block."""
    embed: str | None
    """The module whose output is the residual stream before block 0 (None when no module's is)."""


_LLAMA = ModulePaths("model", "layers", "self_attn", "mlp", "embed_tokens")
ARCHITECTURES = {
    "GPT2LMHeadModel": ModulePaths("transformer", "h", "attn", "mlp", "drop"),
    "GPTNeoForCausalLM": ModulePaths("transformer", "h", "attn", "mlp", "drop"),
    "GPTNeoXForCausalLM": ModulePaths("gpt_neox", "layers", "attention", "mlp", "emb_dropout"),
    "LlamaForCausalLM": _LLAMA,
    "MistralForCausalLM": _LLAMA,
    "Qwen2ForCausalLM": _LLAMA,
    "Qwen3ForCausalLM": _LLAMA,
}
"""Hugging Face architecture (``config.architectures[0]``) -> its module paths."""

_HOOK = re.compile(r"blocks\.(\d+)\.hook_(resid_post|resid_pre|mlp_out|attn_out)")
_MODULE = re.compile(r"(?:(?:transformer|model|gpt_neox)\.)?(?:h|layers)\.(\d+)(?:\.(mlp|attn|self_attn|attention))?")
_EMBED = {p.embed for p in ARCHITECTURES.values() if p.embed}
MAPPED = "blocks.l.hook_resid_post, blocks.l.hook_resid_pre, blocks.l.hook_mlp_out, blocks.l.hook_attn_out"


def is_hook_name(name: str) -> bool:
    """True for a TransformerLens-style hook name (``blocks.3.hook_resid_post``, ``hook_embed`` ...)."""
    return name.startswith(("blocks.", "hook_"))


def to_hookpoint(hook_in: str, hook_out: str | None, architecture: str | None) -> str:
    """The sparsify hookpoint of a dictionary reading ``hook_in`` (and, for a transcoder, writing ``hook_out``).

    Raises :class:`InterpError` when the architecture's module paths are unknown or the hook has no module
    equivalent (see the module docstring).
    """
    paths = ARCHITECTURES.get(architecture or "")
    if paths is None:
        raise InterpError(
            f"interp does not know the module paths of {architecture or 'this model (none recorded)'}, so it cannot "
            f"name the sparsify hookpoint of {hook_in!r}. Known architectures: {', '.join(ARCHITECTURES)}. Pass the "
            "hookpoint yourself (export_dictionary(..., hookpoint='layers.3'), interp convert --hookpoint)."
        )
    if hook_out is not None and hook_out != hook_in:
        m_in, m_out = _HOOK.fullmatch(hook_in), _HOOK.fullmatch(hook_out)
        if m_in and m_out and m_in.groups() == (m_out.group(1), "resid_pre") and m_out.group(2) == "resid_post":
            return f"{paths.layers}.{m_in.group(1)}"
        raise InterpError(
            f"A sparsify transcoder maps one module's input to its output; {hook_in!r} -> {hook_out!r} is not the "
            "input and output of one Hugging Face module (the MLP's input is its norm's output after the norm's "
            "affine weights, which no TransformerLens hook holds). Transcoders that convert: "
            "blocks.l.hook_resid_pre -> blocks.l.hook_resid_post (the whole block). Export to SAELens instead."
        )
    m = _HOOK.fullmatch(hook_in)
    if m is None:
        raise InterpError(
            f"{hook_in!r} has no Hugging Face module whose output equals it, so sparsify cannot hook it. Hooks that "
            f"convert: {MAPPED}. Export to SAELens instead, which hooks by TransformerLens name."
        )
    layer, site = int(m.group(1)), m.group(2)
    if site == "resid_post":
        return f"{paths.layers}.{layer}"
    if site == "resid_pre":
        if layer > 0:
            return f"{paths.layers}.{layer - 1}"
        if paths.embed is None:
            raise InterpError(f"In {architecture} no module outputs the residual stream before block 0.")
        return paths.embed
    return f"{paths.layers}.{layer}.{paths.mlp if site == 'mlp_out' else paths.attn}"


class Hooks(NamedTuple):
    """The interp hooks a sparsify hookpoint corresponds to."""

    hook_in: str
    hook_out: str | None
    """The output hook of a transcoder; None for an autoencoder."""
    mapped: bool
    """False when the hookpoint has no TransformerLens equivalent (the module path is kept as the hook name)."""


def from_hookpoint(hookpoint: str, transcoder: bool) -> Hooks:
    """The TransformerLens hooks of a sparsify coder at ``hookpoint`` (full or base-relative module path)."""
    m = _MODULE.fullmatch(hookpoint)
    if m is None:
        if hookpoint in _EMBED and not transcoder:
            return Hooks("blocks.0.hook_resid_pre", None, True)
        return Hooks(hookpoint, hookpoint if transcoder else None, False)
    layer, sub = int(m.group(1)), m.group(2)
    if sub is None:
        if transcoder:
            return Hooks(f"blocks.{layer}.hook_resid_pre", f"blocks.{layer}.hook_resid_post", True)
        return Hooks(f"blocks.{layer}.hook_resid_post", None, True)
    out = f"blocks.{layer}.hook_{'mlp_out' if sub == 'mlp' else 'attn_out'}"
    if transcoder:  # the module's input (its norm's output, after the affine weights) has no hook
        return Hooks(hookpoint, out, False)
    return Hooks(out, None, True)
