"""The shuffle buffer behind every source's batches, built to copy each row as few times as it can.

Where the rows stay readable in place (a store's shards, mapped from the page cache), a :class:`RowTable`
numbers them and the buffer moves the numbers: each batch is gathered straight from the shards, one copy per
row. Otherwise a row is copied into the buffer once (when its block arrives) and out once, straight into the
batch it goes out in: evicted rows are gathered into batch-sized tensors with ``index_select(out=...)``, so no
batch is ever stitched from pieces. The buffer's memory comes from a :class:`Workspace` that keeps it between
passes over the same source, so a pass does not fault in hundreds of megabytes of fresh pages. Batches are fresh
tensors (in page-locked memory when ``pin_memory``; torch's caching host allocator then reuses them once their
copies to the GPU are done), so a caller may keep them.

The order rows come out in is a pure function of the seed and the sizes of the incoming blocks, whichever way
they travel; the buffer draws from the generator only when it starts a new permutation (and once at the end).
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

    space_key: object = None
    """Groups with the same key can share a :class:`RowSpace` (None: none): their rows are numbered in it, and a
    batch of rows from any of them is one gather."""

    def space(self) -> RowSpace:
        """A new space for the groups of :attr:`space_key` (only where it is set)."""
        raise NotImplementedError

    def in_space(self, space: RowSpace) -> torch.Tensor | None:
        """Put the group in ``space`` (mapping its shard there the first time) and return its rows as numbers of
        rows of ``space.tensors``; None when it cannot go there (its rows are then read into memory)."""
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


_SCRATCH_BYTES = 1 << 21


class RowSpace(ABC):
    """Tensors whose rows many groups are (the shards of a store, mapped end to end), told how long a row can
    stay in flight so that it can let go of groups that are done."""

    tensors: Rows

    @abstractmethod
    def passed(self, lag: int) -> None:
        """Every row numbered at least ``lag`` rows before the space's latest has gone out in a batch."""

ROW_ID = "row"
"""The key under which :class:`RowTable` numbers travel through a shuffle buffer."""


