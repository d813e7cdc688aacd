"""The shuffle buffer behind every source's batches, built to copy each row as few times as it can.

A row is copied into the buffer once (when its block arrives) and out once, straight into the batch it goes
out in: evicted rows are gathered into batch-sized tensors with ``index_select(out=...)``, so no batch is ever
stitched from pieces. The buffer's memory comes from a :class:`Workspace` that keeps it between passes over the
same source, so a pass does not fault in hundreds of megabytes of fresh pages. Batches are fresh tensors (in
page-locked memory when ``pin_memory``; torch's caching host allocator then reuses them once their copies to
the GPU are done), so a caller may keep them.

The order rows come out in is a pure function of the seed and the sizes of the incoming blocks; the buffer
draws from the generator only when it starts a new permutation (and once at the end).
"""

from __future__ import annotations

import contextlib
import math
import mmap
from abc import ABC, abstractmethod
from collections.abc import Iterator

import torch

Rows = dict[str, torch.Tensor]
"""Row group: key -> (rows, ...) tensor, every tensor with the same number of rows."""


class LazyRows(ABC):
    """A row group not read yet, which can be read straight into a caller's memory: a shuffle buffer that is
    still filling reads it into its own slots, one copy fewer than reading it into fresh tensors first."""

    n: int
    """Rows in the group."""
    spec: dict[str, tuple[tuple[int, ...], torch.dtype]]
    """key -> (per-row shape, dtype) of the tensors the group reads."""

    @abstractmethod
    def read_into(self, out: Rows) -> None:
        """Fill ``out[key]`` (contiguous, ``(n, *shape)``) for every key of ``spec``."""

    scatters: bool = False
    """True when :meth:`scatter_into` can read rows straight into scattered slots (one copy in, not two)."""

    def scatter_into(self, out: Rows, slots: torch.Tensor, first: int) -> None:
        """Read rows ``first : first + len(slots)`` of the group into rows ``slots`` of ``out[key]`` (contiguous
        ``(capacity, *shape)`` tensors); only called where :attr:`scatters` is True."""
        raise NotImplementedError

    def tensors(self) -> Rows:
        """The group as fresh tensors."""
        out = {k: torch.empty((self.n, *shape), dtype=dtype) for k, (shape, dtype) in self.spec.items()}
        self.read_into(out)
        return out


Block = Rows | LazyRows
"""What a source's epoch yields: tensors, or rows it can read into place."""


def as_rows(block: Block) -> Rows:
    return block.tensors() if isinstance(block, LazyRows) else block


_HUGE_PAGE = 2 << 20


