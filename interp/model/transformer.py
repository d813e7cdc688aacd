"""interp's own forward pass for GPT-2 and Llama-family checkpoints: the module path of ``Model.capture``.

Why not hook Hugging Face's modules: importing ``transformers``' modeling code costs about 4.6 s of CPU on the
development machine (it pulls in torch.distributed.tensor, torch._dynamo, sympy and scipy), three times torch's
own import, so a command could not start in seconds. These modules compute what Hugging Face's do, in the same
order and with the same attention call (``scaled_dot_product_attention``, causal), on weights processed the way
the bridge processes them (``interp.model.weights``), and they carry TransformerLens-named identity modules
(:class:`HookPoint`) where the served hooks sit, so capture is a plain forward hook. ``tests/test_module_capture.py``
checks every served hook, and its gradient, against the bridge's ``run_with_cache`` and against the raw Hugging
Face forward.

Constraints: no import of transformers or transformer-lens; a checkpoint this module cannot run exactly is
refused by :func:`spec_from_config` with the reason, and the bridge runs it instead.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

_GPT2_ACTS = {"gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh", "gelu_fast": "gelu_tanh", "gelu": "gelu",
              "relu": "relu"}
_LLAMA_TYPES = {"llama": "LlamaForCausalLM", "mistral": "MistralForCausalLM", "qwen2": "Qwen2ForCausalLM"}


@dataclass(frozen=True)
class Spec:
    """What the forward pass needs from a checkpoint's ``config.json``."""

    family: str
    """``gpt2`` (learned positions, LayerNorm, GELU MLP) or ``llama`` (rotary, RMSNorm, gated SiLU MLP)."""
    architecture: str
    d_model: int
    n_layers: int
    n_heads: int
    n_kv_heads: int
    d_head: int
    d_mlp: int
    d_vocab: int
    n_ctx: int
    eps: float
    act: str
    """``gelu_tanh``, ``gelu``, ``relu`` or ``silu``."""
    rope_theta: float = 10000.0
    rope_scaling: tuple[tuple[str, Any], ...] = ()
    """Rotary scaling parameters (``rope_type`` default, linear or llama3), as sorted items."""


def spec_from_config(cfg: dict[str, Any]) -> Spec | str:
    """The :class:`Spec` of a Hugging Face ``config.json``, or why this module cannot run it exactly."""
    kind = cfg.get("model_type")
    if kind == "gpt2":
        return _gpt2_spec(cfg)
    if kind in _LLAMA_TYPES:
        return _llama_spec(cfg, kind)
    return f"model_type {kind!r} is not one the module path runs (gpt2, {', '.join(_LLAMA_TYPES)})"


def _gpt2_spec(cfg: dict[str, Any]) -> Spec | str:
    act = cfg.get("activation_function", "gelu_new")
    checks = {
        f"activation {act!r}": act in _GPT2_ACTS,
        "scale_attn_weights false": cfg.get("scale_attn_weights", True),
        "scale_attn_by_inverse_layer_idx": not cfg.get("scale_attn_by_inverse_layer_idx", False),
        "reorder_and_upcast_attn": not cfg.get("reorder_and_upcast_attn", False),
        "cross attention": not cfg.get("add_cross_attention", False),
    }
    bad = [k for k, ok in checks.items() if not ok]
    if bad:
        return f"GPT-2 config with {', '.join(bad)}"
    d, heads = int(cfg["n_embd"]), int(cfg["n_head"])
    return Spec("gpt2", (cfg.get("architectures") or ["GPT2LMHeadModel"])[0], d, int(cfg["n_layer"]), heads, heads,
                d // heads, int(cfg.get("n_inner") or 4 * d), int(cfg["vocab_size"]), int(cfg["n_positions"]),
                float(cfg.get("layer_norm_epsilon", 1e-5)), _GPT2_ACTS[act])