class RowTable:
    """Row groups numbered in one sequence: groups that stay where they are (a store's shards, mapped end to end
    in a :class:`RowSpace`) and blocks held in memory. The shuffle buffer moves numbers (8 bytes a row) instead
    of rows, and each batch is gathered straight from the groups' tensors, one copy per row. The numbers go
    through the same buffer slots in the same order as the rows would, so the batches are the same as when rows
    are copied through the buffer.

    A group is let go once every row of it has gone out. A buffer visits each of its slots
    once per permutation, so no row stays in it for more than two buffer-fulls of incoming rows (and its batch
    is complete a batch later): a space lets go of its shards on that rule (``lag``), with no counting, and a
    pass keeps at most the shards holding the last two buffer-fulls mapped, however large the store.

    Measured on the 2-core machine (65,536 rows of 512 bytes in one shard in the page cache, batches of 4,096 in
    a random order): gathering the batches from a fresh populated mapping took 6.3 ms, a memory copy of the same
    bytes 6.9 ms, and reading the shard into a buffer, then gathering from it, 13.8 ms."""

    def __init__(self, pin_memory: bool = False, lag: int | None = None) -> None:
        """``lag``: rows numbered after a row before it has surely gone out in a batch (a buffer of ``capacity``
        rows and batches of ``batch_size``: ``2 * capacity + batch_size``); None: groups of a space are let go
        only with the space."""
        self.pin_memory, self.lag = pin_memory, lag
        self._index: dict[object, int] = {}
        self._whole: list[Rows | None] = []
        self._bases: list[int] = []
        self._left: list[int] = []  # rows of each group numbered and not gathered yet
        self._bases_t = torch.empty(0, dtype=torch.int64)
        self._spaces: dict[int, RowSpace] = {}
        self._n = 0

    def numbers(self, block: Block) -> Rows:
        """``block``'s rows as numbers in this table. A group that can go in a space (``space_key``) is numbered
        there; any other block becomes a group of its own, in memory, let go when its last row is out."""
        if isinstance(block, LazyRows) and block.space_key is not None:
            numbered = self._in_space(block)
            if numbered is not None:
                return numbered
        whole = as_rows(block)
        n = next(iter(whole.values())).shape[0]
        self._whole.append(whole)
        self._bases.append(self._n)
        self._left.append(n)
        self._n += n
        return {ROW_ID: torch.arange(self._n - n, self._n)}

    def _in_space(self, block: LazyRows) -> Rows | None:
        at = self._index.get(block.space_key)
        space = self._spaces.get(at) if at is not None else None
        space = space if space is not None else block.space()
        rows = block.in_space(space)
        if rows is None:
            return None
        if at is None:
            at = self._index[block.space_key] = len(self._whole)
            self._whole.append(None)
            self._bases.append(self._n)
            self._left.append(0)
        if self._whole[at] is None:
            self._whole[at], self._spaces[at] = space.tensors, space
            self._n = max(self._n, self._bases[at] + next(iter(space.tensors.values())).shape[0])
        self._left[at] += rows.shape[0]
        return {ROW_ID: rows + self._bases[at]}

    def gather(self, numbered: Rows) -> Rows:
        """The rows ``numbered[ROW_ID]`` names, in that order, as fresh tensors."""
        ids = numbered[ROW_ID]
        if len(self._bases) == 1:
            group, counts, present = None, {0: ids.shape[0]}, [0]
        else:
            if self._bases_t.shape[0] != len(self._bases):
                self._bases_t = torch.tensor(self._bases)
            group = torch.searchsorted(self._bases_t, ids, right=True) - 1
            lo, hi = (int(x) for x in torch.aminmax(group))
            counts = dict(enumerate(torch.bincount(group - lo).tolist(), start=lo)) if hi > lo else {lo: ids.shape[0]}
            present = [g for g, c in counts.items() if c]
        first = self._whole[present[0]]
        assert first is not None
        out = {k: torch.empty((ids.shape[0], *v.shape[1:]), dtype=v.dtype, pin_memory=self.pin_memory)
               for k, v in first.items()}
        if len(present) == 1:
            for k, v in first.items():
                torch.index_select(v, 0, ids - self._bases[present[0]], out=out[k])
        else:
            assert group is not None
            self._gather_groups(ids, group, out)
        if self.lag is not None:
            for space in self._spaces.values():
                space.passed(self.lag)
        for g in present:
            self._left[g] -= counts[g]
            if not self._left[g]:
                self._whole[g] = None  # the last row of the group is out: unmapped when its tensors go
                self._spaces.pop(g, None)
        return out

    def _gather_groups(self, ids: torch.Tensor, group: torch.Tensor, out: Rows) -> None:
        """``gather`` for rows of several groups, a piece of the batch at a time: each piece's rows are gathered
        group by group into a scratch small enough to stay in cache, then from there into their places in the
        batch, so memory sees one read and one write per row (``index_copy_`` into scattered places ran at a
        fifth of ``index_select``'s speed here)."""
        widest = max(v[0].numel() * v.element_size() for v in out.values())
        step = max(1, _SCRATCH_BYTES // max(1, widest))
        scratch = {k: torch.empty((min(step, ids.shape[0]), *v.shape[1:]), dtype=v.dtype) for k, v in out.items()}
        for p in range(0, ids.shape[0], step):
            q = min(p + step, ids.shape[0])
            piece = group[p:q]
            order = torch.argsort(piece, stable=True)
            lo = int(piece.min())
            sorted_ids, runs, a = ids[p:q][order], [], 0
            for g, c in enumerate(torch.bincount(piece - lo).tolist(), start=lo):
                if c:
                    runs.append((g, a, a + c))
                    a += c
            back = torch.empty_like(order)
            back[order] = torch.arange(q - p)
            for k in out:  # one key at a time, so that only its scratch is in cache
                for g, a, b in runs:
                    whole = self._whole[g]
                    assert whole is not None
                    torch.index_select(whole[k], 0, sorted_ids[a:b] - self._bases[g], out=scratch[k][a:b])
                torch.index_select(scratch[k][: q - p], 0, back, out=out[k][p:q])


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
        part of the buffer still filling is read straight into it."""
        if not self.data:
            spec = block.spec if isinstance(block, LazyRows) else {k: (tuple(v.shape[1:]), v.dtype)
                                                                     for k, v in block.items()}
            self.data = {k: self.workspace.take((self.capacity, *shape), dtype) for k, (shape, dtype) in spec.items()}
        if isinstance(block, LazyRows):
            if block.n <= self.capacity - self.n:
                block.read_into({k: v[self.n : self.n + block.n] for k, v in self.data.items()})
                self.n += block.n
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
