"""Matryoshka SAE with fixed nested groups and BatchTopK (Bussmann, Nabeshima, Karvonen, Nanda 2025).

The latents are split into groups with cumulative prefix ends m_1 < ... < m_G = d_sae. With a = the
BatchTopK code over all latents and x_hat_g = sum_{j <= m_g} a_j d_j + b_dec:
  L = (NMSE(b_dec, y) + sum_g NMSE(x_hat_g, y)) / (G + 1) + aux_coef * AuxK(y - x_hat_G).
The reference uses plain MSE; NMSE differs by a per-batch constant. Inference: the BatchTopK threshold.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from interp.dictionaries.base import DictionaryConfig, StepOutput, TrainBatch, TrainState
from interp.dictionaries.linear import LinearSAE, normalized_mse
from interp.dictionaries.registry import register
from interp.dictionaries.topk import BATCHTOPK_DEFAULTS, batch_topk_codes, batch_topk_step, threshold_encode
from interp.errors import InterpError

DEFAULT_FRACTIONS = (1 / 16, 1 / 16, 1 / 8, 1 / 4, 1 / 2)


def prefix_ends(d_sae: int, group_sizes: list[int] | None) -> list[int]:
    """Cumulative group ends; default sizes are d_sae x (1/16, 1/16, 1/8, 1/4, 1/2)."""
    if group_sizes is None:
        sizes = [max(1, round(d_sae * f)) for f in DEFAULT_FRACTIONS[:-1]]
        group_sizes = [*sizes, d_sae - sum(sizes)]
    if sum(group_sizes) != d_sae or min(group_sizes) < 1:
        raise InterpError(f"Matryoshka group_sizes {group_sizes} must be positive and sum to d_sae={d_sae}.")
    ends, total = [], 0
    for s in group_sizes:
        total += s
        ends.append(total)
    return ends


@register(
    "matryoshka", description="Matryoshka BatchTopK SAE with nested prefix losses (Bussmann et al. 2025)"
)
class MatryoshkaSAE(LinearSAE):
    """Matryoshka SAE: every prefix of the dictionary must reconstruct the input on its own."""

    param_defaults: dict[str, Any] = {**BATCHTOPK_DEFAULTS, "group_sizes": None}
    threshold: torch.Tensor
    """() buffer: the BatchTopK inference threshold theta (-1 until the first training batch sets it)."""

    def __init__(self, cfg: DictionaryConfig):
        super().__init__(cfg)
        self.ends = prefix_ends(cfg.d_sae, self.p["group_sizes"])
        self.register_buffer("threshold", torch.tensor(-1.0))

    def encode_normalized(self, x: torch.Tensor, **kw: Any) -> torch.Tensor:
        return threshold_encode(F.relu(self.pre_acts(x)), self.threshold)

    def training_step(self, batch: TrainBatch, state: TrainState) -> StepOutput:
        z_pre, f = batch_topk_codes(self, batch.x)
        y_hat = self.b_dec.expand_as(batch.y) + self.skip_path(batch.x)
        losses = [normalized_mse(y_hat, batch.y)]
        start = 0
        for end in self.ends:
            y_hat = y_hat + f[:, start:end] @ self.W_dec_[start:end]
            losses.append(normalized_mse(y_hat, batch.y))
            start = end
        recon = torch.stack(losses).mean()
        return batch_topk_step(self, batch, state, z_pre, f, y_hat, recon,
                               {"nmse": losses[-1].item(), "prefix_nmse": recon.item()})
