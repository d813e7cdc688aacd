"""Attention-output SAEs (Kissane et al. 2024): any architecture trained on ``blocks.L.attn.hook_z``.

Store rows at hook_z are the heads' outputs concatenated, (n_heads * d_head) wide, head-major (the
store's ``hook_shape`` is [n_heads, d_head]), so a dictionary's W_dec row splits into per-head blocks.
"""

from __future__ import annotations

import torch

from interp.dictionaries.base import Dictionary
from interp.errors import InterpError


def head_attribution(dictionary: Dictionary, n_heads: int) -> torch.Tensor:
    """(d_sae, n_heads) weight-based attribution: w_ih = ||W_dec[i, h]|| / sum_h' ||W_dec[i, h']||.

    Rows sum to 1 (rows of an all-zero atom are 0). A head's top features are the top of its column.
    """
    W = dictionary.W_dec.detach()
    d_sae, d_out = W.shape
    if d_out % n_heads:
        raise InterpError(
            f"The dictionary's output width {d_out} is not a multiple of n_heads={n_heads}; "
            "head attribution needs a dictionary trained on attn.hook_z."
        )
    norms = W.view(d_sae, n_heads, d_out // n_heads).norm(dim=-1)
    return norms / norms.sum(1, keepdim=True).clamp_min(1e-12)
