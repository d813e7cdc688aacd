"""Gated SAE (Rajamanoharan et al. 2024a).

x_bar = x - b_dec; pi_gate = x_bar W_gate + b_gate; pi_mag = x_bar (W_gate * exp(r_mag)) + b_mag;
f = H(pi_gate) * ReLU(pi_mag); x_hat = f W_dec + b_dec.
Loss = ||y - y_hat||^2 + l1_coeff ||ReLU(pi_gate)||_1 + ||y - (ReLU(pi_gate) sg(W_dec) + sg(b_dec))||^2.
W_enc is W_gate. Unit-norm decoder and Anthropic resampling, as in the original.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from interp.dictionaries.base import DictionaryConfig, StepOutput, TrainBatch, TrainState
from interp.dictionaries.linear import LINEAR_DEFAULTS, LinearSAE
from interp.dictionaries.registry import register
from interp.dictionaries.relu import sum_sq_error, warmup


@register(
    "gated", description="Gated SAE: gate/magnitude paths with an auxiliary loss (Rajamanoharan et al. 2024a)"
)
class GatedSAE(LinearSAE):
    """Gated SAE: a gate decides which latents fire, a magnitude path sets their values.

    The L1 coefficient depends on the data's scale (the penalty grows linearly with it, the squared error
    quadratically), so by default it is derived from the init sample: ``l1_coeff`` = ``sparsity`` x
    sqrt(E||y - b_dec||^2). A number given for ``l1_coeff`` is used as it is. The value used is kept in the
    ``l1_coeff_`` buffer, so a resumed run goes on with it.
    """

    param_defaults: dict[str, Any] = {
        **LINEAR_DEFAULTS,
        "l1_coeff": None,
        "sparsity": 0.65,
        "l1_warmup": 0.0,
        "resample": True,
    }
    derived = ("l1_coeff_",)
    l1_coeff_: torch.Tensor
    """() buffer: the L1 coefficient in use (-1 until derived from the data)."""

    def __init__(self, cfg: DictionaryConfig):
        super().__init__(cfg)
        self.r_mag = nn.Parameter(torch.zeros(cfg.d_sae))
        self.b_mag = nn.Parameter(torch.zeros(cfg.d_sae))
        given = self.p["l1_coeff"]
        self.register_buffer("l1_coeff_", torch.tensor(-1.0 if given is None else float(given)))

    @torch.no_grad()
    def derive(self, x: torch.Tensor, y: torch.Tensor) -> None:
        if self.p["l1_coeff"] is None:
            self.l1_coeff_.fill_(float(self.p["sparsity"]) * self.centred_energy(y) ** 0.5)

    def _paths(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        xc = x - self.input_bias()
        gate = xc @ self.W_enc_ + self.b_enc
        mag = xc @ (self.W_enc_ * self.r_mag.exp()) + self.b_mag
        return gate, mag

    def encode_normalized(self, x: torch.Tensor, **kw: Any) -> torch.Tensor:
        gate, mag = self._paths(x)
        return (gate > 0) * F.relu(mag)

    def training_step(self, batch: TrainBatch, state: TrainState) -> StepOutput:
        if self.l1_coeff_ < 0:  # trained without init_from_data
            self.derive(batch.x, batch.y)
        gate, mag = self._paths(batch.x)
        f = (gate > 0) * F.relu(mag)
        y_hat = f @ self.W_dec_ + self.b_dec + self.skip_path(batch.x)
        mse = sum_sq_error(y_hat, batch.y)
        gate_act = F.relu(gate)
        l1 = gate_act.sum(1).mean()
        aux = sum_sq_error(gate_act @ self.W_dec_.detach() + self.b_dec.detach(), batch.y)
        loss = mse + float(self.l1_coeff_) * warmup(state, float(self.p["l1_warmup"])) * l1 + aux
        active = f > 0
        return StepOutput(
            loss,
            y_hat,
            active.any(0),
            float(active.sum()) / len(f),
            {"mse": mse.item(), "l1": l1.item(), "aux": aux.item()},
        )

    @torch.no_grad()
    def revive(
        self, dead: torch.Tensor, batch: TrainBatch, generator: torch.Generator
    ) -> dict[str, tuple[int, torch.Tensor]]:
        out = super().revive(dead, batch, generator)
        if out:
            idx = out["b_enc"][1]
            self.r_mag[idx] = 0.0
            self.b_mag[idx] = 0.0
            out.update({"r_mag": (0, idx), "b_mag": (0, idx)})
        return out
