"""A checkpoint's safetensors weights, processed as the bridge processes them, loaded into interp's own modules.

Weight processing (``PROCESSING``) fixes the coordinate system activations are cached in. The steps, in the
order transformer-lens applies them, on weights in float32 (``nn.Linear`` layout, (out, in)):

- fold_ln: a norm's scale (and LayerNorm's shift) moves into the linear maps that read its output, which are
  then centred over their input dimension (LayerNorm only: its output has zero mean); the norm keeps only
  its normalisation, so ``hook_normalized`` is what the next layer reads.
- center_writing_weights (LayerNorm models only): every map that writes to the residual stream (embeddings,
  attention and MLP outputs) writes zero-mean vectors.
- center_unembed: the unembedding is centred over the vocabulary (logits shift by a per-token constant).
- fold_value_biases: the value bias moves into the attention output bias (attention weights sum to one), so
  ``hook_z`` is the attention-weighted value without it.

The result equals the bridge's processed model to float32 rounding (``tests/test_module_capture.py``).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from interp.model.transformer import Block, Spec, Transformer

# "default" is SAELens's convention (LayerNorm folded into the next weights, writing weights left
# uncentred), so interp's dictionaries export to SAELens unchanged; "transformer_lens" is
# HookedTransformer.from_pretrained's (also centres writing weights); "none" keeps the checkpoint's own.
PROCESSING = {
    "default": dict(fold_ln=True, center_writing_weights=False, center_unembed=True, fold_value_biases=True),
    "transformer_lens": dict(fold_ln=True, center_writing_weights=True, center_unembed=True,
                             fold_value_biases=True),
    "none": dict(no_processing=True),
}
Params = dict[str, torch.Tensor]
"""Canonical weights of one block (``ln1.w``, ``q.w``, ``q.b``, ``o.w``, ``gate.w``, ``up.w``, ``down.w`` ...) or of
the ends of the model (``embed``, ``pos``, ``lnf.w``, ``unembed.w``, ``unembed.b``)."""


def safetensors_files(path: Path) -> list[Path] | None:
    """The checkpoint's weight files (one, or the shards its index lists), or None when it has no (complete)
    safetensors weights."""
    single = path / "model.safetensors"
    if single.is_file():
        return [single]
    index = path / "model.safetensors.index.json"
    if index.is_file():
        shards = [path / s for s in sorted(set(json.loads(index.read_text())["weight_map"].values()))]
        return shards if all(s.is_file() for s in shards) else None
    return None


class _Reader:
    """Tensors by Hugging Face name, read one at a time (memory-mapped), in float32."""

    def __init__(self, files: list[Path]):
        from safetensors import safe_open

        self.handles = [safe_open(str(f), framework="pt") for f in files]
        self.where = {k: h for h in self.handles for k in h.keys()}  # noqa: SIM118 (safe_open is not a dict)

    def __contains__(self, key: str) -> bool:
        return key in self.where

    def __call__(self, key: str) -> torch.Tensor:
        return self.where[key].get_tensor(key).float()

    def maybe(self, key: str) -> torch.Tensor | None:
        return self(key) if key in self.where else None


def load_transformer(spec: Spec, files: list[Path], processing: str, device: torch.device, dtype: torch.dtype
                     ) -> Transformer:
    """Build the :class:`Transformer` for ``spec`` from safetensors ``files``, processed per ``processing``."""
    steps = PROCESSING[processing]
    fold = bool(steps.get("fold_ln"))
    model = Transformer(spec)
    read = _Reader(files)
    layer_params, ends_params = (_gpt2_layer, _gpt2_ends) if spec.family == "gpt2" else (_llama_layer, _llama_ends)
    ends = ends_params(read, spec)
    layer_norm = spec.family == "gpt2"

    def put(module: nn.Module, name: str, tensor: torch.Tensor | None) -> None:
        value = None if tensor is None else nn.Parameter(tensor.to(device, dtype), requires_grad=False)
        setattr(module, name, value)

    for i, block in enumerate(model.blocks):
        assert isinstance(block, Block)
        p = layer_params(read, spec, i)
        if fold:
            _fold_norm(p, "ln1", ("q", "k", "v"), center=layer_norm)
            _fold_norm(p, "ln2", ("gate", "up") if "gate.w" in p else ("up",), center=layer_norm)
        if steps.get("center_writing_weights") and layer_norm:
            _center_writing(p, ("o", "down"))
        if steps.get("fold_value_biases"):
            _fold_value_bias(p, spec)
        for norm in ("ln1", "ln2"):
            put(getattr(block, norm), "weight", p.get(f"{norm}.w"))
            put(getattr(block, norm), "bias", p.get(f"{norm}.b"))
        put(block.attn.qkv, "weight", torch.cat([p["q.w"], p["k.w"], p["v.w"]]))
        put(block.attn.qkv, "bias", torch.cat([p["q.b"], p["k.b"], p["v.b"]]) if "q.b" in p else None)
        put(block.attn.o, "weight", p["o.w"])
        put(block.attn.o, "bias", p.get("o.b"))
        gated = "gate.w" in p
        put(block.mlp.up, "weight", torch.cat([p["gate.w"], p["up.w"]]) if gated else p["up.w"])
        up_bias = torch.cat([p["gate.b"], p["up.b"]]) if gated and "gate.b" in p else p.get("up.b")
        put(block.mlp.up, "bias", up_bias)
        put(block.mlp.down, "weight", p["down.w"])
        put(block.mlp.down, "bias", p.get("down.b"))
    _process_ends(ends, steps, layer_norm)
    put(model.embed, "weight", ends["embed"])
    if model.pos_embed is not None:
        put(model.pos_embed, "weight", ends["pos"])
    put(model.ln_final, "weight", ends.get("lnf.w"))
    put(model.ln_final, "bias", ends.get("lnf.b"))
    put(model.unembed, "weight", ends["unembed.w"])
    put(model.unembed, "bias", ends.get("unembed.b"))
    if spec.family == "llama":
        model.inv_freq = model.inv_freq.to(device)
    return model.eval()


def _process_ends(p: Params, steps: dict[str, bool], layer_norm: bool) -> None:
    if steps.get("fold_ln"):
        _fold_norm(p, "lnf", ("unembed",), center=layer_norm)
    if steps.get("center_writing_weights") and layer_norm:
        for key in ("embed", "pos"):
            p[key] = p[key] - p[key].mean(-1, keepdim=True)
    if steps.get("center_unembed"):
        p["unembed.w"] = p["unembed.w"] - p["unembed.w"].mean(0, keepdim=True)
        if "unembed.b" in p:
            p["unembed.b"] = p["unembed.b"] - p["unembed.b"].mean()


def _fold_norm(p: Params, norm: str, readers: tuple[str, ...], center: bool) -> None:
    """Move norm ``norm``'s scale and shift into the maps ``readers`` that read its output."""
    scale, shift = p.pop(f"{norm}.w"), p.pop(f"{norm}.b", None)
    for r in readers:
        w = p[f"{r}.w"]
        if shift is not None:
            p[f"{r}.b"] = p.get(f"{r}.b", torch.zeros(w.shape[0])) + w @ shift
        w = w * scale
        p[f"{r}.w"] = w - w.mean(1, keepdim=True) if center else w