def _llama_spec(cfg: dict[str, Any], kind: str) -> Spec | str:
    rope = dict(cfg.get("rope_parameters") or cfg.get("rope_scaling") or {})
    rope_type = rope.get("rope_type", rope.get("type", "default"))
    theta = rope.get("rope_theta", cfg.get("rope_theta", 10000.0))
    window = cfg.get("sliding_window") if cfg.get("use_sliding_window", kind == "mistral") else None
    layer_types = set(cfg.get("layer_types") or ["full_attention"])
    checks = {
        f"activation {cfg.get('hidden_act')!r}": cfg.get("hidden_act", "silu") == "silu",
        f"rope_type {rope_type!r}": rope_type in ("default", "linear", "llama3"),
        "partial rotary": cfg.get("partial_rotary_factor", 1.0) == 1.0,
        "sliding-window attention": window is None and layer_types == {"full_attention"},
    }
    bad = [k for k, ok in checks.items() if not ok]
    if bad:
        return f"{kind} config with {', '.join(bad)}"
    d, heads = int(cfg["hidden_size"]), int(cfg["num_attention_heads"])
    rope["rope_type"] = rope_type  # older configs name it "type"
    scaling = tuple(sorted((k, v) for k, v in rope.items() if k not in ("rope_theta", "type")))
    return Spec("llama", (cfg.get("architectures") or [_LLAMA_TYPES[kind]])[0], d, int(cfg["num_hidden_layers"]),
                heads, int(cfg.get("num_key_value_heads") or heads), int(cfg.get("head_dim") or d // heads),
                int(cfg["intermediate_size"]), int(cfg["vocab_size"]), int(cfg["max_position_embeddings"]),
                float(cfg.get("rms_norm_eps", 1e-6)), "silu", float(theta), scaling)


class Linear(nn.Module):
    """``x @ weight.T + bias``, whose weight (out, in) and optional bias the loader sets (no initialisation,
    which for a large model costs seconds; nor a meta-device build, whose first use imports torch._dynamo)."""

    weight: nn.Parameter
    bias: nn.Parameter | None

    def __init__(self) -> None:
        super().__init__()
        self.register_parameter("weight", None)
        self.register_parameter("bias", None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight, self.bias)


class Embedding(nn.Module):
    """Rows of ``weight`` (n, d), which the loader sets."""

    weight: nn.Parameter

    def __init__(self) -> None:
        super().__init__()
        self.register_parameter("weight", None)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return F.embedding(ids, self.weight)


class HookPoint(nn.Module):
    """An identity, named like the TransformerLens hook at its place; a forward hook on it sees (and may
    replace) the activation."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


class Norm(nn.Module):
    """LayerNorm or RMSNorm, normalising first (``hook_normalized``), then scaling when the weights are not
    folded into the next layer (processing ``none``)."""

    weight: nn.Parameter | None
    bias: nn.Parameter | None

    def __init__(self, d: int, eps: float, rms: bool):
        super().__init__()
        self.d, self.eps, self.rms = d, eps, rms
        self.register_parameter("weight", None)  # set by the loader when the norm keeps its own scale
        self.register_parameter("bias", None)
        self.hook_scale, self.hook_normalized = HookPoint(), HookPoint()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.hook_scale._forward_hooks:  # the scale as its own tensor (TransformerLens's form) when read
            h = x.float() if self.rms else x - x.mean(-1, keepdim=True)
            scale = self.hook_scale((h.pow(2).mean(-1, keepdim=True) + self.eps).sqrt())  # (..., 1)
            x = (h / scale).to(x.dtype)
        elif self.rms:  # in float32, as Hugging Face's Llama does
            h = x.float()
            x = (h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps)).to(x.dtype)
        else:
            x = F.layer_norm(x, (self.d,), eps=self.eps)
        x = self.hook_normalized(x)
        if self.weight is not None:
            x = x * self.weight
        return x + self.bias if self.bias is not None else x


class Attention(nn.Module):
    """Causal self-attention through ``scaled_dot_product_attention``; q, k and v come from one fused matmul."""

    def __init__(self, s: Spec):
        super().__init__()
        self.n_heads, self.n_kv, self.d_head = s.n_heads, s.n_kv_heads, s.d_head
        self.qkv, self.o = Linear(), Linear()
        self.hook_rot_q, self.hook_rot_k, self.hook_v, self.hook_z = HookPoint(), HookPoint(), HookPoint(), HookPoint()

    def forward(self, x: torch.Tensor, rotary: tuple[torch.Tensor, torch.Tensor] | None) -> torch.Tensor:
        b, n, _ = x.shape
        q, k, v = self.qkv(x).split([self.n_heads * self.d_head, self.n_kv * self.d_head, self.n_kv * self.d_head], -1)
        q = q.view(b, n, self.n_heads, self.d_head).transpose(1, 2)  # (b, head, pos, d_head)
        k = k.view(b, n, self.n_kv, self.d_head).transpose(1, 2)
        v = self.hook_v(v.view(b, n, self.n_kv, self.d_head)).transpose(1, 2)  # hook: (b, pos, kv head, d_head)
        if rotary is not None:
            # hooks see (b, pos, head, d_head), as TransformerLens's
            q = self.hook_rot_q(rotate(q, *rotary).transpose(1, 2)).transpose(1, 2)
            k = self.hook_rot_k(rotate(k, *rotary).transpose(1, 2)).transpose(1, 2)
        if self.n_kv != self.n_heads:  # grouped-query attention: head h reads kv head h // group
            k = k.repeat_interleave(self.n_heads // self.n_kv, dim=1)
            v = v.repeat_interleave(self.n_heads // self.n_kv, dim=1)
        z = F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=self.d_head**-0.5)
        z = self.hook_z(z.transpose(1, 2))  # (b, pos, head, d_head)
        return self.o(z.reshape(b, n, self.n_heads * self.d_head))


def rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotary embedding as Hugging Face's Llama family applies it (halves, not interleaved pairs): ``x * cos +
    rotate_half(x) * sin`` on the first ``cos.shape[-1]`` features of ``x`` (..., d_head), the rest unchanged
    (partial rotary). ``cos`` and ``sin`` broadcast against ``x``; a linear map of ``x`` for fixed angles."""
    r = cos.shape[-1]
    if r < x.shape[-1]:
        return torch.cat((rotate(x[..., :r], cos, sin), x[..., r:]), dim=-1)
    half = r // 2
    # rotate_half(x) * sin == roll(x) * [-sin_1, sin_2], exactly (a negation is exact): one pass fewer
    signed = torch.cat((-sin[..., :half], sin[..., half:]), dim=-1)
    return x * cos + x.roll(half, dims=-1) * signed


class MLP(nn.Module):
    """GELU MLP (GPT-2) or gated SiLU MLP (Llama; gate and up in one fused matmul, gate first)."""

    def __init__(self, s: Spec):
        super().__init__()
        self.gated, self.d_mlp, self.act = s.family == "llama", s.d_mlp, s.act
        self.up, self.down = Linear(), Linear()
        self.hook_pre, self.hook_post = HookPoint(), HookPoint()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.gated:  # two matmuls over the fused weight's halves: contiguous outputs, faster than splitting one
            w, b, d = self.up.weight, self.up.bias, self.d_mlp
            gate = F.linear(x, w[:d], None if b is None else b[:d])
            post = F.silu(self.hook_pre(gate)) * F.linear(x, w[d:], None if b is None else b[d:])
        else:
            pre = self.hook_pre(self.up(x))
            post = F.gelu(pre, approximate="tanh") if self.act == "gelu_tanh" else getattr(F, self.act)(pre)
        return self.down(self.hook_post(post))


class Block(nn.Module):
    """One pre-norm transformer block with the residual-stream hooks of TransformerLens."""

    def __init__(self, s: Spec):
        super().__init__()
        rms = s.family == "llama"
        self.ln1, self.ln2 = Norm(s.d_model, s.eps, rms), Norm(s.d_model, s.eps, rms)
        self.attn, self.mlp = Attention(s), MLP(s)
        self.hook_resid_pre, self.hook_attn_out, self.hook_resid_mid = HookPoint(), HookPoint(), HookPoint()
        self.hook_mlp_in, self.hook_mlp_out, self.hook_resid_post = HookPoint(), HookPoint(), HookPoint()

    def forward(self, x: torch.Tensor, rotary: tuple[torch.Tensor, torch.Tensor] | None) -> torch.Tensor:
        x = self.hook_resid_pre(x)
        mid = self.hook_resid_mid(x + self.hook_attn_out(self.attn(self.ln1(x), rotary)))
        # hook_mlp_in feeds the MLP branch only, as in TransformerLens (the residual bypasses it)
        return self.hook_resid_post(mid + self.hook_mlp_out(self.mlp(self.ln2(self.hook_mlp_in(mid)))))


class Transformer(nn.Module):
    """A causal LM whose submodule names are TransformerLens hook names (``blocks.0.attn.hook_z`` ...).

    Built empty: :func:`interp.model.weights.load_transformer` sets every weight, the biases the processed
    checkpoint has, and the norms' own scales when they are not folded into the next layer."""

    inv_freq: torch.Tensor  # llama: rotary inverse frequencies (d_head / 2,), float32

    def __init__(self, s: Spec):
        super().__init__()
        self.spec = s
        self.embed = Embedding()
        self.pos_embed = Embedding() if s.family == "gpt2" else None
        self.hook_embed, self.hook_pos_embed = HookPoint(), HookPoint()
        self.blocks = nn.ModuleList(Block(s) for _ in range(s.n_layers))
        self.ln_final = Norm(s.d_model, s.eps, s.family == "llama")
        self.unembed = Linear()
        if s.family == "llama":
            self.register_buffer("inv_freq", rope_frequencies(s), persistent=False)

    def forward(self, tokens: torch.Tensor, stop_at_layer: int | None = None, logits: bool = True) -> torch.Tensor:
        """Logits (batch, pos, d_vocab); the residual stream entering block ``stop_at_layer`` when it is given;
        the final norm's output when ``logits`` is False."""
        n = tokens.shape[1]
        x = self.hook_embed(self.embed(tokens))
        positions = torch.arange(n, device=tokens.device)
        if self.pos_embed is not None:
            x = x + self.hook_pos_embed(self.pos_embed(positions).expand_as(x))
        rotary = None
        if self.spec.family == "llama":
            freqs = positions.float()[:, None] * self.inv_freq[None, :]  # (pos, d_head / 2), in float32
            angles = torch.cat((freqs, freqs), dim=-1)
            rotary = (angles.cos().to(x.dtype), angles.sin().to(x.dtype))
        for block in self.blocks[:stop_at_layer]:
            x = block(x, rotary)
        if stop_at_layer is not None:
            return x
        x = self.ln_final(x)
        return self.unembed(x) if logits else x


def rope_frequencies(s: Spec) -> torch.Tensor:
    """Rotary inverse frequencies (d_head / 2,), float32, with the checkpoint's scaling (linear or llama3)."""
    inv = 1.0 / (s.rope_theta ** (torch.arange(0, s.d_head, 2, dtype=torch.int64).float() / s.d_head))
    scaling = dict(s.rope_scaling)
    kind = scaling.get("rope_type", "default")
    if kind == "linear":
        return inv / scaling["factor"]
    if kind != "llama3":
        return inv
    # llama3: long wavelengths slowed by `factor`, short ones kept, a smooth blend between the two bands
    factor, low, high = scaling["factor"], scaling["low_freq_factor"], scaling["high_freq_factor"]
    old_ctx = scaling["original_max_position_embeddings"]
    wavelength = 2 * math.pi / inv
    slowed = torch.where(wavelength > old_ctx / low, inv / factor, inv)
    blend = (old_ctx / wavelength - low) / (high - low)
    smooth = (1 - blend) * slowed / factor + blend * slowed
    middle = (wavelength >= old_ctx / high) & (wavelength <= old_ctx / low)
    return torch.where(middle, smooth, slowed)
