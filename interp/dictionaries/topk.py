"""TopK SAEs (Gao et al. 2024), their gradient-guided variant g-SAE (Olmo et al.), skip transcoders
(Paulo et al. 2025) and BatchTopK (Bussmann et al. 2024).

TopK: z_pre = (x - b_in) W_enc + b_enc; keep the k largest per row, ReLU them; x_hat = z W_dec + b_dec.
The training step runs one dense encoder matmul without a graph, then differentiates only the k (plus
k_aux) selected pre-activations and decodes through the selected atoms (``embedding_bag``), so the
backward pass never materialises a dense (N, d_sae) gradient.

Loss: normalised MSE (OpenAI's NMSE: squared error over the batch's variance) + aux_coef * AuxK, where
AuxK reconstructs the detached residual with the top ``k_aux`` dead latents of each row.

g-SAE: selection score s = z + beta * z * |W_dec g| with g = d(LM loss)/dx from the store
(``interp cache --with-grads``); values stay z. With ``beta = 0`` (or no gradient at inference) it is TopK.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from interp.dictionaries.base import DictionaryConfig, StepOutput, TrainBatch, TrainState
from interp.dictionaries.linear import (
    LINEAR_DEFAULTS,
    LinearSAE,
    auxk_loss,
    fired_sparse,
    normalized_mse,
    scatter_dense,
)
from interp.dictionaries.registry import register
from interp.dictionaries.sparse import LinearCode, sparse_code, topk_indices


@register("topk", description="TopK SAE with AuxK and tied init (Gao et al. 2024)")
@register(
    "gsae", preset={"beta": 1.0}, description="TopK whose selection is guided by the LM-loss gradient (g-SAE)"
)
@register(
    "skip_transcoder",
    preset={"transcoder": True, "skip": True},
    description="TopK transcoder plus a linear skip path W_skip, initialised to 0 (Paulo et al. 2025)",
)
class TopKSAE(LinearSAE):
    """TopK SAE: exactly k active latents per token; dead latents revived by the AuxK loss."""

    param_defaults: dict[str, Any] = {
        **LINEAR_DEFAULTS,
        "k": 32,
        "k_aux": 512,
        "aux_coef": 1 / 32,
        "beta": 0.0,
    }

    @property
    def needs_grads(self) -> bool:  # type: ignore[override]
        return float(self.p["beta"]) > 0

    def _select(self, z_pre: torch.Tensor, grad: torch.Tensor | None) -> torch.Tensor:
        k = min(int(self.p["k"]), z_pre.shape[1])
        score = z_pre
        if grad is not None and float(self.p["beta"]) > 0:
            z = F.relu(z_pre)
            score = z + float(self.p["beta"]) * z * (grad @ self.W_dec_.detach().T).abs()
        return topk_indices(score, k)

    def encode_normalized(self, x: torch.Tensor, grad: torch.Tensor | None = None, **kw: Any) -> torch.Tensor:
        """(N, d_in) -> (N, d_sae) with at most k non-zeros per row; ``grad`` enables g-SAE selection."""
        z_pre = self.pre_acts(x)
        idx = self._select(z_pre, grad)
        return scatter_dense(idx, F.relu(z_pre.gather(1, idx)), self.cfg.d_sae)

    def training_step(self, batch: TrainBatch, state: TrainState) -> StepOutput:
        z_pre = self.train_preacts(batch.x)
        idx = self._select(z_pre, batch.grad)
        code = LinearCode(z_pre, batch.x, self.input_bias(), self.W_enc_, self.b_enc, self.W_dec_)
        y_sparse, vals = sparse_code(code, idx)
        y_hat = y_sparse + self.b_dec + self.skip_path(batch.x)
        mse = normalized_mse(y_hat, batch.y)
        aux = auxk_loss(code, batch.y, y_hat, state.dead, int(self.p["k_aux"]))
        loss = mse + float(self.p["aux_coef"]) * aux
        l0 = float((vals > 0).sum()) / len(vals)
        return StepOutput(
            loss, y_hat, fired_sparse(idx, vals, self.cfg.d_sae), l0, {"nmse": mse.item(), "auxk": aux.item()}
        )


def batch_topk(a: torch.Tensor, k: int) -> torch.Tensor:
    """Keep the k * N largest entries of non-negative ``a`` (N, d_sae) over the whole batch; zero the rest."""
    flat = a.flatten()
    idx = flat.topk(min(k * a.shape[0], flat.numel()), sorted=False).indices
    mask = torch.zeros_like(flat, dtype=torch.bool).index_fill_(0, idx, True)
    return (a * mask.view_as(a)).view_as(a)


@torch.no_grad()
def update_threshold(threshold: torch.Tensor, f: torch.Tensor, rate: float = 0.01) -> None:
    """theta <- (1 - rate) theta + rate * min(positive kept activation); the first batch sets it."""
    pos = f[f > 0]
    if pos.numel() == 0:
        return
    m = pos.min()
    threshold.copy_(m if threshold < 0 else (1 - rate) * threshold + rate * m)


BATCHTOPK_DEFAULTS: dict[str, Any] = {**LINEAR_DEFAULTS, "k": 32, "k_aux": 512, "aux_coef": 1 / 32,
                                      "threshold_rate": 0.01}
"""Parameters of every BatchTopK-trained architecture (BatchTopK, Matryoshka)."""


def threshold_encode(a: torch.Tensor, threshold: torch.Tensor) -> torch.Tensor:
    """Inference rule of BatchTopK-trained codes: keep a_i > theta (all of them before theta is set)."""
    return a * (a > threshold.clamp_min(0))


@register("batchtopk", description="BatchTopK SAE with an EMA inference threshold (Bussmann et al. 2024)")
class BatchTopKSAE(LinearSAE):
    """BatchTopK: k * batch latents per batch in training; a learned global threshold theta at inference."""

    param_defaults: dict[str, Any] = BATCHTOPK_DEFAULTS
    threshold: torch.Tensor
    """() buffer: the inference threshold theta (-1 until the first training batch sets it)."""

    def __init__(self, cfg: DictionaryConfig):
        super().__init__(cfg)
        self.register_buffer("threshold", torch.tensor(-1.0))

    def encode_normalized(self, x: torch.Tensor, **kw: Any) -> torch.Tensor:
        return threshold_encode(F.relu(self.pre_acts(x)), self.threshold)

    def training_step(self, batch: TrainBatch, state: TrainState) -> StepOutput:
        z_pre, f = batch_topk_codes(self, batch.x)
        y_hat = f @ self.W_dec_ + self.b_dec + self.skip_path(batch.x)
        mse = normalized_mse(y_hat, batch.y)
        return batch_topk_step(self, batch, state, z_pre, f, y_hat, mse, {"nmse": mse.item()})


def batch_topk_codes(sae: LinearSAE, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Pre-activations (N, d_sae) of normalised inputs ``x`` and the batch's top ``k * N`` ReLU'd codes."""
    z_pre = sae.pre_acts(x)
    return z_pre, batch_topk(F.relu(z_pre), int(sae.p["k"]))


def batch_topk_step(
    sae: LinearSAE,
    batch: TrainBatch,
    state: TrainState,
    z_pre: torch.Tensor,
    f: torch.Tensor,
    y_hat: torch.Tensor,
    recon: torch.Tensor,
    terms: dict[str, float],
) -> StepOutput:
    """The end of a BatchTopK-style training step: AuxK on the residual, the threshold EMA, the output.

    ``z_pre`` (N, d_sae) are pre-activations, ``f`` the kept codes and ``recon`` the architecture's
    reconstruction loss; ``sae.threshold`` is updated in place.
    """
    code = LinearCode(z_pre.detach(), batch.x, sae.input_bias(), sae.W_enc_, sae.b_enc, sae.W_dec_)
    aux = auxk_loss(code, batch.y, y_hat, state.dead, int(sae.p["k_aux"]))
    threshold: torch.Tensor = sae.threshold  # type: ignore[assignment]  # a buffer of both BatchTopK kinds
    update_threshold(threshold, f.detach(), float(sae.p["threshold_rate"]))
    active = f > 0
    return StepOutput(recon + float(sae.p["aux_coef"]) * aux, y_hat, active.any(0), float(active.sum()) / len(f),
                      {**terms, "auxk": aux.item()})