def large_empty(shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    """An uninitialised tensor; from 8 MiB up, in fresh anonymous memory that the kernel may back with 2 MiB
    pages (``madvise(MADV_HUGEPAGE)``, where the system allows it), so touching it first costs 512x fewer page
    faults. On the 2-core machine this was measured on, filling a new 34 MB tensor took 12.8 ms this way and
    24.8 ms from ``torch.empty`` (7 ms once its pages were in). The memory is returned when the tensor dies, so
    this is for buffers kept and reused (a :class:`Workspace`), not for tensors made again and again."""
    nbytes = math.prod(shape) * dtype.itemsize
    if nbytes < 4 * _HUGE_PAGE or not hasattr(mmap, "MADV_HUGEPAGE"):
        return torch.empty(shape, dtype=dtype)
    region = mmap.mmap(-1, nbytes + _HUGE_PAGE, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    with contextlib.suppress(OSError):  # a kernel without transparent huge pages: plain pages
        region.madvise(mmap.MADV_HUGEPAGE)
    raw = torch.frombuffer(region, dtype=torch.uint8)  # keeps ``region`` alive as long as the tensor lives
    start = -raw.data_ptr() % _HUGE_PAGE  # huge pages cover aligned 2 MiB spans
    return raw[start : start + nbytes].view(dtype).view(shape)


class Workspace:
    """Tensors kept between the passes of one source and lent to one pass at a time (a second pass running at
    the same time gets its own)."""

    def __init__(self) -> None:
        self._free: dict[tuple[tuple[int, ...], torch.dtype], torch.Tensor] = {}

    def take(self, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
        found = self._free.pop((shape, dtype), None)
        return found if found is not None else large_empty(shape, dtype)

    def give(self, tensors: Rows) -> None:
        for t in tensors.values():
            self._free[(tuple(t.shape), t.dtype)] = t


class Assembler:
    """Gathers rows into batches of exactly ``batch_size`` rows, in the order given."""

    def __init__(self, batch_size: int, pin_memory: bool = False):
        self.batch_size, self.pin_memory = batch_size, pin_memory
        self.current: Rows = {}
        self.fill = 0
        self.ready: list[Rows] = []

    def gather(self, data: Rows, index: torch.Tensor) -> None:
        """Append rows ``index`` of ``data`` (in that order) to the batches under assembly."""
        i, n = 0, index.shape[0]
        while i < n:
            if not self.current:
                # fresh tensors from the allocator, which reuses the memory of batches already dropped (huge-page
                # memory here, fresh each time, measured slower: 0.35 against 0.43 of a memory copy, 3 KiB rows)
                self.current = {k: torch.empty((self.batch_size, *v.shape[1:]), dtype=v.dtype,
                                               pin_memory=self.pin_memory) for k, v in data.items()}
            take = min(self.batch_size - self.fill, n - i)
            part = index[i : i + take]
            for k, v in data.items():
                torch.index_select(v, 0, part, out=self.current[k][self.fill : self.fill + take])
            self.fill += take
            i += take
            if self.fill == self.batch_size:
                self.ready.append(self.current)
                self.current, self.fill = {}, 0

    def take_ready(self) -> list[Rows]:
        out, self.ready = self.ready, []
        return out

    def tail(self) -> Rows | None:
        """The last, partial batch (None when there is none); the assembler is empty afterwards."""
        out = {k: v[: self.fill] for k, v in self.current.items()} if self.current and self.fill else None
        self.current, self.fill = {}, 0
        return out


class ShuffleBuffer:
    """A full buffer of rows; each incoming block takes the slots of the rows it evicts, which go out.

    Slots are visited in the order of a fresh random permutation per buffer-full, so each row is copied
    once in and once out, and mixing spans many shards and blocks. A buffer larger than every row a pass will
    push behaves the same as one exactly that large (it never fills), so callers may cap ``capacity`` there.
    """

    def __init__(self, capacity: int, gen: torch.Generator, out: Assembler, workspace: Workspace):
        self.capacity, self.gen, self.out, self.workspace = capacity, gen, out, workspace
        self.data: Rows = {}
        self.n = 0
        self.perm = torch.empty(0, dtype=torch.int64)
        self.cursor = capacity  # a permutation is drawn when the buffer first fills

    def push(self, block: Block) -> None:
        """Add the rows of ``block``; the rows they evict go to the assembler. A lazy block that fits in the
        part of the buffer still filling is read straight into it, and so is one that can be read into scattered
        slots (large rows from a shard): each evicted slot is refilled straight from the file."""
        if not self.data:
            spec = block.spec if isinstance(block, LazyRows) else {k: (tuple(v.shape[1:]), v.dtype)
                                                                     for k, v in block.items()}
            self.data = {k: self.workspace.take((self.capacity, *shape), dtype) for k, (shape, dtype) in spec.items()}
        if isinstance(block, LazyRows):
            if block.n <= self.capacity - self.n:
                block.read_into({k: v[self.n : self.n + block.n] for k, v in self.data.items()})
                self.n += block.n
                return
            if block.scatters:
                self._scatter(block)
                return
            block = block.tensors()
        rows = block
        m = next(iter(rows.values())).shape[0]
        i = 0
        while i < m:
            if self.n < self.capacity:  # still filling
                take = min(self.capacity - self.n, m - i)
                for k, v in rows.items():
                    self.data[k][self.n : self.n + take] = v[i : i + take]
                self.n += take
            else:
                slots = self._evict(m - i)
                take = slots.shape[0]
                for k, v in rows.items():
                    self.data[k].index_copy_(0, slots, v[i : i + take])
            i += take

    def _scatter(self, block: LazyRows) -> None:
        """``push`` for a lazy block read straight into its slots: the same slots, in the same order, as the
        tensor path gives it."""
        i = 0
        while i < block.n:
            if self.n < self.capacity:  # still filling
                take = min(self.capacity - self.n, block.n - i)
                block.scatter_into(self.data, torch.arange(self.n, self.n + take), i)
                self.n += take
            else:
                slots = self._evict(block.n - i)
                take = slots.shape[0]
                block.scatter_into(self.data, slots, i)
            i += take

    def _evict(self, m: int) -> torch.Tensor:
        """The next slots (at most ``m``) of the current permutation (a new one once it is used up); their rows
        go to the assembler now, so incoming rows may take them."""
        if self.cursor >= self.capacity:
            self.perm = torch.randperm(self.capacity, generator=self.gen)
            self.cursor = 0
        take = min(self.capacity - self.cursor, m)
        slots = self.perm[self.cursor : self.cursor + take]
        self.cursor += take
        self.out.gather(self.data, slots)
        return slots

    def flush(self) -> Iterator[None]:
        """Send everything still buffered out, in random order, pausing after each completed batch (so the
        caller hands batches on as they are made)."""
        perm = torch.randperm(self.n, generator=self.gen)
        data = {k: v[: self.n] for k, v in self.data.items()}
        a = 0
        while a < self.n:
            b = min(self.n, a + self.out.batch_size - self.out.fill)
            self.out.gather(data, perm[a:b])
            a = b
            yield
        self.n, self.cursor = 0, self.capacity

    def release(self) -> None:
        """Hand the buffer's memory back to the workspace (the buffer is unusable afterwards)."""
        self.workspace.give(self.data)
        self.data = {}
