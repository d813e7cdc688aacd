"""The one interface every activation source implements, and its one batching loop.

An :class:`ActivationSource` gives rows of activations (one row per token, flattened per hook) in
seeded, shuffled batches. Three implement it: the on-disk store (:class:`~interp.activations.store.
ActivationStore`), the model run over a corpus on the fly (:class:`~interp.activations.live.ModelSource`)
and in-memory tensors (:class:`~interp.activations.tensors.TensorSource`). Each subclasses :class:`RowSource`
and supplies one epoch of row groups; :func:`shuffled_batches` turns those into batches for all of them,
so a run switches between a store and the live model with one argument.

Row groups are dicts keyed by :func:`act_key` / :func:`grad_key`, float32, all with the same first
dimension. Rows keep their identity through the loop: the same (source, seed) gives the same batches.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, NamedTuple, Protocol, runtime_checkable

import torch

from interp.activations.shuffle import Assembler, Block, Rows, RowTable, ShuffleBuffer, Workspace, as_rows
from interp.errors import InterpError
from interp.model import Model
from interp.model.corpus import Context


def act_key(hook: str) -> str:
    """Key of a hook's activations in a row group (and in a store shard)."""
    return f"act/{hook}"


def grad_key(hook: str) -> str:
    """Key of a hook's LM-loss gradients in a row group (and in a store shard)."""
    return f"grad/{hook}"


class Batch(NamedTuple):
    """Rows drawn together from a source: every tensor has the same first dimension."""

    acts: dict[str, torch.Tensor]
    """hook -> activations (batch, d)."""
    grads: dict[str, torch.Tensor]
    """hook -> LM-loss gradients (batch, d); empty unless asked for."""

@runtime_checkable
class ActivationSource(Protocol):
    """Rows of activations for one or more hooks, streamed in seeded shuffled batches.

    What the trainer and the evals read. ``model`` is the :class:`interp.model.ModelInfo` (as a dict) of the
    model the rows come from, ``{}`` when unknown; ``path`` the directory behind the source, if any.
    """

    @property
    def hooks(self) -> list[str]: ...

    @property
    def model(self) -> dict[str, Any]: ...

    @property
    def has_grads(self) -> bool: ...

    @property
    def path(self) -> Path | None: ...

    @property
    def ctx_len(self) -> int | None:
        """Tokens per context the rows were computed in (BOS included); None when rows are not from contexts."""
        ...

    def d(self, hook: str) -> int:
        """Row width of ``hook`` (its per-token activation flattened)."""
        ...

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
        part: tuple[int, int] = (0, 1),
        pin_memory: bool = False,
    ) -> Iterator[Batch]:
        """``epochs`` passes over the rows in batches of ``batch_size`` (float32, shape (batch, d) per hook).

        ``shuffle=False`` keeps source order; ``buffer_rows`` sizes the shuffle buffer (each source has a
        default); ``exclude_bos`` drops inserted BOS rows; ``grads`` adds LM-loss gradients (sources with
        ``has_grads``); ``drop_last`` drops a final partial batch. ``part=(rank, n)`` gives this rank's
        ``batch_size // n`` rows of each batch, for data-parallel training: the rows ``rank`` of ``n`` equal
        slices of the batch one process would get, or, for a source that computes its rows (the live model),
        the rows of the contexts it assigns to ``rank``. ``pin_memory`` puts shuffled batches in
        page-locked memory, for ``.to("cuda", non_blocking=True)`` (needs CUDA)."""
        ...


