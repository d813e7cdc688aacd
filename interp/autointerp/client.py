"""An asynchronous client for OpenAI-compatible servers (vLLM, llama.cpp, Ollama, OpenRouter, OpenAI).

Built on ``httpx`` (HTTP/1.1 connection pool, timeouts) and ``tenacity`` (retry policy) rather than the
``openai`` package: interp needs the raw JSON of every answer (servers differ in the logprob fields they
fill, and the cache stores exactly what came back), one retry policy that it controls (``Retry-After``
honoured, full-jitter exponential backoff, the same rules for chat and completions), and logs it can
vouch for (the key is only ever in the ``Authorization`` header of the connection pool).

Constraints this module was designed under:
- the API key is never logged, never written to a file and never put in an error message;
- at most ``concurrency`` requests are in flight at once (an ``asyncio.Semaphore`` held per attempt, until
  its answer is in the cache, not during backoff sleeps), so one slow feature never blocks the others, and a
  killed run leaves at most ``concurrency`` answered-but-unsaved requests to ask again;
- 429 (honouring ``Retry-After``), 5xx, timeouts, dropped connections and unreadable bodies are retried
  with full-jitter exponential backoff; other 4xx fail at once with the server's message;
- the response cache is keyed by the request body (model, messages, sampling parameters) and the
  endpoint; it is JSON on disk, written atomically, so a restarted run pays for nothing twice.
"""

from __future__ import annotations

import asyncio
import email.utils
import json
import logging
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import httpx
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception, stop_after_attempt, wait_random_exponential

from interp.autointerp.cache import ResponseCache
from interp.autointerp.wire import Completion, Unreadable, messages_as_prompt, parse_answer
from interp.errors import InterpError

log = logging.getLogger(__name__)

KEY_ENVS = ("INTERP_LLM_API_KEY",)
POOL_SIZE = 4
"""Connections per httpx pool (the client holds ceil(concurrency / POOL_SIZE) pools)."""
MAX_RETRY_AFTER = 300.0


@dataclass(frozen=True)
class LLMConfig:
    """Where the LLM is and how to talk to it. The API key is not a field: it is never stored."""

    base_url: str | None = None
    """Server URL up to ``/v1`` (e.g. http://localhost:8000/v1); default $INTERP_LLM_BASE_URL, then
    $OPENAI_BASE_URL."""
    llm: str | None = None
    """Model name the server knows; default $INTERP_LLM_MODEL."""
    api_key_env: str = "OPENAI_API_KEY"
    """Environment variable holding the API key ($INTERP_LLM_API_KEY is read first). Local servers need none."""
    api: Literal["chat", "completions"] = "chat"
    """Endpoint: /chat/completions (messages) or /completions (one prompt, messages joined as text)."""
    concurrency: int = 32
    """Most requests in flight at once."""
    timeout: float = 120.0
    """Seconds one request may take (connect, send, wait and read)."""
    max_retries: int = 6
    """Retries of one request on 429, 5xx, timeouts and dropped connections."""
    backoff: float = 0.5
    """Base of the full-jitter exponential backoff, in seconds (wait up to base * 2^attempt)."""
    backoff_max: float = 30.0
    """Longest backoff between two tries, in seconds (a Retry-After header may ask for longer)."""
    logprobs: bool = True
    """Ask for top log-probabilities (AUROC, simulation); dropped for the run if the server refuses them."""
    cache: bool = True
    """Keep every answer in an on-disk cache keyed by the request, so a repeated request costs nothing."""
    cache_dir: str | None = None
    """Where the cache lives; default: explanations/llm-cache in the feature store."""
    price_prompt: float = 0.0
    """US dollars per million prompt tokens (cost accounting only)."""
    price_completion: float = 0.0
    """US dollars per million completion tokens (cost accounting only)."""

    def __post_init__(self) -> None:
        if self.concurrency < 1:
            raise InterpError(f"LLMConfig.concurrency must be >= 1, got {self.concurrency}.")
        if self.timeout <= 0 or self.max_retries < 0 or self.backoff < 0:
            raise InterpError("LLMConfig needs timeout > 0, max_retries >= 0 and backoff >= 0.")

    def resolved(self) -> LLMConfig:
        """This config with the base URL and model filled in from the environment."""
        from dataclasses import replace

        base = self.base_url or os.environ.get("INTERP_LLM_BASE_URL") or os.environ.get("OPENAI_BASE_URL")
        model = self.llm or os.environ.get("INTERP_LLM_MODEL")
        if not base or not model:
            raise InterpError(
                "No LLM configured: pass --base-url (e.g. http://localhost:8000/v1 for vLLM, "
                "http://localhost:11434/v1 for Ollama) and --llm MODEL, or set INTERP_LLM_BASE_URL and "
                "INTERP_LLM_MODEL. Without an LLM, use --explainer ngram (the offline default)."
            )
        return replace(self, base_url=base.rstrip("/"), llm=model)

    def configured(self) -> bool:
        """Whether a base URL and model are given (here or in the environment)."""
        try:
            self.resolved()
        except InterpError:
            return False
        return True

    def api_key(self) -> str | None:
        """The key from the environment (never stored on the config)."""
        for name in (*KEY_ENVS, self.api_key_env):
            if os.environ.get(name):
                return os.environ[name]
        return None


