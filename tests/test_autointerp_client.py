"""The LLM client against a real OpenAI-compatible HTTP server on loopback (tests/llm_server.py)."""

from __future__ import annotations

import asyncio
import logging
import time
from email.utils import formatdate

import pytest
from llm_server import LLMServer, Reply, chat_body

from interp.autointerp.client import LLMClient, LLMConfig, LLMError

MSG = [{"role": "user", "content": "hello"}]
SECRET = "sk-test-7f3a9c1e-never-log-me"


def cfg(server: LLMServer, **kw) -> LLMConfig:
    base = dict(base_url=server.url, llm="fixture", backoff=0.01, backoff_max=0.05, timeout=5.0, cache=False)
    return LLMConfig(**{**base, **kw})


def run(coro):
    return asyncio.run(coro)


def ok(text: str = "[1, 0]") -> Reply:
    return Reply(body=chat_body(text))


async def _many(client: LLMClient, n: int) -> list:
    return await asyncio.gather(*(client.chat([{"role": "user", "content": f"q{k}"}], purpose="t")
                                  for k in range(n)))


def test_concurrency_limit_holds_at_the_server():
    with LLMServer(lambda body, n: ok(), latency=0.15) as server:
        async def go():
            async with LLMClient(cfg(server, concurrency=4)) as c:
                return await _many(c, 24)

        out = run(go())
    assert len(out) == 24 and server.max_in_flight == 4  # reached, never exceeded


def test_retry_after_on_429_is_honoured(tmp_path):
    def script(body, n):
        return Reply(429, {"error": {"message": "slow down"}}, {"Retry-After": "1"}) if n == 0 else ok("[1]")

    with LLMServer(script) as server:
        async def go():
            async with LLMClient(cfg(server)) as c:
                t = time.perf_counter()
                got = await c.chat(MSG, purpose="t")
                return got, time.perf_counter() - t, c.usage.retries

        got, elapsed, retries = run(go())
    assert got.text == "[1]" and retries == 1 and len(server.requests) == 2
    assert 0.9 <= elapsed < 3.0  # waited the server's second, not the 0.01 s backoff


def test_retry_after_as_http_date():
    def script(body, n):
        return Reply(429, {}, {"Retry-After": formatdate(time.time() + 2, usegmt=True)}) if n == 0 else ok()

    with LLMServer(script) as server:
        async def go():
            async with LLMClient(cfg(server)) as c:
                t = time.perf_counter()
                await c.chat(MSG, purpose="t")
                return time.perf_counter() - t

        elapsed = run(go())
    assert 0.5 <= elapsed < 4.0


@pytest.mark.parametrize("fault", ["500", "503", "timeout", "drop", "garbage"])
def test_transient_faults_are_retried(fault):
    def script(body, n):
        if n >= 2:
            return ok("[0]")
        return {"500": Reply(500, {"error": "boom"}), "503": Reply(503, "unavailable"),
                "timeout": Reply(delay=1.5, body=chat_body("[1]")), "drop": Reply(drop=True),
                "garbage": Reply(body="not json at all")}[fault]

    with LLMServer(script) as server:
        async def go():
            async with LLMClient(cfg(server, timeout=0.4)) as c:
                t = time.perf_counter()
                got = await c.chat(MSG, purpose="t")
                return got, c.usage.retries, time.perf_counter() - t

        got, retries, elapsed = run(go())
    assert got.text == "[0]" and retries == 2 and len(server.requests) == 3
    assert elapsed < 1.4  # a timed-out try was abandoned at 0.4 s, not waited out


def test_retries_run_out_and_client_errors_are_not_retried():
    with LLMServer(lambda b, n: Reply(500, {"error": "down"})) as server:
        async def go():
            async with LLMClient(cfg(server, max_retries=2)) as c:
                await c.chat(MSG, purpose="t")

        with pytest.raises(LLMError) as e:
            run(go())
    assert not e.value.fatal and len(server.requests) == 3
    with LLMServer(lambda b, n: Reply(404, {"error": {"message": "model 'fixture' not found"}})) as server:
        async def go2():
            async with LLMClient(cfg(server)) as c:
                await c.chat(MSG, purpose="t")

        with pytest.raises(LLMError, match="not found") as e:
            run(go2())
    assert e.value.fatal and len(server.requests) == 1


