"""The weight views of :class:`interp.model.Model`, in TransformerLens's shapes and processed coordinates: what
circuit code reads to decompose the residual stream.

They are read from the module path's own weights while the model has not booted its TransformerBridge (a local
checkpoint that was only captured from), so reading a view does not load the model a second time; once the
bridge is up (other hooks, splicing, finetuning, a hub model) they are read from the bridge, whose weights are
then the model's. Both give the same tensors (``tests/test_model_views.py``).
"""

from __future__ import annotations

from typing import Any, cast

import torch

from interp.model.transformer import Block, Transformer


class ModuleWeights:
    """The views' tensors, cut from the module path's fused weights (``qkv`` rows are queries, then keys, then
    values, head by head; ``Linear`` weights are (out, in)). Each access builds its tensor, as the bridge's
    stacked views do."""

    def __init__(self, net: Transformer):
        self.net, self.spec = net, net.spec
        self.attn = [cast(Block, block).attn for block in net.blocks]
        self.rotary = self.spec.family == "llama"

    def _rows(self, which: str) -> tuple[slice, int]:
        """The ``qkv`` rows of queries, keys or values (``which``: q, k, v), and their number of heads."""
        q, kv = self.spec.n_heads * self.spec.d_head, self.spec.n_kv_heads * self.spec.d_head
        start, heads = {"q": (0, self.spec.n_heads), "k": (q, self.spec.n_kv_heads),
                        "v": (q + kv, self.spec.n_kv_heads)}[which]
        return slice(start, start + heads * self.spec.d_head), heads

    @property
    def W_E(self) -> torch.Tensor:
        return self.net.embed.weight

    @property
    def W_pos(self) -> torch.Tensor | None:
        return None if self.net.pos_embed is None else self.net.pos_embed.weight

    @property
    def W_U(self) -> torch.Tensor:
        return self.net.unembed.weight.T

    @property
    def b_U(self) -> torch.Tensor:
        bias = self.net.unembed.bias
        return self.W_E.new_zeros(self.spec.d_vocab) if bias is None else bias

    @property
    def W_O(self) -> torch.Tensor:
        s = self.spec
        w = torch.stack([attn.o.weight for attn in self.attn])  # (L, d_model, heads * d_head)
        return w.view(s.n_layers, s.d_model, s.n_heads, s.d_head).permute(0, 2, 3, 1)

    @property
    def b_O(self) -> torch.Tensor:
        biases = [attn.o.bias for attn in self.attn]
        if any(bias is None for bias in biases):
            return self.W_E.new_zeros(self.spec.n_layers, self.spec.d_model)
        return torch.stack(cast(list[torch.Tensor], biases))

    def weight(self, which: str) -> torch.Tensor:
        """W_Q, W_K or W_V (``which``: q, k, v), (n_layers, heads, d_model, d_head)."""
        rows, heads = self._rows(which)
        w = torch.stack([attn.qkv.weight[rows] for attn in self.attn])  # (L, heads * d_head, d_model)
        return w.view(len(self.attn), heads, self.spec.d_head, self.spec.d_model).transpose(2, 3)

    def bias(self, which: str) -> torch.Tensor:
        """b_Q, b_K or b_V, (n_layers, heads, d_head); zeros for a bias-free checkpoint."""
        rows, heads = self._rows(which)
        biases = [attn.qkv.bias for attn in self.attn]
        if any(bias is None for bias in biases):
            missing = self.spec.n_kv_heads if which == "k" else self.spec.n_heads  # as the bridge's fallback
            return self.W_E.new_zeros(len(self.attn), missing, self.spec.d_head)
        return torch.stack([cast(torch.Tensor, bias)[rows] for bias in biases]).view(len(self.attn), heads, -1)


