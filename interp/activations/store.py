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

import functools
import hashlib
import json
import logging
import math
import os
import struct
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, NamedTuple

import torch

from interp.activations.source import RowSource, act_key, grad_key
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


@dataclass(frozen=True)
class ShardInfo:
    """One entry of ``manifest["shards"]``."""

    file: str
    rows: int
    contexts: int
    bytes: int
    sha256: str
    contexts_sha256: str | None = None
    """sha256 of the shard's tokens, doc and pos columns (what the corpus gave it); None in older stores."""


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
        self._scratch = memoryview(bytearray(0))

    def rows(self, key: str) -> int:
        return int(self.header[key]["shape"][0])

    def read(self, key: str, start: int = 0, stop: int | None = None, keep: torch.Tensor | None = None
             ) -> torch.Tensor:
        """Rows ``start:stop`` of tensor ``key`` as a new tensor in the stored dtype; with ``keep`` (a bool mask
        over those rows) only the kept rows, read straight into place (dropped rows go to a scratch buffer)."""
        entry = self.header[key]
        dtype = _ST_DTYPES[entry["dtype"]]
        shape = entry["shape"]
        stop = shape[0] if stop is None else stop
        n = stop - start if keep is None else int(keep.sum())
        out = torch.empty((n, *shape[1:]), dtype=dtype)
        if stop == start:
            return out
        row_bytes = math.prod(shape[1:]) * out.element_size()
        view = memoryview(out.view(-1).view(torch.uint8).numpy()).cast("B")  # type: ignore[arg-type]
        pieces = [view] if keep is None else self._scatter(view, keep, row_bytes)
        self._readv(pieces, self._base + entry["data_offsets"][0] + start * row_bytes, key)
        return out

    def _scatter(self, view: memoryview, keep: torch.Tensor, row_bytes: int) -> list[memoryview]:
        """The buffers a contiguous read of the masked rows goes to, in file order: kept runs land packed in
        ``view``, dropped runs in scratch."""
        flips = (torch.nonzero(keep[1:] != keep[:-1]).squeeze(1) + 1).tolist()
        bounds, kept, done = [0, *flips, keep.shape[0]], bool(keep[0]), 0
        pieces = []
        for a, b in zip(bounds[:-1], bounds[1:]):
            size = (b - a) * row_bytes
            if kept:
                pieces.append(view[done : done + size])
                done += size
            else:
                if len(self._scratch) < size:
                    self._scratch = memoryview(bytearray(size))
                pieces.append(self._scratch[:size])
            kept = not kept
        return pieces

    def _readv(self, pieces: list[memoryview], offset: int, key: str) -> None:
        """Fill ``pieces`` from consecutive bytes at ``offset`` (preadv, at most 1024 buffers a call)."""
        while pieces:
            got = os.preadv(self.fd, pieces[:1024], offset)
            if got <= 0:
                raise InterpError(f"Shard {self.path.name} ended early while reading {key}: it is truncated.")
            offset += got
            while pieces and got >= len(pieces[0]):
                got -= len(pieces[0])
                pieces.pop(0)
            if got:
                pieces[0] = pieces[0][got:]

    def sha256(self) -> str:
        h = hashlib.sha256()
        buf = memoryview(bytearray(1 << 22))
        offset = 0
        while got := os.preadv(self.fd, [buf], offset):
            h.update(buf[:got])
            offset += got
        return h.hexdigest()

    def close(self) -> None:
        os.close(self.fd)


