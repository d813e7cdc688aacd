"""The linear encoder/decoder shared by the SAE family, and the pieces of maths they reuse.

``LinearSAE`` is abstract: it owns the parameters (W_enc, b_enc, W_dec, b_dec, and for transcoders an
input bias b_in and optionally W_skip), the unit-norm decoder constraint, data-dependent init and the
sparse TopK machinery. Final classes define only their activation and loss.

Pre-activations: z_pre = (x - b_in) W_enc + b_enc, where b_in is b_dec for autoencoders (the usual
pre-encoder bias) and a separate parameter for transcoders, whose output space differs from the input.
"""

from __future__ import annotations

import math
import threading
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from interp.dictionaries.base import Dictionary, DictionaryConfig, TrainBatch
from interp.dictionaries.sparse import LinearCode, sparse_code, topk_indices

LINEAR_DEFAULTS: dict[str, Any] = {
    "transcoder": False,
    "skip": False,
    "b_dec_init": "geometric_median",
    "init_seed": 0,
}
"""Parameters every LinearSAE architecture accepts: transcoder mode, skip path, b_dec init, init seed."""


class LinearSAE(Dictionary):
    """Abstract: a linear encoder, an activation chosen by the subclass, and a linear decoder."""

    unit_norm_decoder: bool = True
    """Keep W_dec rows at unit norm (with the parallel gradient removed); subclasses may switch it off."""
    derived: tuple[str, ...] = ()
    """Buffers holding settings derived from the init sample by :meth:`derive` (-1 until then). A dictionary
    saved before a subclass had them loads with them unset."""

    def __init__(self, cfg: DictionaryConfig):
        super().__init__(cfg)
        d_in, n, d_out = cfg.d_in, cfg.d_sae, cfg.d_out
        self.W_enc_ = nn.Parameter(torch.empty(d_in, n))
        self.b_enc = nn.Parameter(torch.zeros(n))
        self.W_dec_ = nn.Parameter(torch.empty(n, d_out))
        self.b_dec = nn.Parameter(torch.zeros(d_out))
        self.b_in = nn.Parameter(torch.zeros(d_in)) if self.untied_bias else None
        self.W_skip = nn.Parameter(torch.zeros(d_out, d_in)) if self.p.get("skip") else None
        self.reset_parameters()

    @property
    def untied_bias(self) -> bool:
        return self.cfg.is_transcoder or self.cfg.d_in != self.cfg.d_out

    def reset_parameters(self) -> None:
        """Kaiming-uniform encoder, decoder = encoder transposed ("tied init") with unit-norm rows."""
        gen = torch.Generator().manual_seed(int(self.p.get("init_seed", 0)))
        bound = 1 / math.sqrt(self.cfg.d_in)
        with torch.no_grad():
            self.W_enc_.copy_(torch.rand(self.W_enc_.shape, generator=gen) * 2 * bound - bound)
            if self.cfg.d_in == self.cfg.d_out:
                self.W_dec_.copy_(self.W_enc_.T)
            else:
                self.W_dec_.copy_(torch.randn(self.W_dec_.shape, generator=gen))
            self.W_dec_.div_(self.W_dec_.norm(dim=1, keepdim=True).clamp_min(1e-12))

    @property
    def W_enc(self) -> torch.Tensor:
        return self.W_enc_

    @property
    def W_dec(self) -> torch.Tensor:
        return self.W_dec_

    def input_bias(self) -> torch.Tensor:
        return self.b_in if self.b_in is not None else self.b_dec

    def pre_acts(self, x: torch.Tensor) -> torch.Tensor:
        """(N, d_in) -> (N, d_sae) encoder pre-activations."""
        return (x - self.input_bias()) @ self.W_enc_ + self.b_enc

    @torch.no_grad()
    def train_preacts(self, x: torch.Tensor) -> torch.Tensor:
        """Pre-activations of a training batch, without a graph, for the sparse-code backward.

        On CPU they are written into a buffer reused from step to step and shared by every dictionary
        (a fresh (N, d_sae) tensor costs a page fault per 4 KiB, a fifth of the matmul's own time at
        d_sae 8192), so the result is only valid until the next call; the bias rides in the matmul as an
        extra input column of ones, which is cheaper than addmm's copy of b_enc into every output row."""
        if x.device.type != "cpu" or torch.is_autocast_enabled("cpu"):
            return torch.addmm(self.b_enc, x - self.input_bias(), self.W_enc_)
        (n, d_in), d_sae = x.shape, self.cfg.d_sae
        xa = workspace("x_aug", (n, d_in + 1), x.dtype)
        torch.sub(x, self.input_bias(), out=xa[:, :d_in])
        xa[:, d_in] = 1
        Wa = torch.cat([self.W_enc_, self.b_enc[None]], out=workspace("W_aug", (d_in + 1, d_sae), x.dtype))
        return torch.mm(xa, Wa, out=workspace("preacts", (n, d_sae), x.dtype))

    def decode_normalized(self, f: torch.Tensor) -> torch.Tensor:
        return f @ self.W_dec_ + self.b_dec

    def skip_path(self, x: torch.Tensor) -> torch.Tensor | float:
        """The skip transcoder's linear term x W_skip^T (0 without one)."""
        return x @ self.W_skip.T if self.W_skip is not None else 0.0

    def reconstruct_normalized(self, xn: torch.Tensor, **kw: Any) -> torch.Tensor:
        return self.decode_normalized(self.encode_normalized(xn, **kw)) + self.skip_path(xn)

    # ---- trainer hooks ----------------------------------------------------------------------
    @torch.no_grad()
    def init_from_data(self, x: torch.Tensor, y: torch.Tensor, generator: torch.Generator) -> None:
        """b_dec = geometric median (or mean, ``b_dec_init="mean"``) of the targets; b_in = that of inputs."""
        center = (
            geometric_median if self.p.get("b_dec_init", "geometric_median") == "geometric_median" else _mean
        )
        self.b_dec.copy_(center(y))
        if self.b_in is not None:
            self.b_in.copy_(center(x))
        self.derive(x, y)

    def derive(self, x: torch.Tensor, y: torch.Tensor) -> None:
        """Set the scale-dependent settings left to the data (the ``derived`` buffers) from a sample of inputs
        ``x`` and targets ``y`` in normalised coordinates, after ``b_dec`` is set. Nothing by default."""

    def centred_energy(self, y: torch.Tensor) -> float:
        """E ||y - b_dec||^2 over the rows of ``y``: the scale of the squared error."""
        return float((y - self.b_dec).pow(2).sum(1).mean())

    def _load_from_state_dict(self, state_dict: Any, prefix: str, *args: Any, **kwargs: Any) -> None:
        for name in self.derived:  # dictionaries saved before the buffer existed
            state_dict.setdefault(prefix + name, getattr(self, name).clone())
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def constrain_grads(self) -> None:
        if self.unit_norm_decoder and self.W_dec_.grad is not None:
            remove_parallel_grad(self.W_dec_)

    def constrain_weights(self) -> None:
        if self.unit_norm_decoder:
            with torch.no_grad():
                self.W_dec_.div_(self.W_dec_.norm(dim=1, keepdim=True).clamp_min(1e-12))

    @torch.no_grad()
    def revive(
        self, dead: torch.Tensor, batch: TrainBatch, generator: torch.Generator
    ) -> dict[str, tuple[int, torch.Tensor]]:
        """Anthropic resampling, when ``params["resample"]`` is on: each dead atom points at an input of
        the batch drawn with probability proportional to its squared reconstruction loss squared; its
        encoder column is that direction times 0.2 x the mean alive encoder norm; b_enc = 0."""
        idx = dead.nonzero().flatten()
        if not self.p.get("resample") or idx.numel() == 0:
            return {}
        err = (batch.y - self.reconstruct_normalized(batch.x)).pow(2).sum(1)
        weights = err.pow(2) + 1e-12
        rows = torch.multinomial(
            weights, idx.numel(), replacement=idx.numel() > len(weights), generator=generator
        )
        atoms = _unit(batch.y[rows] - self.b_dec)
        enc = _unit(batch.x[rows] - self.input_bias()) if self.untied_bias else atoms
        alive = ~dead
        enc_norm = self.W_enc_[:, alive].norm(dim=0).mean() if alive.any() else torch.tensor(1.0)
        self.W_dec_[idx] = (
            atoms * self.W_dec_[alive].norm(dim=1).mean() if not self.unit_norm_decoder else atoms
        )
        self.W_enc_[:, idx] = (enc * enc_norm * 0.2).T
        self.b_enc[idx] = 0.0
        return {"W_dec_": (0, idx), "W_enc_": (1, idx), "b_enc": (0, idx)}


