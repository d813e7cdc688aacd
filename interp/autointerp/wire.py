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
    """The legacy completions format (``tokens``, ``token_logprobs``, ``top_logprobs``), read leniently: a
    missing or odd entry (null, a list instead of a mapping, a value that is not a number) gives a token
    with no alternatives instead of an unreadable answer, so the scorers count it rather than retry it."""
    if not isinstance(lp, dict) or not isinstance(lp.get("tokens"), list) or not lp["tokens"]:
        return None
    tokens = lp["tokens"]
    values: list[Any] = lp["token_logprobs"] if isinstance(lp.get("token_logprobs"), list) else []
    tops: list[Any] = lp["top_logprobs"] if isinstance(lp.get("top_logprobs"), list) else []
    n = len(tokens)
    values = [v if type(v) is float else _number(v) for v in values[:n]] + [None] * (n - len(values))
    tops = [_alternatives(t) for t in tops[:n]] + [{}] * (n - len(tops))
    return [TokenLogprob(tok if type(tok) is str else str(tok), 0.0 if v is None else v, t)
            for tok, v, t in zip(tokens, values, tops)]


def _alternatives(top: Any) -> dict[str, float]:
    """token -> logprob from a mapping (OpenAI, vLLM) or a list of {token, logprob} (llama.cpp); odd entries dropped."""
    if isinstance(top, dict):
        try:  # the common case, fast (an echoed prompt has hundreds of these)
            return {k: float(v) for k, v in top.items()}
        except (TypeError, ValueError):  # a null or text value: the careful path below drops it
            pass
    pairs = top.items() if isinstance(top, dict) else (
        [(a.get("token"), a.get("logprob")) for a in top if isinstance(a, dict)] if isinstance(top, list) else [])
    out = {}
    for tok, value in pairs:
        v = _number(value)
        if isinstance(tok, str) and v is not None:
            out[tok] = v
    return out


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if value == value else None  # NaN is no log-probability


def messages_as_prompt(messages: Sequence[dict[str, str]]) -> str:
    """Chat messages as one plain-text prompt for a /completions endpoint (base models)."""
    names = {"system": "Instructions", "user": "User", "assistant": "Assistant"}
    parts = [f"{names.get(m['role'], m['role'])}: {m['content'].strip()}" for m in messages]
    return "\n\n".join(parts) + "\n\nAssistant:"
