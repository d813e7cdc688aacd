"""Asking an LLM for an answer of a given shape: re-ask on a malformed answer, count what went wrong."""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Sequence
from typing import TypeVar

from interp.autointerp.client import LLMClient, LLMError
from interp.autointerp.prompts import Malformed
from interp.autointerp.wire import Completion

log = logging.getLogger(__name__)
T = TypeVar("T")
RETRY_TEMPERATURE = 0.4
"""Temperature added per re-ask: at temperature 0 a server gives the same malformed answer again."""


async def ask(client: LLMClient, messages: Sequence[dict[str, str]], parse: Callable[[Completion], T], *,
              purpose: str, failures: Counter[str], retries: int, max_tokens: int,
              top_logprobs: int | None = None) -> T | None:
    """``parse`` of the answer to ``messages``; None when every try was malformed or failed.

    A malformed answer (``parse`` raises :class:`Malformed`) is counted under its kind and re-asked up
    to ``retries`` times, bypassing the cache and at a slightly higher temperature. A request that fails
    for good after the client's own retries is counted as ``request_failed``; a fatal one (a wrong URL,
    model or key) is raised, since every other request would fail the same way.
    """
    for attempt in range(retries + 1):
        try:
            c = await client.chat(messages, purpose=purpose, max_tokens=max_tokens,
                                  temperature=RETRY_TEMPERATURE * attempt, top_logprobs=top_logprobs,
                                  fresh=attempt > 0)
        except LLMError as e:
            if e.fatal:
                raise
            failures["request_failed"] += 1
            log.warning("%s request failed for good: %s", purpose, e)
            return None
        try:
            return parse(c)
        except Malformed as e:
            failures[e.kind] += 1
            log.debug("malformed %s answer (%s), try %d", purpose, e, attempt + 1)
    return None