def _center_writing(p: Params, writers: tuple[str, ...]) -> None:
    for r in writers:
        p[f"{r}.w"] = p[f"{r}.w"] - p[f"{r}.w"].mean(0, keepdim=True)
        if f"{r}.b" in p:
            p[f"{r}.b"] = p[f"{r}.b"] - p[f"{r}.b"].mean()


def _fold_value_bias(p: Params, spec: Spec) -> None:
    if "v.b" not in p:
        return
    per_head = p["v.b"].view(spec.n_kv_heads, spec.d_head).repeat_interleave(spec.n_heads // spec.n_kv_heads, 0)
    p["o.b"] = p.get("o.b", torch.zeros(spec.d_model)) + p["o.w"] @ per_head.reshape(-1)
    p["v.b"] = torch.zeros_like(p["v.b"])


def _gpt2_prefix(read: _Reader) -> str:
    return "transformer." if "transformer.wte.weight" in read else ""


def _gpt2_layer(read: _Reader, spec: Spec, i: int) -> Params:
    """GPT-2's Conv1D weights are (in, out): transposed to (out, in); c_attn splits into q, k, v."""
    pre = f"{_gpt2_prefix(read)}h.{i}."
    qkv_w, qkv_b = read(pre + "attn.c_attn.weight").T, read(pre + "attn.c_attn.bias")
    d = spec.d_model
    p = {f"{n}.w": qkv_w[j * d : (j + 1) * d] for j, n in enumerate("qkv")}
    p.update({f"{n}.b": qkv_b[j * d : (j + 1) * d] for j, n in enumerate("qkv")})
    names = {"ln1": "ln_1", "ln2": "ln_2", "o": "attn.c_proj", "up": "mlp.c_fc", "down": "mlp.c_proj"}
    for ours, theirs in names.items():
        w = read(f"{pre}{theirs}.weight")
        p[f"{ours}.w"] = w if ours.startswith("ln") else w.T.contiguous()
        p[f"{ours}.b"] = read(f"{pre}{theirs}.bias")
    return p


def _gpt2_ends(read: _Reader, spec: Spec) -> Params:
    pre = _gpt2_prefix(read)
    embed = read(pre + "wte.weight")
    unembed = read("lm_head.weight") if "lm_head.weight" in read else embed  # absent when tied
    return {"embed": embed, "pos": read(pre + "wpe.weight"), "lnf.w": read(pre + "ln_f.weight"),
            "lnf.b": read(pre + "ln_f.bias"), "unembed.w": unembed}


def _llama_layer(read: _Reader, spec: Spec, i: int) -> Params:
    pre = f"model.layers.{i}."
    names = {"ln1": "input_layernorm", "ln2": "post_attention_layernorm", "q": "self_attn.q_proj",
             "k": "self_attn.k_proj", "v": "self_attn.v_proj", "o": "self_attn.o_proj", "gate": "mlp.gate_proj",
             "up": "mlp.up_proj", "down": "mlp.down_proj"}
    p: Params = {}
    for ours, theirs in names.items():
        p[f"{ours}.w"] = read(f"{pre}{theirs}.weight")
        bias = read.maybe(f"{pre}{theirs}.bias")
        if bias is not None:
            p[f"{ours}.b"] = bias
    return p


def _llama_ends(read: _Reader, spec: Spec) -> Params:
    embed = read("model.embed_tokens.weight")
    unembed = read("lm_head.weight") if "lm_head.weight" in read else embed
    return {"embed": embed, "lnf.w": read("model.norm.weight"), "unembed.w": unembed}

