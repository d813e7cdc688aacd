"""Reading one shard of an activation store: positional reads into fresh or caller-given tensors, read-only
mappings for batches gathered in place, row groups read lazily, and the record of shards whose sha256 was
checked.

The record (``verified.json`` in the store directory) maps a shard file to the sha256 it matched and the
file's identity then: device, inode, size, and modification and status-change times in nanoseconds. The cache
writer records every shard it writes (it hashes the bytes as it writes them), and a reader every shard it
hashed. A reader trusts a shard whose identity is unchanged without hashing it again; any write to the file,
or a copy of the store to another place, changes the identity, so that shard is hashed again on its next read.
Writing the record is best effort: a read-only store is hashed by every reader, as before.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import math
import os
import struct
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import torch

from interp.activations.mapping import MAPS, ShardSpace
from interp.activations.shuffle import LazyRows, RowSpace
from interp.errors import InterpError
from interp.io import IOV_MAX, atomic_write_json, safetensors_dtypes

log = logging.getLogger(__name__)

VERIFIED = "verified.json"
VERIFIED_PART = "verified.rank{}.json"
"""A rank's own record while several processes write a store; rank 0 merges them into :data:`VERIFIED`."""
_RECORD_FORMAT = "interp-store-verified"
_ST_DTYPES = safetensors_dtypes()


class Shard:
    """An open safetensors shard, read with positional reads (pread) into fresh or given tensors, or mapped
    whole (:meth:`mapped`) for batches gathered straight from the page cache.

    A mapping is made with ``MAP_POPULATE``, so its pages are mapped in one call rather than faulted in one by
    one: copying rows out of a fresh unpopulated mapping ran at 0.5-0.9 GB/s on an earlier machine, and out of a
    populated one at memory-copy speed on the 2-core machine (``RowTable``'s measurements).
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

    def dtype(self, key: str) -> torch.dtype:
        return _ST_DTYPES[self.header[key]["dtype"]]

    def read(self, key: str, start: int = 0, stop: int | None = None, keep: torch.Tensor | None = None,
             out: torch.Tensor | None = None) -> torch.Tensor:
        """Rows ``start:stop`` of tensor ``key`` as a new tensor in the stored dtype (or into ``out``, contiguous,
        of that shape and dtype); with ``keep`` (a bool mask over those rows) only the kept rows, read straight
        into place (dropped rows go to a scratch buffer)."""
        entry = self.header[key]
        dtype = _ST_DTYPES[entry["dtype"]]
        shape = entry["shape"]
        stop = shape[0] if stop is None else stop
        n = stop - start if keep is None else int(keep.sum())
        if out is None:
            out = torch.empty((n, *shape[1:]), dtype=dtype)
        elif out.shape != (n, *shape[1:]) or out.dtype != dtype or not out.is_contiguous():
            raise ValueError(f"read({key!r}) needs a contiguous {dtype} tensor of shape {(n, *shape[1:])}")
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
        """Fill ``pieces`` from consecutive bytes at ``offset`` (preadv, at most ``IOV_MAX`` buffers a call)."""
        while pieces:
            got = os.preadv(self.fd, pieces[:IOV_MAX], offset)
            if got <= 0:
                raise InterpError(f"Shard {self.path.name} ended early while reading {key}: it is truncated.")
            offset += got
            while pieces and got >= len(pieces[0]):
                got -= len(pieces[0])
                pieces.pop(0)
            if got:
                pieces[0] = pieces[0][got:]

    def data_start(self, key: str) -> int:
        """Where tensor ``key``'s data starts in the file."""
        return self._base + int(self.header[key]["data_offsets"][0])

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


def digest(path: Path) -> str:
    """sha256 of the file at ``path``."""
    shard = Shard(path)
    try:
        return shard.sha256()
    finally:
        shard.close()


@functools.cache
def verify_pool() -> ThreadPoolExecutor:
    """Threads that hash shards (hashlib and pread release the GIL): one per core but one, at least one."""
    return ThreadPoolExecutor(max_workers=max(1, (os.cpu_count() or 2) - 1), thread_name_prefix="interp-verify")


class ShardRows(LazyRows):
    """Rows ``start:stop`` of an open shard (only those ``keep`` marks, when given) for ``keys``, read when
    the consumer asks; the shard must stay open until then. Every key must be stored as float32."""

    def __init__(self, shard: Shard, keys: list[str], start: int, stop: int, keep: torch.Tensor | None,
                 place: tuple[object, Callable[[], ShardSpace], int] | None = None):
        """``place``: (key, factory, index) of the space this shard (number ``index`` of its store) goes in."""
        self.shard, self.start, self.stop, self.keep = shard, start, stop, keep
        self.n = stop - start if keep is None else int(keep.sum())
        self.spec = {k: (tuple(shard.header[k]["shape"][1:]), torch.float32) for k in keys}
        self.place = place
        self.space_key = place[0] if place is not None and MAPS else None

    def space(self) -> ShardSpace:
        assert self.place is not None
        return self.place[1]()

    def in_space(self, space: RowSpace) -> torch.Tensor | None:
        assert self.place is not None and isinstance(space, ShardSpace)
        index = self.place[2]
        if not space.place(index, self.shard):
            return None
        rows = self.row_numbers()
        space.add(index, rows.shape[0])
        return rows + index * space.stride

    def row_numbers(self) -> torch.Tensor:
        """The group's rows as row numbers of its shard."""
        rows = torch.arange(self.start, self.stop)
        return rows if self.keep is None else rows[self.keep]

    def read_into(self, out: dict[str, torch.Tensor]) -> None:
        for k in self.spec:
            self.shard.read(k, self.start, self.stop, self.keep, out=out[k])


def file_identity(path: Path) -> list[int]:
    """What changes when the file at ``path`` is written, replaced or copied: device, inode, size, mtime, ctime."""
    st = path.stat()
    return [st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns]


def read_record(directory: Path, file: str = VERIFIED) -> dict[str, dict[str, Any]]:
    """Shard file -> {"sha256", "identity"} from ``directory``'s record (``file``: a rank's own record while ranks
    write a store); empty when there is none or it is not readable (the shards are then simply hashed)."""
    try:
        data = json.loads((directory / file).read_text())
    except (OSError, ValueError):
        return {}
    if not isinstance(data, dict) or data.get("format") != _RECORD_FORMAT or not isinstance(data.get("shards"), dict):
        return {}
    return data["shards"]


def write_record(directory: Path, fresh: dict[str, dict[str, Any]], file: str = VERIFIED) -> None:
    """Add ``fresh`` entries to ``directory``'s record ``file`` (atomically; skipped with a debug log where the
    store is not writable)."""
    shards = {**read_record(directory, file), **fresh}
    try:
        atomic_write_json(directory / file, {"format": _RECORD_FORMAT, "version": 1, "shards": shards})
    except (OSError, InterpError) as e:
        log.debug("could not record verified shards in %s: %s", directory, e)
