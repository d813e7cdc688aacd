"""Hook names of the architectures the module path runs, without booting the bridge.

The names, and their order, are those transformer-lens 4.3's ``TransformerBridge.hook_dict`` lists for the
family (``tests/test_module_capture.py`` checks them against a booted bridge), so hook patterns resolve, and
resolved hooks sort, the same way whichever engine later runs them. ``SERVED`` are the hooks the module path
captures itself; every other name is captured by the bridge.
"""

from __future__ import annotations

_BLOCK_HEAD = ["hook_in", "hook_out", "hook_mlp_in", "hook_resid_pre", "hook_resid_mid", "hook_resid_post",
               "hook_attn_in", "hook_attn_out", "hook_q_input", "hook_k_input", "hook_v_input", "hook_mlp_out"]
_LN1 = ["ln1.hook_in", "ln1.hook_out", "ln1.hook_normalized", "ln1.hook_scale"]
_LN2 = ["ln2.hook_in", "ln2.hook_out", "ln2.hook_normalized", "ln2.hook_scale"]
_ATTN_HEAD = ["attn.hook_in", "attn.hook_out", "attn.hook_attn_scores", "attn.hook_pattern",
              "attn.hook_hidden_states", "attn.hook_result", "attn.hook_attn_in", "attn.hook_q_input",
              "attn.hook_k_input", "attn.hook_v_input"]
_QKVZ = ["attn.hook_q", "attn.hook_k", "attn.hook_v", "attn.hook_z"]
_ROTARY = ["attn.hook_rot_k", "attn.hook_rot_q", "attn.hook_cos", "attn.hook_sin"]
_LINEARS = [f"attn.{p}.hook_{io}" for p in "qkv" for io in ("in", "out")]
_FINAL = ["ln_final.hook_in", "ln_final.hook_out", "ln_final.hook_normalized", "ln_final.hook_scale",
          "unembed.hook_in", "unembed.hook_out"]

_VOCABULARY: dict[str, tuple[list[str], list[str], list[str]]] = {
    "gpt2": (
        ["hook_embed", "hook_pos_embed", "hook_unembed", "embed.hook_in", "embed.hook_out", "pos_embed.hook_in",
         "pos_embed.hook_out"],
        [*_BLOCK_HEAD, *_LN1, *_ATTN_HEAD, *_QKVZ, *_LINEARS, "attn.qkv.hook_in", "attn.qkv.hook_out",
         "attn.o.hook_in", "attn.o.hook_out", *_LN2, "mlp.hook_in", "mlp.hook_out", "mlp.hook_pre",
         "mlp.hook_post", "mlp.in.hook_in", "mlp.in.hook_out", "mlp.out.hook_in", "mlp.out.hook_out"],
        _FINAL,
    ),
    "llama": (
        ["hook_embed", "hook_pos_embed", "hook_unembed", "embed.hook_in", "embed.hook_out", "rotary_emb.hook_in",
         "rotary_emb.hook_out", "rotary_emb.hook_cos", "rotary_emb.hook_sin"],
        [*_BLOCK_HEAD, *_LN1, *_LN2, *_ATTN_HEAD, *_ROTARY, *_QKVZ, *_LINEARS, "attn.o.hook_in", "attn.o.hook_out",
         "mlp.hook_in", "mlp.hook_out", "mlp.hook_pre", "mlp.hook_pre_linear", "mlp.hook_post", "mlp.gate.hook_in",
         "mlp.gate.hook_out", "mlp.in.hook_in", "mlp.in.hook_out", "mlp.out.hook_in", "mlp.out.hook_out"],
        _FINAL,
    ),
}

SERVED_IN_BLOCK = ("hook_resid_pre", "hook_resid_mid", "hook_resid_post", "hook_attn_out", "hook_mlp_in",
                   "hook_mlp_out", "attn.hook_v", "attn.hook_z", "ln1.hook_scale", "ln1.hook_normalized",
                   "ln2.hook_scale", "ln2.hook_normalized", "mlp.hook_pre", "mlp.hook_post")
"""Per-block hooks the module path captures (each a named identity module of ``interp.model.transformer``)."""
SERVED_AFTER_BLOCKS = ("ln_final.hook_scale", "ln_final.hook_normalized")
SERVED_BEFORE_BLOCKS = {"gpt2": ("hook_embed", "hook_pos_embed"), "llama": ("hook_embed",)}
SERVED_ROTARY = ("attn.hook_rot_q", "attn.hook_rot_k")
"""Per-block hooks the module path captures on rotary (llama-family) models: queries and keys after rotation."""


def hook_names(family: str, n_layers: int) -> list[str]:
    """Every hook name of a ``family`` model with ``n_layers`` blocks, in the bridge's order."""
    head, block, tail = _VOCABULARY[family]
    return [*head, *(f"blocks.{layer}.{name}" for layer in range(n_layers) for name in block), *tail]


def served(n_layers: int, family: str) -> frozenset[str]:
    """The hooks the module path captures for a ``family`` model with ``n_layers`` blocks."""
    in_block = SERVED_IN_BLOCK + (SERVED_ROTARY if family == "llama" else ())
    return frozenset([*SERVED_BEFORE_BLOCKS[family],
                      *(f"blocks.{layer}.{name}" for layer in range(n_layers) for name in in_block),
                      *SERVED_AFTER_BLOCKS])