def test_cache_hits_cost_no_request(tmp_path):
    with LLMServer(lambda b, n: ok(f"[{n}]")) as server:
        async def go():
            async with LLMClient(cfg(server, cache=True), cache_dir=tmp_path / "cache") as c:
                a = await c.chat(MSG, purpose="t")
                b = await c.chat(MSG, purpose="t")
                other = await c.chat(MSG, purpose="t", max_tokens=7)
                return a, b, other, c.usage

        a, b, other, usage = run(go())

        async def again():
            async with LLMClient(cfg(server, cache=True), cache_dir=tmp_path / "cache") as c:
                return await c.chat(MSG, purpose="t"), c.usage

        c2, usage2 = run(again())
    assert a.text == b.text == c2.text == "[0]" and other.text == "[1]"  # another body is another key
    assert not a.cached and b.cached and c2.cached
    assert usage.requests == 2 and usage.cache_hits == 1 and usage2.requests == 0
    assert len(server.requests) == 2
    files = list((tmp_path / "cache").rglob("*.json"))
    assert len(files) == 2 and all(f.read_text().startswith("{") for f in files)


def test_key_is_sent_but_never_logged_or_written(tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("INTERP_LLM_API_KEY", SECRET)
    caplog.set_level(logging.DEBUG)
    for name in ("httpx", "httpcore", "interp"):
        logging.getLogger(name).setLevel(logging.DEBUG)

    def script(body, n):
        return [Reply(500, {"error": "x"}), ok("[1]"), Reply(401, {"error": {"message": "bad key"}})][min(n, 2)]

    with LLMServer(script) as server:
        async def go():
            async with LLMClient(cfg(server, cache=True), cache_dir=tmp_path / "cache") as c:
                await c.chat(MSG, purpose="t")
                with pytest.raises(LLMError) as e:
                    await c.chat([{"role": "user", "content": "other"}], purpose="t")
                return str(e.value)

        message = run(go())
    assert server.requests[0]["headers"].get("Authorization") == f"Bearer {SECRET}"
    assert "HTTP Request" in caplog.text or "retrying" in caplog.text  # the logs were captured at all
    assert SECRET not in caplog.text and SECRET not in message
    for f in tmp_path.rglob("*"):
        if f.is_file():
            assert SECRET not in f.read_text(errors="replace"), f


def test_refused_logprobs_are_dropped_for_the_run():
    def script(body, n):
        if body.get("logprobs"):
            return Reply(400, {"error": {"message": "logprobs are not supported by this model"}})
        return ok("[1, 0]")

    with LLMServer(script) as server:
        async def go():
            async with LLMClient(cfg(server)) as c:
                a = await c.chat(MSG, purpose="t", top_logprobs=5)
                b = await c.chat(MSG, purpose="t", top_logprobs=5)
                return a, b, c.logprobs_offered

        a, b, offered = run(go())
    assert a.text == b.text == "[1, 0]" and a.logprobs is None and not offered
    assert [bool(r["body"].get("logprobs")) for r in server.requests] == [True, False, False]


def test_logprobs_and_completions_endpoint():
    with LLMServer(lambda b, n: Reply(body={"choices": [{"text": " [1, 0]", "logprobs": {
            "tokens": [" [", "1", ",", " 0", "]"], "token_logprobs": [0, -0.1, 0, -0.2, 0],
            "top_logprobs": [{}, {"1": -0.1, "0": -2.4}, {}, {"0": -0.2, "1": -1.7}, {}]}}],
            "usage": {"prompt_tokens": 11, "completion_tokens": 5}})) as server:
        async def go():
            async with LLMClient(cfg(server, api="completions")) as c:
                return await c.chat(MSG, purpose="t", top_logprobs=5), c.usage

        got, usage = run(go())
    assert server.requests[0]["path"] == "/v1/completions"
    assert server.requests[0]["body"]["logprobs"] == 5 and "User: hello" in server.requests[0]["body"]["prompt"]
    assert got.text == " [1, 0]" and got.logprobs[1].top == {"1": -0.1, "0": -2.4}
    assert usage.prompt_tokens == 11 and usage.completion_tokens == 5


def test_missing_configuration_says_what_to_pass(monkeypatch):
    for name in ("INTERP_LLM_BASE_URL", "OPENAI_BASE_URL", "INTERP_LLM_MODEL"):
        monkeypatch.delenv(name, raising=False)
    assert not LLMConfig().configured()
    with pytest.raises(LLMError.__mro__[1], match="--base-url"):
        LLMConfig().resolved()