@dataclass
class Usage:
    """Token, request and failure counts of one run, in total and per purpose (explain, detection ...)."""

    requests: int = 0
    cache_hits: int = 0
    retries: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    by_purpose: dict[str, dict[str, int]] = field(default_factory=dict)

    def add(self, purpose: str, c: Completion) -> None:
        key = "cache_hits" if c.cached else "requests"
        p = self.by_purpose.setdefault(purpose, {"requests": 0, "cache_hits": 0, "prompt_tokens": 0,
                                                 "completion_tokens": 0})
        p[key] += 1
        p["prompt_tokens"] += c.prompt_tokens
        p["completion_tokens"] += c.completion_tokens
        setattr(self, key, getattr(self, key) + 1)
        self.prompt_tokens += c.prompt_tokens
        self.completion_tokens += c.completion_tokens

    @property
    def tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    def to_json(self, cfg: LLMConfig | None = None) -> dict[str, Any]:
        out = asdict(self)
        if cfg is not None:
            out["cost_usd"] = round((self.prompt_tokens * cfg.price_prompt
                                     + self.completion_tokens * cfg.price_completion) / 1e6, 6)
        return out


class LLMError(InterpError):
    """A request that failed for good: ``fatal`` when retrying cannot help (4xx: a wrong URL, model or
    key), else it failed on every try (the run counts it and carries on)."""

    def __init__(self, message: str, fatal: bool = False, status: int | None = None):
        super().__init__(message)
        self.fatal, self.status = fatal, status


class _Retryable(Exception):
    def __init__(self, message: str, retry_after: float | None = None):
        super().__init__(message)
        self.retry_after = retry_after