class BridgeWeights:
    """The same tensors read from a TransformerBridge's stacked views; the biases a bias-free checkpoint lacks
    (Llama's projections, an untied unembedding without bias) read as zeros."""

    def __init__(self, bridge: Any):
        self.bridge, self.cfg = bridge, bridge.cfg
        self.rotary = self.cfg.positional_embedding_type == "rotary"

    @property
    def W_E(self) -> torch.Tensor:
        return self.bridge.W_E

    @property
    def W_U(self) -> torch.Tensor:
        return self.bridge.W_U

    @property
    def W_O(self) -> torch.Tensor:
        return self.bridge.W_O

    @property
    def W_pos(self) -> torch.Tensor | None:
        return self.bridge.W_pos if self.cfg.positional_embedding_type == "standard" else None

    def _bias(self, name: str, *shape: int) -> torch.Tensor:
        try:
            return getattr(self.bridge, name)
        except AttributeError:  # the bridge's stacked view of a bias-free projection
            return torch.zeros(shape, device=self.W_U.device, dtype=self.W_U.dtype)

    @property
    def b_U(self) -> torch.Tensor:
        return self._bias("b_U", self.cfg.d_vocab)

    @property
    def b_O(self) -> torch.Tensor:
        return self._bias("b_O", self.cfg.n_layers, self.cfg.d_model)

    def weight(self, which: str) -> torch.Tensor:
        return getattr(self.bridge, f"W_{which.upper()}")

    def bias(self, which: str) -> torch.Tensor:
        c = self.cfg
        heads = (c.n_key_value_heads or c.n_heads) if which == "k" else c.n_heads
        return self._bias(f"b_{which.upper()}", c.n_layers, heads, c.d_head)


class WeightViews:
    """Mixin: the per-layer weight tensors (see the module docstring), from the module path's weights while the
    bridge is not booted and the model has a local checkpoint, else from the bridge."""

    bridge: Any
    _bridge: Any

    def _transformer(self) -> Transformer:
        raise NotImplementedError

    def _weights(self) -> ModuleWeights | BridgeWeights:
        if self._bridge is None and getattr(self, "_checkpoint", None) is not None:
            return ModuleWeights(self._transformer())
        return BridgeWeights(self.bridge)

    @property
    def W_U(self) -> torch.Tensor:
        """Unembedding, (d_model, d_vocab)."""
        return self._weights().W_U

    @property
    def b_U(self) -> torch.Tensor:
        """Unembedding bias, (d_vocab,)."""
        return self._weights().b_U

    @property
    def W_E(self) -> torch.Tensor:
        """Token embedding, (d_vocab, d_model)."""
        return self._weights().W_E

    @property
    def W_pos(self) -> torch.Tensor | None:
        """Learned positional embedding, (n_ctx, d_model); None for models without one (rotary)."""
        return self._weights().W_pos

    @property
    def rotary(self) -> bool:
        """True when queries and keys are rotated by position (rotary embeddings, Llama family); the angles are
        the hooks ``blocks.{l}.attn.hook_cos`` / ``hook_sin``, (batch, pos, rotary dims); see
        :func:`interp.model.rotate`."""
        return self._weights().rotary

    @property
    def W_O(self) -> torch.Tensor:
        """Attention output weights per head, (n_layers, n_heads, d_head, d_model): head h of block l writes
        ``z[..., h, :] @ W_O[l, h]`` into the residual stream (``blocks.l.attn.hook_z`` gives z)."""
        return self._weights().W_O

    @property
    def b_O(self) -> torch.Tensor:
        """Attention output bias, (n_layers, d_model): ``attn_out = sum_h z_h W_O[l, h] + b_O[l]``."""
        return self._weights().b_O

    @property
    def W_Q(self) -> torch.Tensor:
        """Query weights per head, (n_layers, n_heads, d_model, d_head): ``q = ln1(resid_pre) @ W_Q[l, h] + b_Q``
        (before rotary embeddings, where the model has them)."""
        return self._weights().weight("q")

    @property
    def W_K(self) -> torch.Tensor:
        """Key weights per head, (n_layers, n_heads or n_kv_heads, d_model, d_head), like :attr:`W_Q`."""
        return self._weights().weight("k")

    @property
    def W_V(self) -> torch.Tensor:
        """Value weights per head, (n_layers, n_heads, d_model, d_head): ``v = ln1(resid_pre) @ W_V[l, h] + b_V``."""
        return self._weights().weight("v")

    @property
    def b_Q(self) -> torch.Tensor:
        """Query biases, (n_layers, n_heads, d_head)."""
        return self._weights().bias("q")

    @property
    def b_K(self) -> torch.Tensor:
        """Key biases, (n_layers, n_heads or n_kv_heads, d_head)."""
        return self._weights().bias("k")

    @property
    def b_V(self) -> torch.Tensor:
        """Value biases, (n_layers, n_heads, d_head) (zero once folded into ``b_O``)."""
        return self._weights().bias("v")
