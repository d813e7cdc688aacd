"""Reading one shard of an activation store: positional reads into fresh or caller-given tensors, row
groups read lazily straight into a shuffle buffer, and the record of shards whose sha256 was checked.

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
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch

from interp.activations.shuffle import LazyRows
from interp.errors import InterpError
from interp.io import IOV_MAX, atomic_write_json, safetensors_dtypes

log = logging.getLogger(__name__)

VERIFIED = "verified.json"
_RECORD_FORMAT = "interp-store-verified"
_ST_DTYPES = safetensors_dtypes()


class Shard:
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

    def scatter(self, key: str, rows: torch.Tensor, out: torch.Tensor, slots: torch.Tensor) -> None:
        """Read rows ``rows`` (ascending) of tensor ``key`` straight into rows ``slots`` of ``out`` (contiguous, of
        the stored dtype and row shape): one ``preadv`` over the span they cover, whose rows go to their slots and
        whose rows between them to a scratch row. Needs :data:`SCATTER` (see :func:`_raw_preadv`)."""
        entry = self.header[key]
        row_bytes = math.prod(entry["shape"][1:]) * out.element_size()
        if not (out.is_contiguous() and out.dtype == _ST_DTYPES[entry["dtype"]] and out[0].numel() * out.element_size()
                == row_bytes and len(rows) == len(slots) and len(rows) and 0 <= int(slots.min())
                and int(slots.max()) < out.shape[0] and 0 <= int(rows[0]) and int(rows[-1]) < entry["shape"][0]):
            raise ValueError(f"scatter({key!r}): rows, slots or out do not fit the shard and each other")
        lo, hi = int(rows[0]), int(rows[-1]) + 1
        if len(self._scratch) < row_bytes:
            self._scratch = memoryview(bytearray(row_bytes))
        scratch = np.frombuffer(self._scratch, dtype=np.uint8)
        iov = np.empty((hi - lo, 2), dtype=np.uint64)
        iov[:, 0] = scratch.ctypes.data
        iov[(rows - lo).numpy(), 0] = out.data_ptr() + slots.numpy().astype(np.uint64) * row_bytes
        iov[:, 1] = row_bytes
        _preadv_into(self.fd, iov, self._base + entry["data_offsets"][0] + lo * row_bytes, key, self.path.name)

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




def _raw_preadv() -> Any:
    """libc's ``preadv`` through ctypes, which takes an iovec array built with numpy: no Python object per row
    (``os.preadv`` needs one buffer object per destination, which costs more than a row's copy). None where the
    C library or a 64-bit ``off_t`` is not there."""
    import ctypes

    try:
        fn = ctypes.CDLL(None, use_errno=True).preadv
    except (OSError, AttributeError):
        return None
    if ctypes.sizeof(ctypes.c_void_p) != 8 or not hasattr(os, "preadv"):
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_int, ctypes.c_int64]
    fn.restype = ctypes.c_ssize_t
    return fn


_PREADV = _raw_preadv()
SCATTER = _PREADV is not None
"""Whether rows can be read straight into scattered slots here."""
SCATTER_MIN_ROW_BYTES = 2048
"""Rows at least this large are read into scattered slots; smaller ones are read whole and copied. Measured on
the 2-core machine (a 34 MB shard in the page cache): reading into random slots ran at 1.25x a memory copy's time
for rows of 2-9 KiB, and at 4x for 512-byte rows, where a contiguous read and an index_copy_ (2x) is cheaper."""

def _preadv_into(fd: int, iov: np.ndarray, offset: int, key: str, name: str) -> None:
    """Fill the (address, length) buffers of ``iov`` from consecutive bytes at ``offset``, ``IOV_MAX`` a call,
    resuming after a short read."""
    import ctypes

    done, n = 0, len(iov)
    while done < n:
        part = iov[done : done + IOV_MAX]
        got = _PREADV(fd, part.ctypes.data, len(part), offset)
        if got < 0:
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err))
        if got == 0:
            raise InterpError(f"Shard {name} ended early while reading {key}: it is truncated.")
        offset += got
        ends = np.cumsum(part[:, 1])
        full = int(np.searchsorted(ends, got, side="right"))  # buffers filled completely
        if full < len(part):
            over = got - (int(ends[full - 1]) if full else 0)
            if over:  # a buffer filled in part: its rest next
                part[full, 0] += over
                part[full, 1] -= over
        done += full


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

    def __init__(self, shard: Shard, keys: list[str], start: int, stop: int, keep: torch.Tensor | None):
        self.shard, self.start, self.stop, self.keep = shard, start, stop, keep
        self.n = stop - start if keep is None else int(keep.sum())
        self.spec = {k: (tuple(shard.header[k]["shape"][1:]), torch.float32) for k in keys}
        self.scatters = SCATTER and all(4 * math.prod(shape) >= SCATTER_MIN_ROW_BYTES
                                        for shape, _ in self.spec.values())

    def scatter_into(self, out: dict[str, torch.Tensor], slots: torch.Tensor, first: int) -> None:
        rows = torch.arange(self.start, self.stop) if self.keep is None else \
            self.start + torch.nonzero(self.keep).squeeze(1)
        rows = rows[first : first + len(slots)]
        for k in self.spec:
            self.shard.scatter(k, rows, out[k], slots)

    def read_into(self, out: dict[str, torch.Tensor]) -> None:
        for k in self.spec:
            self.shard.read(k, self.start, self.stop, self.keep, out=out[k])


def file_identity(path: Path) -> list[int]:
    """What changes when the file at ``path`` is written, replaced or copied: device, inode, size, mtime, ctime."""
    st = path.stat()
    return [st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns]


def read_record(directory: Path) -> dict[str, dict[str, Any]]:
    """Shard file -> {"sha256", "identity"} from ``directory``'s record; empty when there is none or it is not
    readable (the shards are then simply hashed)."""
    try:
        data = json.loads((directory / VERIFIED).read_text())
    except (OSError, ValueError):
        return {}
    if not isinstance(data, dict) or data.get("format") != _RECORD_FORMAT or not isinstance(data.get("shards"), dict):
        return {}
    return data["shards"]


def write_record(directory: Path, fresh: dict[str, dict[str, Any]]) -> None:
    """Add ``fresh`` entries to ``directory``'s record (atomically; skipped with a debug log where the store is
    not writable)."""
    shards = {**read_record(directory), **fresh}
    try:
        atomic_write_json(directory / VERIFIED, {"format": _RECORD_FORMAT, "version": 1, "shards": shards})
    except (OSError, InterpError) as e:
        log.debug("could not record verified shards in %s: %s", directory, e)
