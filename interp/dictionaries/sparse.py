"""Sparse-code kernels for k-sparse dictionaries: exact top-k selection and an encode-decode whose
backward pass touches only the selected (row, latent) pairs.

A TopK training step has one unavoidable dense cost, the encoder matmul z_pre = (x - b_in) W_enc + b_enc.
Everything after it is sparse: N rows times m selected latents. :func:`sparse_code` decodes
y = sum_j relu(z_pre[n, i_nj]) W_dec[i_nj] and differentiates it in b_in, W_enc, b_enc and W_dec without
forming a dense (N, d_sae) gradient. On CPU the weight gradients are sparse-times-dense products over
a latent-major CSR pattern built once per call, and the per-pair dot products gy_n . W_dec[i_nj] are a
sampled matmul; elsewhere the same sums go through ``embedding_bag``.
"""

from __future__ import annotations

import math
import warnings
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F

warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta", category=UserWarning)


def topk_indices(z: torch.Tensor, k: int) -> torch.Tensor:
    """(N, n) -> (N, k) indices of each row's k largest entries (in no particular order).

    On CPU with wide rows it selects in two stages, exactly: split each row into G groups of g
    consecutive entries, keep the k groups with the largest maxima, then take the top k of those groups'
    k * g members. Every top-k entry lies in one of those groups, because the k-th largest group maximum
    is at most the k-th largest entry (the k largest group maxima are k distinct entries). Ties may pick
    other indices of equal value, as ``torch.topk`` may. At n = 8192, k = 32 this is 1.4x faster than
    ``torch.topk``.
    """
    N, n = z.shape
    G = _group_count(n, k)
    if z.device.type != "cpu" or G is None or not z.is_contiguous():
        return z.topk(k, dim=1, sorted=False).indices
    g = n // G
    group_max = F.max_pool1d(z.view(N, 1, n), g, g).view(N, G)
    groups = group_max.topk(k, dim=1, sorted=False).indices  # (N, k)
    rows = (groups + G * torch.arange(N, device=z.device)[:, None]).view(-1)
    members = z.view(N * G, g).index_select(0, rows)  # 2.5x faster than indexing with []
    j = members.view(N, k * g).topk(k, dim=1, sorted=False).indices  # position c' * g + t
    return groups.gather(1, torch.div(j, g, rounding_mode="floor")) * g + j % g


def _group_count(n: int, k: int) -> int | None:
    """Groups for the two-stage selection: about sqrt(k n), a divisor of n; None where it cannot pay."""
    if n < 4096 or 16 * k > n:
        return None
    G = 1 << round(math.log2(math.sqrt(k * n)))
    return G if n % G == 0 and k < G < n else None


class _SparseCode(torch.autograd.Function):
    """y_n = sum_j relu(z_pre[n, i_nj]) W_dec[i_nj]; z_pre = (x - b_in) W_enc + b_enc, given without a graph."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any,
        z_pre: torch.Tensor,
        x: torch.Tensor,
        b_in: torch.Tensor,
        W_enc: torch.Tensor,
        b_enc: torch.Tensor,
        W_dec: torch.Tensor,
        idx: torch.Tensor,
        use_csr: bool,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        vals = z_pre.gather(1, idx).clamp_min_(0).to(W_dec.dtype)  # under autocast z_pre may be bf16
        y = F.embedding_bag(idx, W_dec, per_sample_weights=vals, mode="sum")
        ctx.save_for_backward(x, b_in, W_enc, W_dec, idx, vals)
        ctx.use_csr = use_csr
        ctx.mark_non_differentiable(vals)
        return y, vals

    @staticmethod
    def backward(ctx: Any, gy: torch.Tensor, _gvals: Any) -> tuple[Any, ...]:  # type: ignore[override]
        x, b_in, W_enc, W_dec, idx, vals = ctx.saved_tensors
        need = ctx.needs_input_grad
        gy = gy.contiguous()
        pairs = _Pairs(idx, W_dec.shape[0]) if ctx.use_csr else None
        g_v = pairs.row_dots(gy, W_dec) if pairs else _row_dots(gy, W_dec, idx)
        g_z = g_v * (vals > 0)
        gx = gb_in = gW_enc = gb_enc = gW_dec = None
        if need[5]:
            gW_dec = pairs.scatter_rows(vals, gy) if pairs else _scatter_rows(idx, vals, gy, W_dec.shape[0])
        if need[3]:
            xc = x - b_in
            gW_enc_t = pairs.scatter_rows(g_z, xc) if pairs else _scatter_rows(idx, g_z, xc, W_enc.shape[1])
            gW_enc = _transpose(gW_enc_t)  # in W_enc's layout, or autograd copies it, slower
        if need[4] or need[2]:
            gb_enc = torch.zeros(W_enc.shape[1], dtype=g_z.dtype, device=g_z.device)
            gb_enc.index_add_(0, idx.reshape(-1), g_z.reshape(-1))
            if need[2]:  # d/db_in of sum_nj g_z (x_n - b_in) . W_enc[:, i_nj] is -W_enc (sum over pairs of g_z)
                gb_in = -(W_enc @ gb_enc)
        if need[1]:
            gx = F.embedding_bag(idx, W_enc.T.contiguous(), per_sample_weights=g_z, mode="sum")
        return None, gx, gb_in, gW_enc, gb_enc if need[4] else None, gW_dec, None, None


class _Pairs:
    """The N x m selected (row, latent) pairs as CSR patterns: row-major (for the sampled matmul) and
    latent-major (for weight gradients); built once per backward. A row's latents must be distinct."""

    def __init__(self, idx: torch.Tensor, n_latents: int):
        N, m = idx.shape
        flat = idx.reshape(-1)
        self.shape = (N, n_latents)
        self.row_crow = torch.arange(0, N * m + 1, m, device=idx.device)
        self.sorted_cols, self.col_perm = idx.sort(dim=1)  # CSR wants each row's columns ascending
        self.order = flat.to(torch.int32).argsort(stable=True)  # latent ids fit; int32 sorts 2x faster
        counts = torch.bincount(flat, minlength=n_latents)
        self.crow = torch.zeros(n_latents + 1, dtype=torch.long, device=idx.device)
        torch.cumsum(counts, 0, out=self.crow[1:])
        self.rows = torch.div(self.order, m, rounding_mode="floor")

    def row_dots(self, gy: torch.Tensor, W: torch.Tensor) -> torch.Tensor:
        """(N, m): gy_n . W[i_nj], the matmul gy W^T sampled at the pairs."""
        pattern = torch.sparse_csr_tensor(
            self.row_crow,
            self.sorted_cols.reshape(-1),
            torch.zeros(self.sorted_cols.numel(), dtype=gy.dtype, device=gy.device),
            size=self.shape,
            check_invariants=False,
        )
        dots = torch.sparse.sampled_addmm(pattern, gy, W.T, beta=0.0).values().view(self.shape[0], -1)
        return torch.empty_like(dots).scatter_(1, self.col_perm, dots)

    def scatter_rows(self, v: torch.Tensor, dense: torch.Tensor) -> torch.Tensor:
        """(n_latents, d): row i sums v_nj dense_n over the pairs with i_nj = i."""
        latent_major = torch.sparse_csr_tensor(
            self.crow, self.rows, v.reshape(-1).index_select(0, self.order), size=(self.shape[1], self.shape[0]),
            check_invariants=False,
        )
        out = dense.new_empty(self.shape[1], dense.shape[1])  # addmm into it skips a fill and a copy
        return torch.addmm(out, latent_major, dense, beta=0.0, out=out)


