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
import mmap
import struct
from collections.abc import Iterator, Sequence
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
    """A memory-mapped safetensors shard: tensors are views into the map until copied."""

    def __init__(self, path: Path):
        self._file = open(path, "rb")
        self._map = mmap.mmap(self._file.fileno(), 0, access=mmap.ACCESS_COPY)
        (n,) = struct.unpack("<Q", self._map[:8])
        header = json.loads(bytes(self._map[8 : 8 + n]))
        header.pop("__metadata__", None)
        self._base = 8 + n
        self.header: dict[str, Any] = header

    def view(self, key: str, start: int = 0, stop: int | None = None) -> torch.Tensor:
        """Rows ``start:stop`` of tensor ``key`` as a zero-copy tensor over the map."""
        entry = self.header[key]
        dtype = _ST_DTYPES[entry["dtype"]]
        shape = entry["shape"]
        row_elems = 1
        for s in shape[1:]:
            row_elems *= s
        stop = shape[0] if stop is None else stop
        itemsize = torch.empty((), dtype=dtype).element_size()
        begin = self._base + entry["data_offsets"][0] + start * row_elems * itemsize
        count = (stop - start) * row_elems
        flat = torch.frombuffer(memoryview(self._map), dtype=dtype, count=count, offset=begin)
        return flat.view(stop - start, *shape[1:])

    def close(self) -> None:
        try:
            self._map.close()
        except BufferError:  # a view is still alive; the map closes when it is collected
            pass
        self._file.close()


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
            digest = hashlib.sha256(shard._map).hexdigest()
            if digest != info.sha256:
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
            return s.view(key).clone()
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
                    acts = {k: shard.view(k, a, b).float() for k in keys}
                    yield Chunk(start + a, acts, shard.view("tokens", a, b).clone(),
                                shard.view("doc", a, b).clone(), shard.view("pos", a, b).clone())
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
        buffer_rows: int = 1 << 18,
        exclude_bos: bool = True,
        grads: bool = False,
        drop_last: bool = True,
    ) -> Iterator[Batch]:
        """Shuffled float32 batches of rows, ``epochs`` times over the store.

        Order: each epoch visits shards in a seeded random order and each shard in random blocks; rows
        pass through a shuffle buffer of ``buffer_rows``. The same seed gives the same batches.
        ``exclude_bos`` drops inserted BOS rows (``pos == -1``), whose activations are outliers.
        """
        hooks = [hooks] if isinstance(hooks, str) else list(hooks)
        keys = self._keys(hooks, grads)
        if batch_size < 1 or epochs < 1:
            raise InterpError(f"batch_size and epochs must be >= 1 (got {batch_size}, {epochs}).")
        buf = _ShuffleBuffer(keys, max(buffer_rows, 2 * batch_size), seed, shuffle)
        gen = torch.Generator().manual_seed(seed)
        block = 4096
        for _ in range(epochs):
            order = torch.randperm(len(self.shards), generator=gen) if shuffle else torch.arange(len(self.shards))
            for i in order.tolist():
                info = self.shards[i]
                shard = self.open_shard(i)
                try:
                    n_blocks = (info.rows + block - 1) // block
                    blocks = torch.randperm(n_blocks, generator=gen) if shuffle else torch.arange(n_blocks)
                    for j in blocks.tolist():
                        a, b = j * block, min((j + 1) * block, info.rows)
                        keep = shard.view("pos", a, b) >= 0 if exclude_bos else None
                        rows = {k: shard.view(k, a, b) for k in keys}
                        if keep is not None:
                            rows = {k: v[keep] for k, v in rows.items()}
                        buf.add(rows)
                        while buf.ready:
                            yield from _as_batches(buf.drain_half(batch_size), batch_size, hooks, grads, False)
                finally:
                    shard.close()
        yield from _as_batches(buf.drain_all(), batch_size, hooks, grads, keep_tail=not drop_last)


class _ShuffleBuffer:
    """Fixed-capacity buffer: fill, shuffle, hand out half, keep half (so mixing spans shards)."""

    def __init__(self, keys: list[str], capacity: int, seed: int, shuffle: bool):
        self.keys, self.capacity, self.shuffle = keys, capacity, shuffle
        self.gen = torch.Generator().manual_seed(seed + 1)
        self.data: dict[str, torch.Tensor] = {}
        self.n = 0
        self.pending: dict[str, list[torch.Tensor]] = {k: [] for k in keys}

    @property
    def ready(self) -> bool:
        return self.n >= self.capacity

    def add(self, rows: dict[str, torch.Tensor]) -> None:
        k0 = self.keys[0]
        m = rows[k0].shape[0]
        if not self.data:
            self.data = {k: torch.empty(self.capacity + 4096, *v.shape[1:], dtype=torch.float32)
                         for k, v in rows.items()}
        if self.n + m > self.data[k0].shape[0]:
            self.data = {k: torch.cat([v, torch.empty_like(v[:m])]) for k, v in self.data.items()}
        for k, v in rows.items():
            self.data[k][self.n : self.n + m].copy_(v)
        self.n += m

    def _mix(self) -> None:
        if self.shuffle and self.n:
            perm = torch.randperm(self.n, generator=self.gen)
            for v in self.data.values():
                v[: self.n] = v[: self.n][perm]

    def drain_half(self, multiple: int) -> dict[str, torch.Tensor]:
        """Hand out about half the buffer, rounded down to a multiple of ``multiple`` rows."""
        self._mix()
        half = max(self.n // 2 // multiple, 1) * multiple
        out = {k: v[:half].clone() for k, v in self.data.items()}
        for v in self.data.values():
            v[: self.n - half] = v[half : self.n].clone()
        self.n -= half
        return out

    def drain_all(self) -> dict[str, torch.Tensor]:
        self._mix()
        out = {k: v[: self.n].clone() for k, v in self.data.items()}
        self.n = 0
        return out


def _as_batches(
    rows: dict[str, torch.Tensor], batch_size: int, hooks: list[str], grads: bool, keep_tail: bool
) -> Iterator[Batch]:
    if not rows:
        return
    n = next(iter(rows.values())).shape[0]
    stop = n if keep_tail else n - n % batch_size
    for a in range(0, stop, batch_size):
        b = min(a + batch_size, n)
        yield Batch(
            {h: rows[act_key(h)][a:b] for h in hooks},
            {h: rows[grad_key(h)][a:b] for h in hooks} if grads else {},
        )
