"""The activation store: the on-disk format written by ``interp cache`` and its streaming reader.

Layout of a store directory::

    manifest.json             what is in the store (see below); rewritten atomically after each shard
    shard-00000.safetensors   one tensor per hook, rows aligned across tensors:
        act/<hook>   (rows, d)  activations, flattened per token (hook_z: n_heads * d_head)
        grad/<hook>  (rows, d)  d(summed next-token loss)/d(activation), only with --with-grads
        tokens       (rows,)    int32 token id of the row
        doc          (rows,)    int64 index of the source document in corpus order
        pos          (rows,)    int32 position in that document, -1 for inserted BOS tokens

Rows are whole contexts in order: row ``r`` is position ``r % ctx_len`` of context ``r // ctx_len``.
The manifest lists each shard with its rows, contexts, byte size and sha256. A shard is listed only
once it is completely on disk, so a listed shard that fails its size or checksum is corrupt, and the
reader refuses it with an :class:`InterpError` that names it.

The reader maps one shard at a time and copies rows into a bounded shuffle buffer, so its memory does
not grow with the size of the store.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import struct
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import torch

from interp.errors import InterpError, close_matches
from interp.io import read_json

log = logging.getLogger(__name__)

FORMAT = "interp-activation-store"
VERSION = 1
MANIFEST = "manifest.json"
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
_ST_DTYPES = {"F32": torch.float32, "BF16": torch.bfloat16, "F16": torch.float16, "I32": torch.int32,
              "I64": torch.int64}


def shard_name(index: int) -> str:
    return f"shard-{index:05d}.safetensors"


def act_key(hook: str) -> str:
    return f"act/{hook}"


def grad_key(hook: str) -> str:
    return f"grad/{hook}"


@dataclass(frozen=True)
class ShardInfo:
    """One entry of ``manifest["shards"]``."""

    file: str
    rows: int
    contexts: int
    bytes: int
    sha256: str


class Batch(NamedTuple):
    """Rows drawn together from the store: every tensor has the same first dimension."""

    acts: dict[str, torch.Tensor]
    """hook -> activations (batch, d)."""
    grads: dict[str, torch.Tensor]
    """hook -> LM-loss gradients (batch, d); empty unless asked for."""


class Chunk(NamedTuple):
    """Consecutive rows ``[start, start + len)`` in store order, for sequential passes."""

    start: int
    acts: dict[str, torch.Tensor]
    tokens: torch.Tensor
    doc: torch.Tensor
    pos: torch.Tensor


class _Shard:
    """An open safetensors shard read with positional reads (pread) into fresh tensors.

    On the machines this was measured on, ``pread`` into a buffer ran at 6-8 GB/s, while copying the same
    bytes out of an ``mmap`` ran at 0.5-0.9 GB/s (page faults), so the reader uses ``pread``; it also keeps
    resident memory flat without any unmapping.
    """

    def __init__(self, path: Path):
        self.path = path
        self.fd = os.open(path, os.O_RDONLY)
        try:
            (n,) = struct.unpack("<Q", os.pread(self.fd, 8, 0))
            header = json.loads(os.pread(self.fd, n, 8))
        except (struct.error, ValueError) as e:
            os.close(self.fd)
            raise InterpError(f"Shard {path.name} has an unreadable header ({e}); it is corrupted.") from e
        header.pop("__metadata__", None)
        self._base = 8 + n
        self.header: dict[str, Any] = header

    def rows(self, key: str) -> int:
        return int(self.header[key]["shape"][0])

    def read(self, key: str, start: int = 0, stop: int | None = None) -> torch.Tensor:
        """Rows ``start:stop`` of tensor ``key``, as a new tensor in the stored dtype."""
        entry = self.header[key]
        dtype = _ST_DTYPES[entry["dtype"]]
        shape = entry["shape"]
        stop = shape[0] if stop is None else stop
        out = torch.empty((stop - start, *shape[1:]), dtype=dtype)
        if out.numel() == 0:
            return out
        row_bytes = out[0].numel() * out.element_size()
        view = memoryview(out.view(-1).view(torch.uint8).numpy()).cast("B")  # type: ignore[arg-type]
        offset = self._base + entry["data_offsets"][0] + start * row_bytes
        done = 0
        while done < len(view):
            got = os.preadv(self.fd, [view[done:]], offset + done)
            if got <= 0:
                raise InterpError(f"Shard {self.path.name} ended early while reading {key}: it is truncated.")
            done += got
        return out

    def sha256(self) -> str:
        h = hashlib.sha256()
        offset = 0
        while block := os.pread(self.fd, 1 << 24, offset):
            h.update(block)
            offset += len(block)
        return h.hexdigest()

    def close(self) -> None:
        os.close(self.fd)


class ActivationStore:
    """Read access to a store directory written by :func:`interp.cache.cache_activations`."""

    def __init__(self, path: str | Path, verify: bool = True):
        """Open ``path``. With ``verify`` every shard's sha256 is checked the first time it is read."""
        self.path = Path(path)
        if not (self.path / MANIFEST).is_file():
            raise InterpError(f"{self.path} is not an activation store (no {MANIFEST}). Create one with interp cache.")
        self.manifest: dict[str, Any] = read_json(self.path / MANIFEST, "store manifest")
        if self.manifest.get("format") != FORMAT:
            raise InterpError(f"{self.path / MANIFEST} is not an interp activation store manifest.")
        if self.manifest.get("version", 0) > VERSION:
            raise InterpError(f"Store {self.path} has format version {self.manifest['version']}; upgrade interp.")
        self.shards = [ShardInfo(**s) for s in self.manifest["shards"]]
        self.verify = verify
        self._verified: set[str] = set()

    # ---- description ------------------------------------------------------------------------
    @property
    def hooks(self) -> list[str]:
        return list(self.manifest["hooks"])

    @property
    def complete(self) -> bool:
        return bool(self.manifest.get("complete"))

    @property
    def ctx_len(self) -> int:
        return int(self.manifest["ctx_len"])

    @property
    def n_rows(self) -> int:
        return sum(s.rows for s in self.shards)

    @property
    def has_grads(self) -> bool:
        return bool(self.manifest.get("with_grads"))

    @property
    def model(self) -> dict[str, Any]:
        """The :class:`interp.models.ModelInfo` of the model that made the store, as a dict."""
        return dict(self.manifest["model"])

    @property
    def dtype(self) -> torch.dtype:
        return DTYPES[self.manifest["dtype"]]

    def d(self, hook: str) -> int:
        """Row width of ``hook`` (its activation flattened per token)."""
        return int(self.check_hook(hook)["d"])

    def hook_shape(self, hook: str) -> list[int]:
        """Per-token shape before flattening, e.g. ``[n_heads, d_head]`` for ``attn.hook_z``."""
        return list(self.check_hook(hook)["shape"])

    def check_hook(self, hook: str) -> dict[str, Any]:
        hooks = self.manifest["hooks"]
        if hook not in hooks:
            near = close_matches(hook, hooks)
            raise InterpError(
                f"Store {self.path} has no hook {hook!r}. It holds: {', '.join(hooks)}."
                + (f" Did you mean {near[0]!r}?" if near else "")
            )
        return dict(hooks[hook])

    # ---- shard access -----------------------------------------------------------------------
    def open_shard(self, index: int) -> _Shard:
        """Map shard ``index`` after checking its size (and, first time, its sha256)."""
        info = self.shards[index]
        path = self.path / info.file
        if not path.is_file():
            raise InterpError(f"Shard {info.file} of store {self.path} is missing. Re-run interp cache to rebuild it.")
        size = path.stat().st_size
        if size != info.bytes:
            raise InterpError(
                f"Shard {info.file} of store {self.path} is {size} bytes, the manifest says {info.bytes}: it is "
                "truncated or was overwritten. Delete it and re-run the same interp cache command to rebuild it."
            )
        shard = _Shard(path)
        if self.verify and info.file not in self._verified:
            if shard.sha256() != info.sha256:
                shard.close()
                raise InterpError(
                    f"Shard {info.file} of store {self.path} fails its sha256 check: it is corrupted. Delete it and "
                    "re-run the same interp cache command to rebuild it."
                )
            self._verified.add(info.file)
        return shard

    def verify_all(self) -> None:
        """Check every shard's size and checksum now (raises on the first bad one)."""
        for i in range(len(self.shards)):
            self.open_shard(i).close()

    def read(self, key: str, shard: int) -> torch.Tensor:
        """A whole tensor (``act/<hook>``, ``grad/<hook>``, ``tokens``, ``doc``, ``pos``) of one shard, copied."""
        s = self.open_shard(shard)
        try:
            return s.read(key)
        finally:
            s.close()

    def column(self, key: str) -> torch.Tensor:
        """``tokens``, ``doc`` or ``pos`` for every row of the store (small: one number per row)."""
        if key not in ("tokens", "doc", "pos"):
            raise InterpError(f"column() reads tokens, doc or pos, not {key!r}; stream activations with batches().")
        return torch.cat([self.read(key, i) for i in range(len(self.shards))]) if self.shards else torch.empty(0)

    # ---- streaming --------------------------------------------------------------------------
    def _keys(self, hooks: Sequence[str], grads: bool) -> list[str]:
        for h in hooks:
            self.check_hook(h)
        if grads and not self.has_grads:
            raise InterpError(f"Store {self.path} has no gradients. Re-cache with --with-grads.")
        return [act_key(h) for h in hooks] + ([grad_key(h) for h in hooks] if grads else [])

    def chunks(self, hooks: str | Sequence[str], chunk_rows: int = 8192, grads: bool = False) -> Iterator[Chunk]:
        """Every row in store order, ``chunk_rows`` at a time (the last chunk of a shard may be shorter)."""
        hooks = [hooks] if isinstance(hooks, str) else list(hooks)
        keys = self._keys(hooks, grads)
        start = 0
        for i, info in enumerate(self.shards):
            shard = self.open_shard(i)
            try:
                for a in range(0, info.rows, chunk_rows):
                    b = min(a + chunk_rows, info.rows)
                    acts = {k: shard.read(k, a, b).float() for k in keys}
                    yield Chunk(start + a, acts, shard.read("tokens", a, b), shard.read("doc", a, b),
                                shard.read("pos", a, b))
            finally:
                shard.close()
            start += info.rows

    def batches(
        self,
        hooks: str | Sequence[str],
        batch_size: int,
        *,
        epochs: int = 1,
        seed: int = 0,
        shuffle: bool = True,
        buffer_rows: int | None = None,
        exclude_bos: bool = True,
        grads: bool = False,
        drop_last: bool = True,
    ) -> Iterator[Batch]:
        """Shuffled float32 batches of rows, ``epochs`` times over the store.

        Order: each epoch visits shards in a seeded random order and each shard in random blocks; rows
        pass through a shuffle buffer of ``buffer_rows`` (default: about 256 MiB of rows). The same seed gives
        the same batches.
        ``exclude_bos`` drops inserted BOS rows (``pos == -1``), whose activations are outliers.
        """
        hooks = [hooks] if isinstance(hooks, str) else list(hooks)
        keys = self._keys(hooks, grads)
        gen = torch.Generator().manual_seed(seed)
        yield from shuffled_batches(
            lambda: self._blocks(keys, batch_size, gen if shuffle else None, exclude_bos),
            hooks, [self.d(h) for h in hooks], batch_size, epochs=epochs, gen=gen if shuffle else None,
            buffer_rows=buffer_rows, grads=grads, drop_last=drop_last,
        )

    def _blocks(
        self, keys: list[str], block: int, gen: torch.Generator | None, exclude_bos: bool
    ) -> Iterator[dict[str, torch.Tensor]]:
        """One epoch of contiguous row blocks as float32 copies: shards, and blocks in them, in seeded order."""
        n = len(self.shards)
        for i in (torch.randperm(n, generator=gen) if gen is not None else torch.arange(n)).tolist():
            info = self.shards[i]
            shard = self.open_shard(i)
            try:
                n_blocks = (info.rows + block - 1) // block
                order = torch.randperm(n_blocks, generator=gen) if gen is not None else torch.arange(n_blocks)
                for j in order.tolist():
                    a, b = j * block, min((j + 1) * block, info.rows)
                    rows = {k: shard.read(k, a, b).float() for k in keys}
                    if exclude_bos:
                        keep = shard.read("pos", a, b) >= 0
                        if not bool(keep.all()):
                            idx = keep.nonzero().squeeze(1)
                            rows = {k: v.index_select(0, idx) for k, v in rows.items()}
                    yield rows
            finally:
                shard.close()


