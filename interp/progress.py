"""Progress of long jobs: a tqdm bar with a rate on a terminal, periodic log lines everywhere else.

A tqdm bar redraws itself with carriage returns. In a file or a CI log those redraws pile up into one line of
thousands of updates, so when standard error is not a terminal (and not a notebook) a job reports through
``logging`` instead: one line every ``INTERP_PROGRESS_SECONDS`` seconds (default 30), plus one at the end::

    12:03:41 INFO interp.progress: cache: 45% 471k/1.05M tok [00:12<00:15, 38.2k tok/s]

Every long job (cache, train, analyze, dashboard, codebook finetune, the demo model's recipe) makes its bar
here, so all of them behave the same. :func:`hide_library_bars` silences the bars that transformers,
huggingface_hub and datasets draw themselves (``Loading weights`` ...).
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Any

from tqdm.auto import tqdm

log = logging.getLogger(__name__)

INTERVAL_ENV = "INTERP_PROGRESS_SECONDS"
LINE_FORMAT = "{desc}: {percentage:3.0f}% {n_fmt}/{total_fmt} {unit} [{elapsed}<{remaining}, {rate_fmt}{postfix}]"


def on_terminal() -> bool:
    """True when a redrawn bar reads well: standard error is a terminal, or we run in a notebook kernel."""
    isatty = getattr(sys.stderr, "isatty", None)
    return bool(isatty and isatty()) or "ipykernel" in sys.modules


def progress_bar(total: int | None, desc: str, unit: str = "tok", *, enabled: bool = True, initial: int = 0,
                 unit_scale: bool = True) -> Any:
    """A tqdm-compatible bar (``update``, ``set_postfix``, ``close``) for a job of ``total`` ``unit``s.

    On a terminal it is a tqdm bar; elsewhere a :class:`LogBar`; with ``enabled=False`` a disabled tqdm that
    shows nothing.
    """
    kwargs: dict[str, Any] = dict(total=total, desc=desc, unit=unit, initial=initial, unit_scale=unit_scale)
    if not enabled:
        return tqdm(disable=True, **kwargs)
    if on_terminal():
        return tqdm(dynamic_ncols=True, smoothing=0.1, **kwargs)
    return LogBar(**kwargs)


class _Discard:
    """A file that drops what is written (tqdm's own output, when the bar reports through logging)."""

    def write(self, text: str) -> int:
        return len(text)

    def flush(self) -> None:
        pass


class LogBar(tqdm):
    """A tqdm that logs one readable line at most every ``interval`` seconds (``INTERP_PROGRESS_SECONDS``,
    default 30) and one when it closes, instead of redrawing itself."""

    def __init__(self, *args: Any, interval: float | None = None, **kwargs: Any):
        interval = float(os.environ.get(INTERVAL_ENV, 30)) if interval is None else interval
        kwargs.update(file=_Discard(), mininterval=interval, maxinterval=max(interval, 10.0), miniters=1,
                      bar_format=LINE_FORMAT if kwargs.get("total") else "{desc}: {n_fmt} {unit} [{elapsed}, "
                      "{rate_fmt}{postfix}]", dynamic_ncols=False, ascii=True, smoothing=0.1)
        self._last_line = ""
        super().__init__(*args, **kwargs)

    def display(self, msg: str | None = None, pos: int | None = None) -> bool:
        line = str(self)
        if line and line != self._last_line and self.n > 0:
            log.info("%s", line)
            self._last_line = line
        return True


def hide_library_bars() -> None:
    """Silence the progress bars of transformers, huggingface_hub and datasets (``Loading weights``, downloads,
    ``Resolving data files``) for the rest of the process: environment variables for libraries not imported
    yet, their switches for those already imported."""
    os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"
    os.environ["HF_DATASETS_DISABLE_PROGRESS_BARS"] = "1"
    if "huggingface_hub" in sys.modules:
        from huggingface_hub.utils import disable_progress_bars

        disable_progress_bars()
    if "transformers" in sys.modules:
        from transformers.utils import logging as transformers_logging

        transformers_logging.disable_progress_bar()
    if "datasets" in sys.modules:
        import datasets

        datasets.disable_progress_bars()
