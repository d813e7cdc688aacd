"""What a cache job runs on: contexts read and tokenised ahead on a background thread (:func:`prefetch`), and
drawn shard by shard only as the model uses them (:func:`shard_groups`), so the first batch of a shard never
waits for the whole shard to be tokenised."""

from __future__ import annotations

import contextlib
import itertools
import queue
import threading
from collections.abc import Generator, Iterator
from typing import Any

from interp.model.corpus import Context


def prepend(first: Context, rest: Iterator[Context]) -> Iterator[Context]:
    yield first
    yield from rest


def prefetch(items: Iterator[Context], depth: int) -> Generator[Context, None, None]:
    """Produce ``items`` on a background thread (reading and tokenising overlap the forward pass).

    One producer keeps the order; an exception in it is raised here, in the consumer.
    """
    q: queue.Queue[Any] = queue.Queue(maxsize=depth)
    done = object()
    stop = threading.Event()

    def produce() -> None:
        try:
            for item in items:
                if stop.is_set():
                    return
                q.put(item)
            q.put(done)
        except BaseException as e:  # handed to the consumer
            q.put(e)

    thread = threading.Thread(target=produce, name="interp-tokenize", daemon=True)
    thread.start()
    try:
        while (item := q.get()) is not done:
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        with contextlib.suppress(queue.Empty):  # make room for a producer blocked in put(); it then sees ``stop``
            while True:
                q.get_nowait()
        thread.join(timeout=60)  # a daemon thread in native tokenizer code at exit can abort the process


class ShardGroup:
    """The contexts of one shard, drawn from the corpus only as they are used, so the model starts on a shard's
    first batch while the rest of it is still being tokenised."""

    def __init__(self, contexts: Iterator[Context], want: int):
        self._source, self._want = contexts, want
        self._got: list[Context] = []

    def batches(self, size: int) -> Iterator[list[Context]]:
        """The contexts not drawn yet, ``size`` at a time."""
        while batch := [c for _, c in zip(range(min(size, self._want - len(self._got))), self._source)]:
            self._got += batch
            yield batch

    def contexts(self) -> list[Context]:
        """Every context of the group (drawing the rest)."""
        for _ in self.batches(max(1, self._want)):
            pass
        return self._got

    def __len__(self) -> int:
        return len(self.contexts())

    @property
    def want(self) -> int:
        """The contexts the group is meant to hold (fewer when the corpus runs out first)."""
        return self._want


def shard_groups(contexts: Iterator[Context], per_shard: int, n_contexts: int) -> Iterator[ShardGroup]:
    """The contexts of shard 0, 1, ...: ``per_shard`` each (the last may be shorter), ``n_contexts`` in all. A
    group is drawn lazily; the next one starts where it ends, once it is asked for."""
    taken = 0
    while taken < n_contexts:
        first = next(contexts, None)
        if first is None:
            return
        group = ShardGroup(itertools.chain([first], contexts), min(per_shard, n_contexts - taken))
        yield group
        taken += len(group)  # draws what the consumer left