_WORKSPACES = threading.local()


def workspace(name: str, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    """A CPU buffer of this thread, reused while shape and dtype hold; training steps run one after
    another, so every dictionary of a sweep shares one set instead of holding its own."""
    cache = _WORKSPACES.__dict__.setdefault("buffers", {})
    buf = cache.get(name)
    if buf is None or buf.shape != shape or buf.dtype != dtype:
        cache[name] = None  # free the old buffer before allocating its replacement
        buf = cache[name] = torch.empty(shape, dtype=dtype)
    return buf


def release_workspaces() -> None:
    """Free this thread's training buffers (the trainer calls it when a run ends)."""
    _WORKSPACES.__dict__.pop("buffers", None)


def _unit(v: torch.Tensor) -> torch.Tensor:
    return v / v.norm(dim=-1, keepdim=True).clamp_min(1e-12)


# ---- shared maths --------------------------------------------------------------------------------
def _mean(x: torch.Tensor) -> torch.Tensor:
    return x.mean(0)


@torch.no_grad()
def geometric_median(x: torch.Tensor, iters: int = 100, tol: float = 1e-6) -> torch.Tensor:
    """Weiszfeld's algorithm: the point minimising the summed Euclidean distance to the rows of x (M, d)."""
    y = x.mean(0)
    for _ in range(iters):
        w = 1 / (x - y).norm(dim=1).clamp_min(1e-8)
        y_next = (w[:, None] * x).sum(0) / w.sum()
        if (y_next - y).norm() < tol * (1 + y.norm()):
            return y_next
        y = y_next
    return y


def remove_parallel_grad(W: torch.Tensor) -> None:
    """g_i <- g_i - (g_i . w_i / |w_i|^2) w_i for the rows w_i of W (in place on W.grad)."""
    assert W.grad is not None
    w = W.detach()
    coef = torch.linalg.vecdot(W.grad, w) / torch.linalg.vector_norm(w, dim=1).square().clamp_min(1e-24)
    W.grad.addcmul_(w, coef.unsqueeze(1), value=-1)


def fired_sparse(idx: torch.Tensor, vals: torch.Tensor, d_sae: int) -> torch.Tensor:
    """(d_sae,) bool: latents with a positive value anywhere in the (N, k) selection."""
    fired = torch.zeros(d_sae, dtype=torch.bool, device=idx.device)
    fired[idx[vals > 0]] = True
    return fired


def scatter_dense(idx: torch.Tensor, vals: torch.Tensor, d_sae: int) -> torch.Tensor:
    """(N, k) indices and values -> dense (N, d_sae)."""
    return torch.zeros(idx.shape[0], d_sae, dtype=vals.dtype, device=vals.device).scatter_(1, idx, vals)


def normalized_mse(y_hat: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """||y - y_hat||^2 / ||y - mean(y)||^2 over the batch (OpenAI's NMSE); non-finite becomes 0."""
    out = (y_hat - y).pow(2).sum() / (y - y.mean(0)).pow(2).sum().clamp_min(1e-12)
    return torch.nan_to_num(out, nan=0.0, posinf=0.0)


def auxk_loss(
    code: LinearCode, y: torch.Tensor, y_hat: torch.Tensor, dead: torch.Tensor, k_aux: int
) -> torch.Tensor:
    """AuxK: the top ``k_aux`` dead latents of each row reconstruct the residual y - y_hat (detached); NMSE.

    Zero, and nothing computed, with no dead latent.
    With few dead latents relative to ``k_aux`` (the usual case) the codes are dense over the dead
    columns, and plain matmuls on that sub-dictionary beat N * k_aux sparse pairs about tenfold; with
    many, the sparse-pair path of the main TopK step is used."""
    n_dead = int(dead.sum())
    if n_dead == 0 or k_aux <= 0:
        return code.z_pre.new_zeros(())
    k = min(k_aux, n_dead)
    residual = y - y_hat.detach()
    if n_dead > 12 * k:
        idx = topk_indices(code.z_pre.masked_fill(~dead, float("-inf")), k)
        recon, _ = sparse_code(code, idx)
        return normalized_mse(recon, residual)
    cols = dead.nonzero().squeeze(1)
    z = torch.addmm(code.b_enc[cols], code.x - code.b_in, code.W_enc[:, cols])  # (N, n_dead), with a graph
    idx = topk_indices(z.detach(), k)
    f = torch.zeros_like(z).scatter(1, idx, F.relu(z.gather(1, idx)))
    return normalized_mse(f @ code.W_dec[cols], residual)