def _retry_after(value: str | None) -> float | None:
    """Seconds to wait from a Retry-After header (delta-seconds or an HTTP date); None if absent or bad."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


class _Wait:
    """Full-jitter exponential backoff, unless the server said how long to wait (Retry-After)."""

    def __init__(self, base: float, cap: float):
        self.jitter = wait_random_exponential(multiplier=base, max=cap)

    def __call__(self, state: RetryCallState) -> float:
        exc = state.outcome.exception() if state.outcome else None
        if isinstance(exc, _Retryable) and exc.retry_after is not None:
            return min(exc.retry_after, MAX_RETRY_AFTER)
        return float(self.jitter(state))


def _retryable(exc: BaseException) -> bool:
    return isinstance(exc, (_Retryable, httpx.TimeoutException, httpx.TransportError))


class LLMClient:
    """Chat and completion requests with a concurrency limit, retries, a cache and usage accounting.

    Use as ``async with LLMClient(cfg) as client: await client.chat(messages, purpose="explain")``.
    """

    def __init__(self, cfg: LLMConfig, *, api_key: str | None = None, cache_dir: str | Path | None = None):
        self.cfg = cfg.resolved()
        key = api_key if api_key is not None else self.cfg.api_key()
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        # Several small connection pools rather than one large one: httpcore scans every connection of a
        # pool on each request event, so one pool of 32 connections costs ~8x the CPU of 8 pools of 4.
        n_pools = -(-self.cfg.concurrency // POOL_SIZE)
        tls = httpx.create_ssl_context()  # one certificate store for every pool (loading it takes ~0.1 s)
        self._pools = [httpx.AsyncClient(
            base_url=str(self.cfg.base_url), headers=headers, timeout=httpx.Timeout(self.cfg.timeout), verify=tls,
            limits=httpx.Limits(max_connections=POOL_SIZE, max_keepalive_connections=POOL_SIZE),
        ) for _ in range(n_pools)]
        self._busy = [0] * n_pools
        directory = self.cfg.cache_dir or cache_dir
        self.cache = ResponseCache(directory) if self.cfg.cache and directory else None
        self.usage = Usage()
        self.logprobs_offered: bool = self.cfg.logprobs
        self._sem = asyncio.Semaphore(self.cfg.concurrency)

    async def __aenter__(self) -> LLMClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        for pool in self._pools:
            await pool.aclose()

    async def chat(self, messages: Sequence[dict[str, str]], *, purpose: str, max_tokens: int = 512,
                   temperature: float = 0.0, top_logprobs: int | None = None, fresh: bool = False) -> Completion:
        """One chat completion (or, with ``api='completions'``, the messages joined as one prompt).

        ``top_logprobs``: how many alternatives to ask for per generated token (None: no logprobs).
        ``fresh``: ignore and replace a cached answer (used to re-ask after a malformed one).
        """
        if self.cfg.api == "completions":
            return await self.complete(messages_as_prompt(messages), purpose=purpose, max_tokens=max_tokens,
                                       temperature=temperature, top_logprobs=top_logprobs, fresh=fresh)
        body: dict[str, Any] = {"model": self.cfg.llm, "messages": list(messages), "max_tokens": max_tokens,
                                "temperature": temperature}
        if top_logprobs and self.logprobs_offered:
            body.update(logprobs=True, top_logprobs=top_logprobs)
        return await self._request("/chat/completions", body, purpose, fresh)

    async def complete(self, prompt: str, *, purpose: str, max_tokens: int = 512, temperature: float = 0.0,
                       top_logprobs: int | None = None, fresh: bool = False) -> Completion:
        """One text completion of ``prompt``."""
        body: dict[str, Any] = {"model": self.cfg.llm, "prompt": prompt, "max_tokens": max_tokens,
                                "temperature": temperature}
        if top_logprobs and self.logprobs_offered:
            body["logprobs"] = top_logprobs
        return await self._request("/completions", body, purpose, fresh)

    async def echo(self, prompt: str, *, purpose: str, top_logprobs: int, fresh: bool = False) -> Completion:
        """The log-probabilities of ``prompt``'s own tokens: /completions with ``echo`` and ``logprobs``.

        The answer's ``logprobs`` hold every prompt token (then the one generated token, which is ignored:
        ``max_tokens`` is 1 because some vLLM versions reject 0), each with its top ``top_logprobs``
        alternatives, i.e. what the model expected at that position. A server that refuses echo or
        logprobs raises a fatal :class:`LLMError` (they are not dropped, unlike :meth:`chat`).
        """
        body: dict[str, Any] = {"model": self.cfg.llm, "prompt": prompt, "max_tokens": 1, "temperature": 0.0,
                                "echo": True, "logprobs": top_logprobs}
        return await self._request("/completions", body, purpose, fresh, drop_refused_logprobs=False)

    async def _request(self, path: str, body: dict[str, Any], purpose: str, fresh: bool,
                       drop_refused_logprobs: bool = True) -> Completion:
        key = ResponseCache.key(path, body) if self.cache else ""
        if self.cache and not fresh:
            hit = await asyncio.to_thread(self.cache.get, key)
            if hit is not None:
                try:
                    c = parse_answer(path, hit, cached=True)
                    self.usage.add(purpose, c)
                    return c
                except Unreadable:
                    pass  # an unreadable cache entry is simply asked again
        def keep(data: dict[str, Any]) -> Any:  # inside the request's concurrency slot: see _send
            return asyncio.to_thread(self.cache.put, key, path, body, data) if self.cache else None

        try:
            data, c = await self._send(path, body, keep)
        except _LogprobsRefused as e:
            if not drop_refused_logprobs:
                raise LLMError(f"{path} answered HTTP {e.status}: {e}", fatal=True, status=e.status) from None
            log.warning("the server refused logprobs; continuing without them (no AUROC from probabilities)")
            self.logprobs_offered = False
            body = {k: v for k, v in body.items() if k not in ("logprobs", "top_logprobs")}
            return await self._request(path, body, purpose, fresh, drop_refused_logprobs)
        self.usage.add(purpose, c)
        return c

    async def _send(self, path: str, body: dict[str, Any],
                    keep: Callable[[dict[str, Any]], Any] | None = None) -> tuple[dict[str, Any], Completion]:
        """Send ``body`` with retries; ``keep(answer)`` (an awaitable or None: the cache write) runs before the
        concurrency slot is released, so a process killed at any moment has at most ``concurrency`` requests
        that the server saw and the cache does not hold (a resumed run asks only those again)."""
        retrying = AsyncRetrying(
            stop=stop_after_attempt(self.cfg.max_retries + 1),
            wait=_Wait(self.cfg.backoff, self.cfg.backoff_max),
            retry=retry_if_exception(_retryable),
            reraise=True,
            before_sleep=self._before_sleep,
        )
        try:
            async for attempt in retrying:
                with attempt:
                    async with self._sem:
                        data, c = await self._attempt(path, body)
                        saving = keep(data) if keep is not None else None
                        if saving is not None:
                            await saving
                        return data, c
        except (_Retryable, httpx.HTTPError) as e:
            raise LLMError(f"{path} failed after {self.cfg.max_retries + 1} tries: {_describe(e)}") from None
        raise AssertionError("unreachable")

    def _before_sleep(self, state: RetryCallState) -> None:
        self.usage.retries += 1
        exc = state.outcome.exception() if state.outcome else None
        wait = state.next_action.sleep if state.next_action else 0.0
        log.info("retrying in %.2fs after %s (try %d)", wait, _describe(exc), state.attempt_number)

    async def _attempt(self, path: str, body: dict[str, Any]) -> tuple[dict[str, Any], Completion]:
        """One try: the answer's JSON and what it holds; raises _Retryable for what a retry may fix."""
        k = min(range(len(self._pools)), key=self._busy.__getitem__)  # the semaphore keeps each <= POOL_SIZE
        self._busy[k] += 1
        try:
            r = await self._pools[k].post(path, json=body)
        finally:
            self._busy[k] -= 1
        if r.status_code == 429 or r.status_code >= 500:
            raise _Retryable(f"HTTP {r.status_code}", _retry_after(r.headers.get("retry-after")))
        if r.status_code >= 400:
            message = _error_message(r)
            if r.status_code in (400, 422) and ("logprobs" in body) and "logprob" in message.lower():
                raise _LogprobsRefused(message, r.status_code)
            hint = " Check the key in the environment variable named by --api-key-env." if r.status_code in (
                401, 403) else ""
            raise LLMError(f"{path} answered HTTP {r.status_code}: {message}.{hint}", fatal=True,
                           status=r.status_code)
        try:
            data = r.json()
        except json.JSONDecodeError:
            raise _Retryable("a body that is not JSON") from None
        if not isinstance(data, dict):
            raise _Retryable("a body that is not a JSON object")
        try:
            return data, parse_answer(path, data, cached=False)
        except Unreadable as e:
            raise _Retryable(str(e)) from None


class _LogprobsRefused(Exception):
    def __init__(self, message: str, status: int):
        super().__init__(message)
        self.status = status


def _describe(exc: BaseException | None) -> str:
    if exc is None:
        return "?"
    if isinstance(exc, httpx.TimeoutException):
        return f"timeout ({type(exc).__name__})"
    if isinstance(exc, httpx.TransportError):
        return f"connection error ({type(exc).__name__})"
    return str(exc) or type(exc).__name__


def _error_message(r: httpx.Response) -> str:
    try:
        data = r.json()
        err = data.get("error")
        # OpenAI: {"error": {"message": ...}}; vLLM before 0.10: {"object": "error", "message": ...}
        text = err.get("message") if isinstance(err, dict) else err or data.get("message")
    except (json.JSONDecodeError, AttributeError):
        text = r.text
    return str(text or r.text or "")[:300]
