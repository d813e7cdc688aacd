"""The OpenAI wire format: what a chat or completion answer holds, read into plain named tuples."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple


class Unreadable(ValueError):
    """An answer that is not in the OpenAI format (the client retries it like a server error)."""


class TokenLogprob(NamedTuple):
    """One generated token with its log-probability and the top alternatives at its position."""

    token: str
    logprob: float
    top: dict[str, float]
    """Alternative token -> log-probability (includes the token itself when the server lists it)."""


class Completion(NamedTuple):
    """What came back for one request."""

    text: str
    logprobs: list[TokenLogprob] | None
    """Per generated token, when asked for and offered; else None."""
    prompt_tokens: int
    completion_tokens: int
    cached: bool
    """True when the answer came from the on-disk cache (no request was sent)."""


def parse_answer(path: str, data: dict[str, Any], cached: bool) -> Completion:
    try:
        choice = data["choices"][0]
        usage = data.get("usage") or {}
        if path == "/chat/completions":
            text = (choice.get("message") or {}).get("content") or ""
            lp = _chat_logprobs(choice.get("logprobs"))
        else:
            text = choice.get("text") or ""
            lp = _completion_logprobs(choice.get("logprobs"))
        return Completion(str(text), lp, int(usage.get("prompt_tokens") or 0),
                          int(usage.get("completion_tokens") or 0), cached)
    except (KeyError, IndexError, TypeError, AttributeError, ValueError) as e:
        raise Unreadable(f"an answer that is not in the OpenAI format ({e})") from None


def _chat_logprobs(lp: Any) -> list[TokenLogprob] | None:
    if not lp or not lp.get("content"):
        return None
    return [TokenLogprob(t["token"], float(t["logprob"]),
                         {a["token"]: float(a["logprob"]) for a in t.get("top_logprobs") or []})
            for t in lp["content"]]


def _completion_logprobs(lp: Any) -> list[TokenLogprob] | None:
    if not lp or not lp.get("tokens"):
        return None
    tops = lp.get("top_logprobs") or [None] * len(lp["tokens"])
    return [TokenLogprob(tok, float(v if v is not None else 0.0), {k: float(x) for k, x in (top or {}).items()})
            for tok, v, top in zip(lp["tokens"], lp.get("token_logprobs") or [], tops)]


def messages_as_prompt(messages: Sequence[dict[str, str]]) -> str:
    """Chat messages as one plain-text prompt for a /completions endpoint (base models)."""
    names = {"system": "Instructions", "user": "User", "assistant": "Assistant"}
    parts = [f"{names.get(m['role'], m['role'])}: {m['content'].strip()}" for m in messages]
    return "\n\n".join(parts) + "\n\nAssistant:"
