"""Post-hoc codebook features (Tamkin, Taufeeque, Goodman 2023) as a k-sparse vector quantiser.

x~ = LayerNorm(x) (per-token standardisation, no affine: with only a reconstruction loss the affine is
redundant because the codes absorb it); sim_i = x~ . c_i / ||c_i||; S = top-k(sim); y = mean_{i in S} c_i.
Loss = E sum_dims (y - x~)^2, which updates only the codes (the straight-through input path matters only
when the LM is finetuned, which this post-hoc dictionary does not do). ``forward`` undoes the
LayerNorm with each token's own mean and std, so reconstructions are in the input's scale;
``decode`` returns the LayerNorm-space vector y.
Codes: ``encode`` gives 1/k at the selected codes, so ``decode(encode(x)) = y``. W_dec is the codebook C
(d_sae, d_in); W_enc is the normalised codebook transposed (the selection directions).
Init: k-means on LayerNorm-ed activations (``kmeans_init``). Revival: dead codes are replaced by batch
inputs plus noise of relative size ``replace_rho``.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from interp.dictionaries.base import Dictionary, DictionaryConfig, StepOutput, TrainBatch, TrainState, revive_at_rows
from interp.dictionaries.registry import register
from interp.dictionaries.sparse import sparse_decode
from interp.errors import InterpError

_EPS = 1e-5


def _layernorm(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    mu = x.mean(-1, keepdim=True)
    std = (x.var(-1, keepdim=True, unbiased=False) + _EPS).sqrt()
    return (x - mu) / std, mu, std


@torch.no_grad()
def kmeans(x: torch.Tensor, n: int, generator: torch.Generator, iters: int = 20) -> torch.Tensor:
    """Lloyd's algorithm from n random rows of x (M, d); empty clusters keep their centre."""
    centres = x[torch.randperm(len(x), generator=generator)[:n]].clone()
    if len(centres) < n:
        extra = x[torch.randint(len(x), (n - len(centres),), generator=generator)]
        centres = torch.cat([centres, extra + 0.01 * torch.randn(extra.shape, generator=generator)])
    for _ in range(iters):
        assign = torch.cdist(x, centres).argmin(1)
        sums = torch.zeros_like(centres).index_add_(0, assign, x)
        counts = torch.bincount(assign, minlength=n).to(x.dtype)
        filled = counts > 0
        centres[filled] = sums[filled] / counts[filled, None]
    return centres


@register(
    "codebook", description="Post-hoc codebook features: LayerNorm, top-k codes by cosine, mean of codes"
)
class Codebook(Dictionary):
    """Codebook: each token becomes the mean of its k best-matching codes."""

    param_defaults: dict[str, Any] = {"k": 8, "kmeans_init": True, "replace_rho": 0.01, "init_seed": 0}

    def __init__(self, cfg: DictionaryConfig):
        super().__init__(cfg)
        if cfg.is_transcoder or cfg.d_out != cfg.d_in:
            raise InterpError("A codebook reconstructs its own input; it cannot be a transcoder.")
        gen = torch.Generator().manual_seed(int(self.p["init_seed"]))
        self.C = nn.Parameter(torch.randn(cfg.d_sae, cfg.d_in, generator=gen))

    @property
    def W_dec(self) -> torch.Tensor:
        return self.C

    @property
    def W_enc(self) -> torch.Tensor:
        return (self.C / self.C.norm(dim=1, keepdim=True).clamp_min(1e-12)).T

    def _select(self, xt: torch.Tensor) -> torch.Tensor:
        k = min(int(self.p["k"]), self.cfg.d_sae)
        return (xt @ self.W_enc.detach()).topk(k, dim=1, sorted=False).indices

    def encode_normalized(self, x: torch.Tensor, **kw: Any) -> torch.Tensor:
        idx = self._select(_layernorm(x)[0])
        f = x.new_zeros(x.shape[0], self.cfg.d_sae)
        return f.scatter_(1, idx, 1.0 / idx.shape[1])

    def decode_normalized(self, f: torch.Tensor) -> torch.Tensor:
        return f @ self.C

    def reconstruct_normalized(self, xn: torch.Tensor, **kw: Any) -> torch.Tensor:
        xt, mu, std = _layernorm(xn)
        return self.decode_normalized(self.encode_normalized(xn)) * std + mu

    def training_step(self, batch: TrainBatch, state: TrainState) -> StepOutput:
        xt, mu, std = _layernorm(batch.x)
        idx = self._select(xt)
        y = sparse_decode(idx, torch.full(idx.shape, 1.0 / idx.shape[1], dtype=xt.dtype), self.C)
        mse = (y - xt).pow(2).sum(1).mean()
        fired = torch.zeros(self.cfg.d_sae, dtype=torch.bool).index_fill_(0, idx.flatten(), True)
        return StepOutput(mse, y.detach() * std + mu, fired, float(idx.shape[1]), {"mse": mse.item()})

    @torch.no_grad()
    def init_from_data(self, x: torch.Tensor, y: torch.Tensor, generator: torch.Generator) -> None:
        if self.p["kmeans_init"]:
            self.C.copy_(kmeans(_layernorm(x)[0], self.cfg.d_sae, generator))

    @torch.no_grad()
    def revive(
        self, dead: torch.Tensor, batch: TrainBatch, generator: torch.Generator
    ) -> dict[str, tuple[int, torch.Tensor]]:
        """Re-point dead codes at randomly drawn (normalised) batch rows, plus noise of relative size rho."""

        def repoint(idx: torch.Tensor, rows: torch.Tensor) -> dict[str, tuple[int, torch.Tensor]]:
            xt = _layernorm(rows)[0]
            noise = torch.randn(idx.numel(), self.cfg.d_in, generator=generator)
            self.C[idx] = xt + float(self.p["replace_rho"]) * xt.norm(dim=1, keepdim=True) / self.cfg.d_in**0.5 * noise
            return {"C": (0, idx)}

        return revive_at_rows(dead, batch.x, generator, repoint)
