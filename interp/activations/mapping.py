"""Shards mapped into memory, read-only: the shards of a store laid end to end in one reserved range of
addresses per tensor (:class:`ShardSpace`), so that a single ``index_select`` gathers a batch whose rows come
from any of them.

The mappings are made through libc's ``mmap`` (ctypes): Python's ``mmap`` keeps a duplicate file descriptor open
for the life of each mapping, and a store can have more shards than a process may open files. None of it exists
where libc or a 64-bit address space is missing (:data:`MAPS`); readers then copy rows instead.
"""

from __future__ import annotations

import ctypes
import math
import mmap
import os
import weakref
from typing import Any

import torch

from interp.activations.shuffle import RowSpace
from interp.errors import InterpError

PAGE = mmap.PAGESIZE


def _libc() -> Any:
    if not hasattr(mmap, "MAP_SHARED") or ctypes.sizeof(ctypes.c_void_p) != 8:
        return None
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        do_map, do_unmap = libc.mmap, libc.munmap
    except (OSError, AttributeError):
        return None
    do_map.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_int64]
    do_map.restype = ctypes.c_void_p
    do_unmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
    do_unmap.restype = ctypes.c_int
    return do_map, do_unmap


_MMAP = _libc()
MAPS = _MMAP is not None
"""Whether shards can be mapped into memory here."""
_FAILED = ctypes.c_void_p(-1).value
_POPULATE = getattr(mmap, "MAP_POPULATE", 0)
_NORESERVE = getattr(mmap, "MAP_NORESERVE", 0)
_PROT_NONE = 0  # no access (Python's mmap module does not export it)
_FIXED = 0x10  # MAP_FIXED: the same value on Linux, the BSDs and macOS (Python's mmap module does not export it)


def _mmap(addr: int | None, size: int, prot: int, flags: int, fd: int, offset: int, what: str) -> int:
    do_map, _ = _MMAP
    got = do_map(addr, size, prot, flags, fd, offset)
    if got is None or got == _FAILED or (addr is not None and got != addr):
        raise InterpError(f"Could not map {what} into memory ({os.strerror(ctypes.get_errno())}).")
    return int(got)


def _region(addr: int, size: int) -> Any:
    """A buffer object over ``size`` bytes at ``addr`` that unmaps them when it is collected."""
    region = (ctypes.c_char * size).from_address(addr)
    weakref.finalize(region, _MMAP[1], addr, size)
    return region


def as_tensor(region: Any, dtype: torch.dtype, count: int, offset: int, shape: tuple[int, ...]) -> torch.Tensor:
    """``count`` elements of ``region`` from byte ``offset``, as a tensor of ``shape`` sharing its memory."""
    import warnings

    with warnings.catch_warnings():  # torch warns that the buffer is read-only: it is, on purpose
        warnings.simplefilter("ignore", UserWarning)
        return torch.frombuffer(region, dtype=dtype, count=count, offset=offset).view(shape)


class ShardSpace(RowSpace):
    """Tensor ``key`` of every shard of a store, end to end in one reserved range of addresses (one range per
    key): shard ``i``'s rows are rows ``i * stride ...`` of :attr:`tensors` (``stride``: the most rows a shard has,
    rounded up so that each shard starts on a page). A shard is mapped into its place the first time one of its
    blocks is numbered (:meth:`place`: read-only, straight from the file, populated) and unmapped once its last
    row has surely gone out (:meth:`passed`), so what is mapped stays bounded however large the store. Rows between
    shards are never named, and their addresses hold no memory.

    A shard can be placed when each tensor's data starts on a page of its file, as the cache writes them
    (``ShardStream``); the rows of any other shard are read into memory instead."""

    def __init__(self, rows: list[int], spec: dict[str, tuple[tuple[int, ...], torch.dtype]]):
        self.rows, self.spec = rows, spec
        self.row_bytes = {k: math.prod(shape) * dtype.itemsize for k, (shape, dtype) in spec.items()}
        step = math.lcm(*(PAGE // math.gcd(PAGE, b) for b in self.row_bytes.values()))  # a power of two
        self.shift = max(step, max(rows, default=1)).bit_length() - 1
        self.shift += (1 << self.shift) < max(step, max(rows, default=1))
        self.stride = 1 << self.shift  # a power of two: a row's shard is a shift away
        self._addr: dict[str, int] = {}
        self.tensors: dict[str, torch.Tensor] = {}
        for k, (shape, dtype) in spec.items():
            size = max(1, len(rows)) * self.stride * self.row_bytes[k]
            addr = _mmap(None, size, _PROT_NONE, mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | _NORESERVE, -1, 0,
                         f"{size:,} bytes of address space")
            self._addr[k] = addr
            self.tensors[k] = as_tensor(_region(addr, size), dtype, size // dtype.itemsize, 0,
                                        (size // self.row_bytes[k], *shape))
        self._stream = 0  # rows numbered in the space so far
        self._last = [0] * len(rows)  # self._stream just after each shard's latest rows were numbered
        self._live: set[int] = set()  # shards mapped now

    def place(self, index: int, shard: Any) -> bool:
        """Map shard ``index`` (an open :class:`~interp.activations.shard.Shard`) into its place unless it is
        there; False when it cannot be placed (a tensor off a page boundary, or not the shape expected)."""
        if index in self._live:
            return True
        offsets, file_size = {}, os.fstat(shard.fd).st_size
        for k, (shape, dtype) in self.spec.items():
            entry = shard.header.get(k)
            if entry is None or shard.dtype(k) != dtype or list(entry["shape"]) != [self.rows[index], *shape]:
                return False
            offsets[k] = shard.data_start(k)
            if offsets[k] % PAGE:
                return False
            if offsets[k] + self.rows[index] * self.row_bytes[k] > file_size:
                raise InterpError(f"Shard {shard.path.name}: {k} lies outside the file; the shard is corrupted.")
        for k, offset in offsets.items():
            size = self.rows[index] * self.row_bytes[k]
            if size:
                _mmap(self._slot(k, index), size, mmap.PROT_READ, mmap.MAP_SHARED | _FIXED | _POPULATE, shard.fd,
                      offset, f"shard {shard.path.name}")
        self._live.add(index)
        return True

    def add(self, index: int, n: int) -> None:
        """``n`` more rows of shard ``index`` are numbered (they are the space's latest rows)."""
        self._stream += n
        self._last[index] = self._stream

    def passed(self, lag: int) -> None:
        """Unmap the shards none of whose rows were numbered in the last ``lag`` rows: they have all gone out."""
        for i in [i for i in self._live if self._stream - self._last[i] >= lag]:
            self._release(i)

    def _release(self, index: int) -> None:
        """Unmap shard ``index``; its addresses stay reserved (and hold no memory)."""
        for k in self.spec:
            size = self.rows[index] * self.row_bytes[k]
            if size:
                _mmap(self._slot(k, index), size, _PROT_NONE,
                      mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | _FIXED | _NORESERVE, -1, 0, "a released shard")
        self._live.discard(index)

    def _slot(self, key: str, index: int) -> int:
        return self._addr[key] + index * self.stride * self.row_bytes[key]
