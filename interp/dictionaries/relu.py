"""ReLU + L1 SAEs: the standard one (Bricken et al. 2023), the April-2024 Anthropic variant with the
L1 penalty weighted by decoder norms, and the ReLU transcoder (Dunefsky et al. 2024).

Standard: f = ReLU((x - b_dec) W_enc + b_enc); unit-norm decoder rows (parallel gradient removed);
Anthropic resampling of dead latents. Loss = E sum_dims (y - y_hat)^2 + l1_coeff * E sum_i f_i.

``relu_normweighted``: f = ReLU(x W_enc + b_enc) (no pre-encoder bias); the decoder is unconstrained and
the penalty is l1_coeff * E sum_i f_i ||W_dec,i||; atoms start as random directions of norm 0.1 with
W_enc = W_dec^T; l1_coeff warms up linearly over the first ``l1_warmup`` of the steps.

``relu_unitnorm`` (O'Neill & Bui 2024, the discrete-SAE circuits of specs §8): the standard SAE with each
latent's encoder vector (a column of W_enc) held at unit norm too, like its decoder row (parallel gradient
removed, renormalised after each step), and no resampling. The pre-encoder bias is b_dec (tied). Their loss
is MSE averaged over dimensions, ours summed, so their lambda is our ``l1_coeff / d_in``.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from interp.dictionaries.base import DictionaryConfig, StepOutput, TrainBatch, TrainState
from interp.dictionaries.linear import LINEAR_DEFAULTS, LinearSAE
from interp.dictionaries.registry import register


def warmup(state: TrainState, fraction: float) -> float:
    """Linear ramp from 0 to 1 over the first ``fraction`` of the run (1 when fraction is 0)."""
    if fraction <= 0:
        return 1.0
    return min(1.0, (state.step + 1) / max(1.0, fraction * state.n_steps))


def sum_sq_error(y_hat: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """E_batch sum_dims (y - y_hat)^2."""
    return (y_hat - y).pow(2).sum(1).mean()


@register(
    "relu", description="ReLU SAE with L1 penalty, unit-norm decoder and resampling (Bricken et al. 2023)"
)
@register(
    "relu_normweighted",
    preset={"norm_weighted": True, "resample": False, "l1_warmup": 0.05},
    description="ReLU SAE, L1 weighted by decoder norms, unconstrained decoder (Anthropic, April 2024)",
)
@register(
    "relu_unitnorm",
    preset={"unit_norm_encoder": True, "resample": False},
    description="ReLU SAE with L1, unit-norm encoder and decoder vectors, tied bias (O'Neill & Bui 2024)",
)
@register(
    "transcoder",
    preset={"transcoder": True, "b_dec_init": "mean"},
    description="ReLU + L1 transcoder from one hook to another (Dunefsky et al. 2024)",
)
class ReluSAE(LinearSAE):
    """ReLU SAE trained with an L1 penalty."""

    param_defaults: dict[str, Any] = {
        **LINEAR_DEFAULTS,
        "l1_coeff": 5.0,
        "l1_warmup": 0.0,
        "norm_weighted": False,
        "resample": True,
        "unit_norm_encoder": False,
    }

    def __init__(self, cfg: DictionaryConfig):
        super().__init__(cfg)
        self.unit_norm_decoder = not self.p["norm_weighted"]
        if self.p["norm_weighted"]:
            with torch.no_grad():
                self.W_dec_.mul_(0.1)
                if cfg.d_in == cfg.d_out:
                    self.W_enc_.copy_(self.W_dec_.T)

    def pre_acts(self, x: torch.Tensor) -> torch.Tensor:
        if self.p["norm_weighted"]:
            return x @ self.W_enc_ + self.b_enc
        return super().pre_acts(x)

    def encode_normalized(self, x: torch.Tensor, **kw: Any) -> torch.Tensor:
        return F.relu(self.pre_acts(x))

    def constrain_grads(self) -> None:
        super().constrain_grads()
        if self.p["unit_norm_encoder"] and self.W_enc_.grad is not None:
            w, g = self.W_enc_.detach(), self.W_enc_.grad  # latent i's encoder vector is column i
            g.sub_(w * (g * w).sum(0) / w.square().sum(0).clamp_min(1e-24))

    def constrain_weights(self) -> None:
        super().constrain_weights()
        if self.p["unit_norm_encoder"]:
            with torch.no_grad():
                self.W_enc_.div_(self.W_enc_.norm(dim=0, keepdim=True).clamp_min(1e-12))

    def training_step(self, batch: TrainBatch, state: TrainState) -> StepOutput:
        f = F.relu(self.pre_acts(batch.x))
        y_hat = f @ self.W_dec_ + self.b_dec + self.skip_path(batch.x)
        mse = sum_sq_error(y_hat, batch.y)
        weighted = f * self.W_dec_.norm(dim=1) if self.p["norm_weighted"] else f
        l1 = weighted.sum(1).mean()
        loss = mse + float(self.p["l1_coeff"]) * warmup(state, float(self.p["l1_warmup"])) * l1
        active = f > 0
        return StepOutput(
            loss, y_hat, active.any(0), float(active.sum()) / len(f), {"mse": mse.item(), "l1": l1.item()}
        )
