"""Matching-pursuit dictionary (MP-SAE; Costa, Fel, Lubana, Tolooshams, Ba 2025).

Tied dictionary D (d_sae, d_in) with unit-norm rows. Encoding is unrolled matching pursuit:
  r = x - b_pre; z = 0; repeat: c = r D^T; j = argmax c; z_j += c_j; r -= c_j d_j.
Codes are non-negative (an atom is chosen only with a positive correlation, as in the synthetic
reference) and an atom may be chosen again. ||r|| never increases, so more steps never hurt.
Training runs a fixed ``k`` steps and minimises E sum_dims (x - x_hat)^2, differentiating through the
correlations and residual updates (the argmax is not differentiated). At inference ``encode`` takes
``n_steps`` (default k) and ``threshold`` (stop a row once ||r|| < threshold; then up to ``max_steps``).
W_dec is D; W_enc is D^T (the correlation directions).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from interp.dictionaries.base import Dictionary, DictionaryConfig, StepOutput, TrainBatch, TrainState, revive_at_rows
from interp.dictionaries.linear import geometric_median, remove_parallel_grad
from interp.dictionaries.registry import register
from interp.errors import InterpError


@register(
    "mp", description="Matching-pursuit SAE: k greedy residual steps over a unit-norm dictionary (Costa 2025)"
)
class MatchingPursuit(Dictionary):
    """Matching-pursuit dictionary: sparsity is the number of pursuit steps, no penalty."""

    param_defaults: dict[str, Any] = {
        "k": 16,
        "threshold": None,
        "max_steps": None,
        "use_bias": True,
        "init_seed": 0,
    }

    def __init__(self, cfg: DictionaryConfig):
        super().__init__(cfg)
        if cfg.is_transcoder or cfg.d_out != cfg.d_in:
            raise InterpError("Matching pursuit reconstructs its own input; it cannot be a transcoder.")
        gen = torch.Generator().manual_seed(int(self.p["init_seed"]))
        D = torch.randn(cfg.d_sae, cfg.d_in, generator=gen)
        self.D = nn.Parameter(D / D.norm(dim=1, keepdim=True))
        self.b_pre = nn.Parameter(torch.zeros(cfg.d_in))

    @property
    def W_dec(self) -> torch.Tensor:
        return self.D

    @property
    def W_enc(self) -> torch.Tensor:
        return self.D.T

    def pursue(
        self, x: torch.Tensor, n_steps: int, threshold: float | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Run ``n_steps`` of MP on normalised x (N, d_in); returns codes (N, d_sae) and the residual."""
        r = x - self.b_pre
        z = x.new_zeros(x.shape[0], self.cfg.d_sae)
        for _ in range(n_steps):
            c = r @ self.D.T  # (N, d_sae)
            val, j = c.max(dim=1)
            val = val.clamp_min(0)
            if threshold is not None:
                val = val * (r.norm(dim=1) >= threshold)
            val = val.to(z.dtype)  # under autocast the correlations may be bf16
            z = z.scatter_add(1, j[:, None], val[:, None])
            r = r - val[:, None] * self.D[j]
            if threshold is not None and not bool((r.norm(dim=1) >= threshold).any()):
                break
        return z, r

    def encode_normalized(
        self, x: torch.Tensor, n_steps: int | None = None, threshold: float | None = None, **kw: Any
    ) -> torch.Tensor:
        threshold = threshold if threshold is not None else self.p["threshold"]
        if n_steps is None:
            n_steps = (
                int(self.p["max_steps"] or 4 * self.p["k"]) if threshold is not None else int(self.p["k"])
            )
        return self.pursue(x, n_steps, threshold)[0]

    def decode_normalized(self, f: torch.Tensor) -> torch.Tensor:
        return f @ self.D + self.b_pre

    def training_step(self, batch: TrainBatch, state: TrainState) -> StepOutput:
        z, r = self.pursue(batch.x, int(self.p["k"]))
        y_hat = batch.x - r
        mse = r.pow(2).sum(1).mean()
        active = z > 0
        return StepOutput(mse, y_hat, active.any(0), float(active.sum()) / len(z), {"mse": mse.item()})

    @torch.no_grad()
    def init_from_data(self, x: torch.Tensor, y: torch.Tensor, generator: torch.Generator) -> None:
        if self.p["use_bias"]:
            self.b_pre.copy_(geometric_median(x))

    def constrain_grads(self) -> None:
        if not self.p["use_bias"] and self.b_pre.grad is not None:
            self.b_pre.grad.zero_()
        if self.D.grad is not None:
            remove_parallel_grad(self.D)

    def constrain_weights(self) -> None:
        with torch.no_grad():
            self.D.div_(self.D.norm(dim=1, keepdim=True).clamp_min(1e-12))

    @torch.no_grad()
    def revive(
        self, dead: torch.Tensor, batch: TrainBatch, generator: torch.Generator
    ) -> dict[str, tuple[int, torch.Tensor]]:
        """Point dead atoms at the residuals of randomly drawn rows of the batch."""

        def repoint(idx: torch.Tensor, rows: torch.Tensor) -> dict[str, tuple[int, torch.Tensor]]:
            r = self.pursue(rows, int(self.p["k"]))[1]
            self.D[idx] = r / r.norm(dim=1, keepdim=True).clamp_min(1e-12)
            return {"D": (0, idx)}

        return revive_at_rows(dead, batch.x, generator, repoint)
