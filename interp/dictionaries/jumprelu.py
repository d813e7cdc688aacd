"""JumpReLU SAE (Rajamanoharan et al. 2024b).

f = pi * H(pi - theta) with pi = (x - b_dec) W_enc + b_enc and a per-latent threshold theta = exp(t).
Loss = E sum_dims (y - y_hat)^2 + l0_coeff * E ||f||_0, with straight-through pseudo-derivatives
(rectangle kernel K(u) = 1[|u| < 1/2], bandwidth eps):
  df/dtheta := -(theta/eps) K((pi - theta)/eps),   dH/dtheta := -(1/eps) K((pi - theta)/eps).
These are derivatives with respect to theta; autograd then applies the chain rule through theta = exp(t)
(as circuit-tracer does; the BatchTopK repo drops that factor of theta). pi gets no gradient from L0.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from interp.dictionaries.base import DictionaryConfig, StepOutput, TrainBatch, TrainState
from interp.dictionaries.linear import LINEAR_DEFAULTS, LinearSAE
from interp.dictionaries.registry import register
from interp.dictionaries.relu import sum_sq_error, warmup


def _kernel(u: torch.Tensor) -> torch.Tensor:
    return (u.abs() < 0.5).to(u.dtype)


class _JumpReLU(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, pi: torch.Tensor, theta: torch.Tensor, eps: float) -> torch.Tensor:
        ctx.save_for_backward(pi, theta)
        ctx.eps = eps
        return pi * (pi > theta)

    @staticmethod
    def backward(ctx: Any, g: torch.Tensor) -> tuple[Any, ...]:
        pi, theta = ctx.saved_tensors
        g_pi = g * (pi > theta)
        g_theta = (-(theta / ctx.eps) * _kernel((pi - theta) / ctx.eps) * g).sum(0)
        return g_pi, g_theta, None


class _Step(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, pi: torch.Tensor, theta: torch.Tensor, eps: float) -> torch.Tensor:
        ctx.save_for_backward(pi, theta)
        ctx.eps = eps
        return (pi > theta).to(pi.dtype)

    @staticmethod
    def backward(ctx: Any, g: torch.Tensor) -> tuple[Any, ...]:
        pi, theta = ctx.saved_tensors
        g_theta = (-(1 / ctx.eps) * _kernel((pi - theta) / ctx.eps) * g).sum(0)
        return None, g_theta, None


@register(
    "jumprelu", description="JumpReLU SAE with straight-through L0 penalty (Rajamanoharan et al. 2024b)"
)
class JumpReluSAE(LinearSAE):
    """JumpReLU SAE: learned per-latent thresholds, L0 penalty through straight-through estimators.

    The three settings that depend on the data's scale default to values derived from the init sample
    (``init_from_data``), so one default holds on data of any scale:

    - ``l0_coeff`` = ``sparsity`` x E||y - b_dec||^2: a latent is worth firing only where it explains at least
      that share of a sample's centred energy (the squared error grows with the square of the scale);
    - ``threshold_init`` = sqrt(``l0_coeff``): the activation whose square pays that cost, where the thresholds
      settle; starting there matters, because Adam moves a log-threshold by about ``lr`` per step;
    - ``bandwidth`` = ``threshold_init`` / 2.

    A number given for any of them is used as it is. The values used are kept in buffers (``l0_coeff_``,
    ``bandwidth_``; the threshold is a parameter), so a resumed run goes on with them.
    """

    param_defaults: dict[str, Any] = {
        **LINEAR_DEFAULTS,
        "l0_coeff": None,
        "bandwidth": None,
        "threshold_init": None,
        "sparsity": 0.02,
        "l0_warmup": 0.1,
    }
    derived = ("l0_coeff_", "bandwidth_")
    l0_coeff_: torch.Tensor
    """() buffer: the L0 coefficient in use (-1 until derived from the data)."""
    bandwidth_: torch.Tensor
    """() buffer: the straight-through bandwidth in use (-1 until derived from the data)."""

    def __init__(self, cfg: DictionaryConfig):
        super().__init__(cfg)
        theta = self.p["threshold_init"]
        self.log_threshold = torch.nn.Parameter(torch.full((cfg.d_sae,), math.log(float(theta or 0.001))))
        unset = -1.0  # derived from the data by init_from_data
        self.register_buffer("l0_coeff_", torch.tensor(unset if self.p["l0_coeff"] is None else self.p["l0_coeff"]))
        self.register_buffer("bandwidth_", torch.tensor(unset if self.p["bandwidth"] is None else self.p["bandwidth"]))

    @property
    def threshold(self) -> torch.Tensor:
        return self.log_threshold.exp()

    @torch.no_grad()
    def derive(self, x: torch.Tensor, y: torch.Tensor) -> None:
        if self.p["l0_coeff"] is None:
            self.l0_coeff_.fill_(float(self.p["sparsity"]) * self.centred_energy(y))
        theta = self.p["threshold_init"] or float(self.l0_coeff_.sqrt().clamp_min(1e-6))
        if self.p["threshold_init"] is None:
            self.log_threshold.fill_(math.log(theta))
        if self.p["bandwidth"] is None:
            self.bandwidth_.fill_(theta / 2)

    def encode_normalized(self, x: torch.Tensor, **kw: Any) -> torch.Tensor:
        pi = self.pre_acts(x)
        return pi * (pi > self.threshold)

    def training_step(self, batch: TrainBatch, state: TrainState) -> StepOutput:
        if self.l0_coeff_ < 0 or self.bandwidth_ < 0:  # trained without init_from_data
            self.derive(batch.x, batch.y)
        pi = self.pre_acts(batch.x)
        theta, eps = self.threshold, float(self.bandwidth_)
        f = _JumpReLU.apply(pi, theta, eps)
        y_hat = f @ self.W_dec_ + self.b_dec + self.skip_path(batch.x)
        mse = sum_sq_error(y_hat, batch.y)
        l0 = _Step.apply(pi.detach(), theta, eps).sum(1).mean()
        loss = mse + float(self.l0_coeff_) * warmup(state, float(self.p["l0_warmup"])) * l0
        active = f > 0
        return StepOutput(loss, y_hat, active.any(0), l0.item(), {"mse": mse.item(), "l0": l0.item()})
