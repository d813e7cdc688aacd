"""The weight views of :class:`interp.model.Model`, in TransformerLens's shapes and processed coordinates: what
circuit code reads to decompose the residual stream (read from the bridge, booted on first use)."""

from __future__ import annotations

from typing import Any

import torch


class WeightViews:
    """Mixin: the per-layer weight tensors, read from ``self.bridge``. Biases a bias-free checkpoint lacks (Llama's
    projections, an untied unembedding without bias) read as zeros."""

    bridge: Any

    def _bias(self, name: str, *shape: int) -> torch.Tensor:
        try:
            return getattr(self.bridge, name)
        except AttributeError:  # the bridge's stacked view of a bias-free projection
            return torch.zeros(shape, device=self.bridge.W_U.device, dtype=self.bridge.W_U.dtype)

    @property
    def W_U(self) -> torch.Tensor:
        """Unembedding, (d_model, d_vocab)."""
        return self.bridge.W_U

    @property
    def W_O(self) -> torch.Tensor:
        """Attention output weights per head, (n_layers, n_heads, d_head, d_model): head h of block l writes
        ``z[..., h, :] @ W_O[l, h]`` into the residual stream (``blocks.l.attn.hook_z`` gives z)."""
        return self.bridge.W_O

    @property
    def W_E(self) -> torch.Tensor:
        """Token embedding, (d_vocab, d_model)."""
        return self.bridge.W_E

    @property
    def rotary(self) -> bool:
        """True when queries and keys are rotated by position (rotary embeddings, Llama family); the angles are
        the hooks ``blocks.{l}.attn.hook_cos`` / ``hook_sin``, (batch, pos, rotary dims); see
        :func:`interp.model.rotate`."""
        return self.bridge.cfg.positional_embedding_type == "rotary"

    @property
    def W_pos(self) -> torch.Tensor | None:
        """Learned positional embedding, (n_ctx, d_model); None for models without one (rotary)."""
        return self.bridge.W_pos if self.bridge.cfg.positional_embedding_type == "standard" else None

    @property
    def W_V(self) -> torch.Tensor:
        """Value weights per head, (n_layers, n_heads, d_model, d_head): ``v = ln1(resid_pre) @ W_V[l, h] + b_V``."""
        return self.bridge.W_V

    @property
    def b_V(self) -> torch.Tensor:
        """Value biases, (n_layers, n_heads, d_head) (zero once folded into ``b_O``)."""
        c = self.bridge.cfg
        return self._bias("b_V", c.n_layers, c.n_heads, c.d_head)

    @property
    def W_Q(self) -> torch.Tensor:
        """Query weights per head, (n_layers, n_heads, d_model, d_head): ``q = ln1(resid_pre) @ W_Q[l, h] + b_Q``
        (before rotary embeddings, where the model has them)."""
        return self.bridge.W_Q

    @property
    def W_K(self) -> torch.Tensor:
        """Key weights per head, (n_layers, n_heads or n_kv_heads, d_model, d_head), like :attr:`W_Q`."""
        return self.bridge.W_K

    @property
    def b_Q(self) -> torch.Tensor:
        """Query biases, (n_layers, n_heads, d_head)."""
        c = self.bridge.cfg
        return self._bias("b_Q", c.n_layers, c.n_heads, c.d_head)

    @property
    def b_K(self) -> torch.Tensor:
        """Key biases, (n_layers, n_heads or n_kv_heads, d_head)."""
        c = self.bridge.cfg
        return self._bias("b_K", c.n_layers, c.n_key_value_heads or c.n_heads, c.d_head)

    @property
    def b_O(self) -> torch.Tensor:
        """Attention output bias, (n_layers, d_model): ``attn_out = sum_h z_h W_O[l, h] + b_O[l]``."""
        c = self.bridge.cfg
        return self._bias("b_O", c.n_layers, c.d_model)

    @property
    def b_U(self) -> torch.Tensor:
        """Unembedding bias, (d_vocab,)."""
        c = self.bridge.cfg
        return self._bias("b_U", c.d_vocab)