class ActivationStore(RowSource):
    """Read access to a store directory written by :func:`interp.activations.cache_activations`."""

    path: Path

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
        known = {f.name for f in fields(ShardInfo)}
        self.shards = [ShardInfo(**{k: v for k, v in s.items() if k in known}) for s in self.manifest["shards"]]
        if not self.complete:
            log.warning("store %s is incomplete (being written, or interrupted): reading its %d complete shards; "
                        "run the same interp cache command to finish it", self.path, len(self.shards))
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

    def _max_rows(self) -> int:
        return self.n_rows

    @property
    def model(self) -> dict[str, Any]:
        """The :class:`interp.model.ModelInfo` of the model that made the store, as a dict."""
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
    def open_shard(self, index: int, check: bool = True) -> _Shard:
        """Open shard ``index`` after checking its size and (with ``check``, the first time) its sha256."""
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
        if check and self.verify and info.file not in self._verified:
            try:
                self._check_digest(info, shard.sha256())
            except BaseException:
                shard.close()
                raise
        return shard

    def _check_digest(self, info: ShardInfo, digest: str) -> None:
        if digest != info.sha256:
            raise InterpError(
                f"Shard {info.file} of store {self.path} fails its sha256 check: it is corrupted. Delete it and "
                "re-run the same interp cache command to rebuild it."
            )
        self._verified.add(info.file)

    def _verify_in_background(self, order: list[int]) -> dict[str, Future[str]]:
        """Start hashing the shards of ``order`` not yet verified, on the shared verification threads."""
        if not self.verify:
            return {}
        pool = _verify_pool()
        return {self.shards[i].file: pool.submit(_digest, self.path / self.shards[i].file)
                for i in order if self.shards[i].file not in self._verified}

    def _collect(self, pending: dict[str, Future[str]], wait: bool) -> None:
        """Check the hashes that are done (all of them with ``wait``); raises for a corrupt shard."""
        by_file = {s.file: s for s in self.shards}
        for file, fut in list(pending.items()):
            if wait or fut.done():
                del pending[file]
                self._check_digest(by_file[file], fut.result())

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
    def chunks(self, hooks: str | Sequence[str], chunk_rows: int = 8192, grads: bool = False) -> Iterator[Chunk]:
        """Every row in store order, ``chunk_rows`` at a time (the last chunk of a shard may be shorter)."""
        hooks = [hooks] if isinstance(hooks, str) else list(hooks)
        for h in hooks:
            self.check_hook(h)
        if grads and not self.has_grads:
            raise InterpError(f"Store {self.path} has no gradients. Re-cache with --with-grads.")
        keys = [act_key(h) for h in hooks] + ([grad_key(h) for h in hooks] if grads else [])
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

    def _epoch(
        self, hooks: list[str], grads: bool, block: int, gen: torch.Generator | None, exclude_bos: bool
    ) -> Iterator[dict[str, torch.Tensor]]:
        """One epoch of contiguous row blocks as float32 copies: shards, and blocks in them, in seeded order
        (rows then pass through a shuffle buffer of about 256 MiB unless the caller sizes it); BOS rows
        (``pos == -1``), whose activations are outliers, are dropped with ``exclude_bos``.

        Unverified shards are hashed on background threads while the epoch reads them; a shard that fails its
        sha256 raises as soon as its hash is done, at the latest when the epoch ends."""
        keys = [act_key(h) for h in hooks] + ([grad_key(h) for h in hooks] if grads else [])
        n = len(self.shards)
        shard_order = (torch.randperm(n, generator=gen) if gen is not None else torch.arange(n)).tolist()
        pending = self._verify_in_background(shard_order)
        for i in shard_order:
            info = self.shards[i]
            shard = self.open_shard(i, check=False)
            try:
                n_blocks = (info.rows + block - 1) // block
                order = torch.randperm(n_blocks, generator=gen) if gen is not None else torch.arange(n_blocks)
                for j in order.tolist():
                    a, b = j * block, min((j + 1) * block, info.rows)
                    keep = shard.read("pos", a, b) >= 0 if exclude_bos else None
                    if keep is not None and bool(keep.all()):
                        keep = None
                    yield {k: shard.read(k, a, b, keep).float() for k in keys}
                    self._collect(pending, wait=False)
            finally:
                shard.close()
        self._collect(pending, wait=True)


def _digest(path: Path) -> str:
    shard = _Shard(path)
    try:
        return shard.sha256()
    finally:
        shard.close()


@functools.cache
def _verify_pool() -> ThreadPoolExecutor:
    """Threads that hash shards (hashlib and pread release the GIL): one per core but one, at least one."""
    return ThreadPoolExecutor(max_workers=max(1, (os.cpu_count() or 2) - 1), thread_name_prefix="interp-verify")
