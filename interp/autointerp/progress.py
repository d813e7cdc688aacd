"""Progress of a run: a tqdm bar in features/s with a running token count on a terminal, readable log
lines every few seconds otherwise (CI logs, ``nohup``, pipes)."""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable

from tqdm.auto import tqdm

log = logging.getLogger("interp.autointerp")


class Progress:
    """Counts finished features; ``tokens`` is read at each update for the postfix / log line."""

    def __init__(self, total: int, desc: str, tokens: Callable[[], int], enabled: bool = True,
                 every: float = 10.0):
        self.total, self.desc, self.tokens, self.every = total, desc, tokens, every
        self.done = 0
        self.start = self.last = time.perf_counter()
        tty = enabled and sys.stderr.isatty()
        self.bar = tqdm(total=total, desc=desc, unit="feat", disable=not tty, smoothing=0.1) if tty else None
        self.log = enabled and not tty

    def update(self, n: int = 1) -> None:
        self.done += n
        if self.bar is not None:
            self.bar.update(n)
            self.bar.set_postfix_str(f"{self.tokens():,} tok", refresh=False)
        now = time.perf_counter()
        if self.log and (now - self.last >= self.every or self.done == self.total):
            self.last = now
            log.info("%s: %d/%d features (%.2f feat/s), %s tokens", self.desc, self.done, self.total,
                     self.done / max(now - self.start, 1e-9), f"{self.tokens():,}")

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