def shuffled_batches(
    epoch_blocks: Callable[[], Iterator[dict[str, torch.Tensor]]],
    hooks: list[str],
    widths: list[int],
    batch_size: int,
    *,
    epochs: int,
    gen: torch.Generator | None,
    buffer_rows: int | None,
    grads: bool,
    drop_last: bool,
) -> Iterator[Batch]:
    """Batches of exactly ``batch_size`` rows from ``epochs`` calls of ``epoch_blocks`` (row groups keyed
    by :func:`act_key` / :func:`grad_key`), mixed through a shuffle buffer unless ``gen`` is None.

    The buffer holds ``buffer_rows`` rows (default: about 256 MiB of them, at least 4 batches)."""
    if batch_size < 1 or epochs < 1:
        raise InterpError(f"batch_size and epochs must be >= 1 (got {batch_size}, {epochs}).")
    if buffer_rows is None:
        row_bytes = 4 * sum(widths) * (2 if grads else 1)
        buffer_rows = max(4 * batch_size, (256 << 20) // row_bytes)
    buf = _ShuffleBuffer(max(buffer_rows, batch_size), gen) if gen is not None else None
    batcher = _Batcher(batch_size, hooks, grads)
    for _ in range(epochs):
        for rows in epoch_blocks():
            for out in buf.push(rows) if buf is not None else [rows]:
                yield from batcher.add(out)
    if buf is not None:
        yield from batcher.add(buf.flush())
    yield from batcher.finish(keep_tail=not drop_last)


class _ShuffleBuffer:
    """A full buffer of rows; each incoming block takes the slots of the rows it evicts, which go out.

    Slots are visited in the order of a fresh random permutation per buffer-full, so each row is copied
    once in and once out, and mixing spans many shards and blocks.
    """

    def __init__(self, capacity: int, gen: torch.Generator):
        self.capacity, self.gen = capacity, gen
        self.data: dict[str, torch.Tensor] = {}
        self.n = 0
        self.perm = torch.empty(0, dtype=torch.int64)
        self.cursor = capacity  # a permutation is drawn when the buffer first fills

    def push(self, rows: dict[str, torch.Tensor]) -> Iterator[dict[str, torch.Tensor]]:
        m = next(iter(rows.values())).shape[0]
        if not self.data:
            self.data = {k: torch.empty(self.capacity, *v.shape[1:], dtype=v.dtype) for k, v in rows.items()}
        i = 0
        while i < m:
            if self.n < self.capacity:  # still filling
                take = min(self.capacity - self.n, m - i)
                for k, v in rows.items():
                    self.data[k][self.n : self.n + take] = v[i : i + take]
                self.n += take
            else:
                if self.cursor >= self.capacity:
                    self.perm = torch.randperm(self.capacity, generator=self.gen)
                    self.cursor = 0
                take = min(self.capacity - self.cursor, m - i)
                slots = self.perm[self.cursor : self.cursor + take]
                self.cursor += take
                out = {k: v.index_select(0, slots) for k, v in self.data.items()}
                for k, v in rows.items():
                    self.data[k].index_copy_(0, slots, v[i : i + take])
                yield out
            i += take

    def flush(self) -> dict[str, torch.Tensor]:
        """Everything still buffered, in random order; the buffer is empty afterwards."""
        perm = torch.randperm(self.n, generator=self.gen)
        out = {k: v[: self.n].index_select(0, perm) for k, v in self.data.items()}
        self.n, self.cursor = 0, self.capacity
        return out


class _Batcher:
    """Cuts a stream of row groups of any size into batches of exactly ``batch_size`` rows."""

    def __init__(self, batch_size: int, hooks: list[str], grads: bool):
        self.batch_size, self.hooks, self.grads = batch_size, hooks, grads
        self.pending: list[dict[str, torch.Tensor]] = []
        self.count = 0

    def add(self, rows: dict[str, torch.Tensor]) -> Iterator[Batch]:
        if not rows:
            return
        m = next(iter(rows.values())).shape[0]
        if not self.pending:  # the common case: slice without copying
            full = m - m % self.batch_size
            for a in range(0, full, self.batch_size):
                yield self._batch({k: v[a : a + self.batch_size] for k, v in rows.items()})
            if full == m:
                return
            rows, m = {k: v[full:] for k, v in rows.items()}, m - full
        self.pending.append(rows)
        self.count += m
        if self.count >= self.batch_size:
            merged = {k: torch.cat([p[k] for p in self.pending]) for k in rows}
            n_full = self.count - self.count % self.batch_size
            for a in range(0, n_full, self.batch_size):
                yield self._batch({k: v[a : a + self.batch_size] for k, v in merged.items()})
            rest = {k: v[n_full:] for k, v in merged.items()}
            self.count = self.count - n_full
            self.pending = [rest] if self.count else []

    def finish(self, keep_tail: bool) -> Iterator[Batch]:
        if keep_tail and self.count:
            yield self._batch({k: torch.cat([p[k] for p in self.pending]) for k in self.pending[0]})
        self.pending, self.count = [], 0

    def _batch(self, rows: dict[str, torch.Tensor]) -> Batch:
        return Batch({h: rows[act_key(h)] for h in self.hooks},
                     {h: rows[grad_key(h)] for h in self.hooks} if self.grads else {})