def _transpose(t: torch.Tensor, block: int = 256) -> torch.Tensor:
    """t.T made contiguous in column blocks that fit in cache (3x faster than ``t.T.contiguous()`` on 2 threads)."""
    out = t.new_empty(t.shape[1], t.shape[0])
    for s in range(0, t.shape[0], block):
        out[:, s : s + block].copy_(t[s : s + block].T)
    return out


def _row_dots(gy: torch.Tensor, W: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    with torch.enable_grad():
        w = torch.zeros(idx.shape, dtype=gy.dtype, device=gy.device, requires_grad=True)
        y = F.embedding_bag(idx, W.detach(), per_sample_weights=w, mode="sum")
        return torch.autograd.grad(y, w, grad_outputs=gy)[0]


def _scatter_rows(idx: torch.Tensor, v: torch.Tensor, dense: torch.Tensor, n_latents: int) -> torch.Tensor:
    with torch.enable_grad():  # the weight gradient of an embedding_bag is exactly this scatter
        table = torch.zeros(n_latents, dense.shape[1], dtype=dense.dtype, device=dense.device, requires_grad=True)
        bag = F.embedding_bag(idx, table, per_sample_weights=v, mode="sum")
        return torch.autograd.grad(bag, table, grad_outputs=dense)[0]


class LinearCode(NamedTuple):
    """What a linear encoder's sparse code is computed from: ``z_pre = (x - b_in) W_enc + b_enc``."""

    z_pre: torch.Tensor
    """(N, d_sae) pre-activations, computed without a graph."""
    x: torch.Tensor
    """(N, d_in) inputs."""
    b_in: torch.Tensor
    """(d_in,) bias subtracted from the input before encoding."""
    W_enc: torch.Tensor
    """(d_in, d_sae) encoder."""
    b_enc: torch.Tensor
    """(d_sae,) encoder bias."""
    W_dec: torch.Tensor
    """(d_sae, d_out) decoder."""


def sparse_code(
    code: LinearCode, idx: torch.Tensor, use_csr: bool | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Decode the pairs ``idx`` (N, m): returns y (N, d_out) and the values relu(z_pre[n, i_nj]) (N, m).

    y is differentiable in b_in, W_enc, b_enc, W_dec (and x); the values are not. ``use_csr`` picks the
    CSR backward (default: on CPU) or the ``embedding_bag`` one.
    """
    if use_csr is None:
        use_csr = idx.device.type == "cpu"
    return _SparseCode.apply(*code, idx, use_csr)


def sparse_decode(idx: torch.Tensor, vals: torch.Tensor, W_dec: torch.Tensor) -> torch.Tensor:
    """sum_j vals[:, j] * W_dec[idx[:, j]]: (N, k) indices and values -> (N, d_out), without a dense f."""
    return F.embedding_bag(idx, W_dec, per_sample_weights=vals, mode="sum")