class RowSource(ABC):
    """Implements :meth:`ActivationSource.batches` once, for every source, from one epoch of row groups."""

    path: Path | None = None

    @property
    @abstractmethod
    def hooks(self) -> list[str]: ...

    @abstractmethod
    def d(self, hook: str) -> int: ...

    @property
    def has_grads(self) -> bool:
        return False

    @abstractmethod
    def _epoch(
        self, hooks: list[str], grads: bool, block_rows: int, gen: torch.Generator | None, exclude_bos: bool
    ) -> Iterator[Block]:
        """One pass over the rows of ``hooks`` (with gradients when ``grads``) as float32 row groups keyed
        by :func:`act_key` / :func:`grad_key` (tensors, or :class:`LazyRows` read into place when consumed
        before the next group), in an order drawn from ``gen`` (None: source order); ``block_rows`` is a hint
        for the group size."""

    def _for_rank(self, rank: int, n: int) -> RowSource | None:
        """A source computing only rank ``rank`` of ``n``'s share of the work (None: every rank reads the
        whole batch and keeps its slice, which keeps the batches one process would see)."""
        return None

    def _default_buffer_rows(self, batch_size: int) -> int | None:
        """Shuffle-buffer rows when the caller gives none: None sizes it by bytes (about 256 MiB), 0 disables
        it (for sources whose ``_epoch`` is already fully shuffled)."""
        return None

    def _max_rows(self) -> int | None:
        """At most this many rows in one epoch (None: not known); the shuffle buffer is never made larger."""
        return None

    def _maps_rows(self, hooks: list[str], grads: bool) -> bool:
        """True when every group of an epoch can be gathered from by row number (:class:`RowTable`): shuffled
        rows then go through the buffer as numbers, and each batch is gathered straight from the groups."""
        return False

    @property
    def _workspace(self) -> Workspace:
        """Memory the shuffle buffer keeps between passes over this source."""
        found = self.__dict__.get("_shuffle_workspace")
        if found is None:
            found = self.__dict__["_shuffle_workspace"] = Workspace()
        return found

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
        part: tuple[int, int] = (0, 1),
        pin_memory: bool = False,
    ) -> Iterator[Batch]:
        """See :meth:`ActivationSource.batches`."""
        rank, n = part
        if n > 1:
            if batch_size % n or not 0 <= rank < n:
                raise InterpError(f"A batch of {batch_size} rows does not split into {n} equal parts.")
            kw = dict(epochs=epochs, seed=seed, shuffle=shuffle, buffer_rows=buffer_rows, exclude_bos=exclude_bos,
                      grads=grads, drop_last=drop_last, pin_memory=pin_memory)
            local = self._for_rank(rank, n)
            if local is not None:
                yield from local.batches(hooks, batch_size // n, **kw)  # type: ignore[arg-type]
                return
            lo, hi = rank * batch_size // n, (rank + 1) * batch_size // n
            for b in self.batches(hooks, batch_size, **kw):  # type: ignore[arg-type]
                yield Batch({h: v[lo:hi] for h, v in b.acts.items()}, {h: v[lo:hi] for h, v in b.grads.items()})
            return
        hooks = [hooks] if isinstance(hooks, str) else list(hooks)
        widths = [self.d(h) for h in hooks]  # raises for a hook the source does not have
        if grads and not self.has_grads:
            raise InterpError(f"{type(self).__name__} {self.path or ''} has no gradients. Re-cache with --with-grads.")
        gen = torch.Generator().manual_seed(seed) if shuffle else None
        yield from shuffled_batches(
            lambda: self._epoch(hooks, grads, batch_size, gen, exclude_bos), hooks, widths, batch_size, epochs=epochs,
            gen=gen, buffer_rows=buffer_rows if buffer_rows is not None else self._default_buffer_rows(batch_size),
            grads=grads, drop_last=drop_last, max_rows=self._max_rows(), workspace=self._workspace,
            pin_memory=pin_memory, by_number=self._maps_rows(hooks, grads),
        )


def shuffled_batches(
    epoch_blocks: Callable[[], Iterator[Block]],
    hooks: list[str],
    widths: list[int],
    batch_size: int,
    *,
    epochs: int,
    gen: torch.Generator | None,
    buffer_rows: int | None,
    grads: bool,
    drop_last: bool,
    max_rows: int | None = None,
    workspace: Workspace | None = None,
    pin_memory: bool = False,
    by_number: bool = False,
) -> Iterator[Batch]:
    """Batches of exactly ``batch_size`` rows from ``epochs`` calls of ``epoch_blocks`` (row groups keyed
    by :func:`act_key` / :func:`grad_key`), mixed through a shuffle buffer unless ``gen`` is None.

    The buffer holds ``buffer_rows`` rows (None: about 256 MiB of them, at least 4 batches; 0: no buffer), or
    ``epochs * max_rows`` when an epoch has at most ``max_rows`` rows and that is fewer (the batches are the
    same). Its memory comes from ``workspace`` when given (kept for the next pass). ``pin_memory``: shuffled
    batches are made in page-locked memory (for copies to a GPU with ``non_blocking=True``). ``by_number``: the
    buffer moves row numbers and each batch is gathered from the groups where they are (:class:`RowTable`; for
    groups that name their rows, such as mapped shards); the batches are the same."""
    if batch_size < 1 or epochs < 1:
        raise InterpError(f"batch_size and epochs must be >= 1 (got {batch_size}, {epochs}).")
    if buffer_rows is None:
        row_bytes = 4 * sum(widths) * (2 if grads else 1)
        buffer_rows = max(4 * batch_size, (256 << 20) // row_bytes)
    if gen is None or buffer_rows <= 0:
        yield from _unbuffered(epoch_blocks, hooks, batch_size, epochs, grads, drop_last)
        return
    capacity = max(buffer_rows, batch_size)
    if max_rows is not None:
        capacity = max(1, min(capacity, epochs * max_rows))
    table = RowTable(pin_memory, lag=2 * capacity + batch_size) if by_number else None
    out = Assembler(batch_size, pin_memory and table is None)
    buf = ShuffleBuffer(capacity, gen, out, workspace or Workspace())

    def ready(groups: list[Rows]) -> Iterator[Batch]:
        yield from _as_batches(groups if table is None else [table.gather(g) for g in groups], hooks, grads)

    try:
        for _ in range(epochs):
            for block in epoch_blocks():
                buf.push(block if table is None else table.numbers(block))
                yield from ready(out.take_ready())
        for _ in buf.flush():
            yield from ready(out.take_ready())
        tail = out.tail()
        if tail is not None and not drop_last:
            yield from ready([tail])
    finally:
        buf.release()


def _as_batches(groups: list[dict[str, torch.Tensor]], hooks: list[str], grads: bool) -> Iterator[Batch]:
    for rows in groups:
        yield Batch({h: rows[act_key(h)] for h in hooks}, {h: rows[grad_key(h)] for h in hooks} if grads else {})


def _unbuffered(epoch_blocks: Callable[[], Iterator[Block]], hooks: list[str], batch_size: int,
                epochs: int, grads: bool, drop_last: bool) -> Iterator[Batch]:
    batcher = _Batcher(batch_size, hooks, grads)
    for _ in range(epochs):
        for block in epoch_blocks():
            yield from batcher.add(as_rows(block))
    yield from batcher.finish(keep_tail=not drop_last)


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
        return next(_as_batches([rows], self.hooks, self.grads))


def probe_shapes(model: Model, hooks: list[str], first: Context) -> dict[str, list[int]]:
    """Per-token shape of every hook, from one context; refuses hooks that are not per-token."""
    acts = model.capture(first.tokens[None], hooks).acts
    shapes = {}
    for h in hooks:
        a = acts[h]
        if a.dim() < 3 or a.shape[:2] != (1, first.tokens.shape[0]):
            raise InterpError(
                f"Hook {h} gives activations of shape {tuple(a.shape)}, not (batch, pos, ...): it is not a "
                "per-token activation (e.g. attention patterns), so it cannot be cached as rows."
            )
        shapes[h] = list(a.shape[2:])
    return shapes
