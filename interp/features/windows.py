"""Re-encoding example windows after the pass: the quantile and random windows of every feature are chosen
only once the pass is over, so their rows are read back from the store and encoded again, in batches
(a cost bounded by the number of windows, not by the store)."""

from __future__ import annotations

import torch

from interp.activations.source import act_key
from interp.activations.store import ActivationStore, Chunk
from interp.dictionaries import Dictionary
from interp.features.stats import window_start

_Group = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]
"""Windows of one kind in one chunk: (tensor to fill, window ids, chunk-local rows, features)."""


def encode(dictionary: Dictionary, x: torch.Tensor, device: str) -> torch.Tensor:
    """Float32 CPU activations (N, F) of rows x (N, d_in), encoded on ``device``."""
    return dictionary.encode(x.to(device, torch.float32)).float().cpu()


def reencode_windows(
    dictionary: Dictionary,
    store: ActivationStore,
    hook: str,
    t: dict[str, torch.Tensor],
    kinds: dict[str, bool],
    window: int,
    n_rows: int,
    chunk_rows: int,
    device: str,
) -> dict[str, torch.Tensor]:
    """Tokens and per-token activations of the quant / rand windows chosen after the pass.

    ``kinds`` maps a kind to whether its activations must be encoded (False: they are known to be 0,
    e.g. windows of contexts where a non-negative feature never fires; only their tokens are read).
    Only the rows inside such windows are encoded, gathered from the whole store into batches of
    ``chunk_rows`` rows, so the cost is bounded by the number of windows, not by the store.
    """
    L = store.ctx_len
    W = min(window, L)
    out: dict[str, torch.Tensor] = {}
    todo = []  # per kind: its windows sorted by context, and the (F * k, W) tensors they fill
    for name, encoded in kinds.items():
        ctx, start = t[f"{name}_ctx"], window_start(t[f"{name}_pos"], L, W)  # (F, k)
        F, k = ctx.shape
        out[f"{name}_start"] = torch.where(ctx >= 0, start, -1)
        acts, toks = torch.zeros(F * k, W), torch.full((F * k, W), -1, dtype=torch.int32)
        out[f"{name}_acts"], out[f"{name}_tokens"] = acts.view(F, k, W), toks.view(F, k, W)
        ids = (ctx.flatten() >= 0).nonzero().flatten()  # id = feature * k + slot
        ids = ids[torch.argsort(ctx.flatten()[ids], stable=True)]
        todo.append((ctx.flatten()[ids], start.flatten()[ids], ids, ids // k, acts, toks, encoded))
    batch = _Batch(dictionary, device, chunk_rows)
    for chunk in store.chunks(hook, chunk_rows):
        if chunk.start >= n_rows:
            break
        c0 = chunk.start // L
        groups: list[_Group] = []
        for w_ctx, w_start, ids, feat, acts, toks, encoded in todo:
            a, b = (int(torch.searchsorted(w_ctx, v)) for v in (c0, c0 + chunk.tokens.shape[0] // L))
            rows = (w_ctx[a:b] - c0)[:, None] * L + w_start[a:b, None] + torch.arange(W)  # (n, W) local rows
            toks[ids[a:b]] = chunk.tokens[rows].to(torch.int32)
            if encoded and a < b:
                groups.append((acts, ids[a:b], rows, feat[a:b]))
        if groups:
            batch.add(chunk, hook, groups)
    batch.flush()
    return out


class _Batch:
    """Rows of windows from many chunks, encoded together in batches of at most ``chunk_rows`` rows
    (a chunk's rows are never split, and a chunk has at most ``chunk_rows`` rows)."""

    def __init__(self, dictionary: Dictionary, device: str, chunk_rows: int):
        self.dictionary, self.device, self.chunk_rows = dictionary, device, chunk_rows
        self.x: list[torch.Tensor] = []
        self.bos: list[torch.Tensor] = []
        self.groups: list[_Group] = []
        self.n = 0

    def add(self, chunk: Chunk, hook: str, groups: list[_Group]) -> None:
        """Queue windows of one chunk: per group, the (N, W) tensor to fill, window ids (n,), their
        chunk-local rows (n, W) and their features (n,)."""
        need, local = torch.unique(torch.cat([g[2] for g in groups]), return_inverse=True)  # rows, once
        if self.n + need.numel() > self.chunk_rows:
            self.flush()
        self.x.append(chunk.acts[act_key(hook)][need])
        self.bos.append(chunk.pos[need] < 0)
        at = 0
        for acts, ids, rows, feat in groups:
            self.groups.append((acts, ids, local[at : at + rows.shape[0]] + self.n, feat))
            at += rows.shape[0]
        self.n += need.numel()

    def flush(self) -> None:
        if not self.n:
            return
        f = encode(self.dictionary, torch.cat(self.x), self.device)  # (n, F)
        f.index_fill_(0, torch.cat(self.bos).nonzero().flatten(), 0.0)
        for acts, ids, local, feat in self.groups:
            acts[ids] = f[local, feat[:, None]]
        self.x, self.bos, self.groups, self.n = [], [], [], 0


"""Windows to fill: the (N, W) activations tensor, window ids (n,), rows (n, W), features (n,)."""
