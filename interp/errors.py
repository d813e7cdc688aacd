"""The one exception type interp raises for problems a user can fix.

Every message says what was wrong and what to do about it. Internal bugs still raise the ordinary
Python exceptions; an ``InterpError`` always means "your input, fix it like this".
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class InterpError(Exception):
    """A problem with the user's input, configuration or files, with a message that says what to do."""


def close_matches(name: str, candidates: Iterable[str], n: int = 5) -> list[str]:
    """The candidates closest to ``name``, best first (for "did you mean" messages)."""
    pool = list(candidates)
    found = difflib.get_close_matches(name, pool, n=n, cutoff=0.5)
    if not found:
        tail = name.rsplit(".", 1)[-1]
        found = [c for c in pool if c.endswith(tail)][:n]
    return found
