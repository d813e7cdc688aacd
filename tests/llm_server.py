"""A real OpenAI-compatible HTTP server on loopback for tests and benchmarks, with scripted answers.

``LLMServer`` serves ``POST /v1/chat/completions`` and ``/v1/completions`` from a thread pool
(``ThreadingHTTPServer``) on 127.0.0.1 and an ephemeral port. Each request goes through ``script(body,
n)`` (n = the request's number, from 0), which returns a :class:`Reply`: a status, headers, a JSON body,
a delay, or ``drop`` to close the connection without answering. The default script, :func:`answer`, reads
interp's prompts and answers them plausibly (an explanation naming the most often marked token; 0/1 lists
that say 1 where a quoted token of the description occurs; simulated activations), with top logprobs.
A /completions request with ``echo`` and ``logprobs`` (all-at-once simulation) is answered as vLLM does:
the prompt's tokens (a toy tokenizer, :func:`toy_tokens`) and one generated token, each with its top
logprobs, in the legacy format (``tokens``, ``token_logprobs``, ``top_logprobs``, ``text_offset``).

The server records every request (path, body, headers) and counts requests in flight, so tests can check
the client's concurrency limit at the server. It only ever listens on 127.0.0.1.
"""

from __future__ import annotations

import json
import math
import re
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

QUOTED = re.compile(r'"((?:[^"\\]|\\.)*)"')


@dataclass
class Reply:
    status: int = 200
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0
    drop: bool = False


def _tokens_of(answer: str) -> list[str]:
    return re.findall(r"\d+|\s*[^\d\s]+|\s+", answer)


def chat_body(text: str, top: int = 0, hi: int = 1, p: float = 0.8) -> dict[str, Any]:
    """An OpenAI chat completion answering ``text``; with ``top``, logprobs on every token (a number gets
    probability ``p``, the rest spread over the other values 0..``hi``)."""
    body: dict[str, Any] = {"id": "x", "object": "chat.completion", "model": "fixture",
                            "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                                         "finish_reason": "stop"}],
                            "usage": {"prompt_tokens": 0, "completion_tokens": max(1, len(text) // 4)}}
    # (the server fills prompt_tokens from the request: ~4 characters a token, OpenAI's rule of thumb)
    if top:
        content = []
        for tok in _tokens_of(text):
            alts = [{"token": tok, "logprob": 0.0}]
            if tok.strip().isdigit():
                v = int(tok.strip())
                alts = [{"token": str(v), "logprob": math.log(p)}]
                others = [d for d in range(hi + 1) if d != v][: top - 1]
                for d in others:
                    alts.append({"token": str(d), "logprob": math.log((1 - p) / len(others))})
            content.append({"token": tok, "logprob": alts[0]["logprob"], "top_logprobs": alts[:top]})
        body["choices"][0]["logprobs"] = {"content": content}
    return body


TOY_TOKEN = re.compile(r"\t|\n| ?[A-Za-z]{1,4}|[A-Za-z]{1,4}|\d| +|.", re.S)


def toy_tokens(text: str, merge_tab: bool = False) -> list[str]:
    """A toy tokenizer that splits words into pieces of up to 4 letters (" ImportError" -> " Impo", "rtEr",
    "ror"), a space before a word in its first piece; with ``merge_tab``, a tab is glued to the
    character after it (as a BPE vocabulary with "\t?" would)."""
    toks = TOY_TOKEN.findall(text)
    assert "".join(toks) == text
    if merge_tab:
        out: list[str] = []
        for t in toks:
            if out and out[-1] == "\t":
                out[-1] += t
            else:
                out.append(t)
        toks = out
    return toks


def echo_body(prompt: str, slot: Callable[[str], dict[str, float] | None], top: int = 15,
              merge_tab: bool = False, generated: str = "\n") -> dict[str, Any]:
    """A vLLM-style answer to /completions with echo and ``logprobs`` = ``top``: every prompt token and
    ``generated`` with their top logprobs. After a tab (a slot), the top logprobs are ``slot(line)``, where
    ``line`` is the text between the line's start and the tab (None: a null entry); elsewhere the token
    itself and one other. The first token has no logprobs (null), as in vLLM."""
    toks = toy_tokens(prompt, merge_tab) + [generated]
    offsets = [0]
    for t in toks[:-1]:
        offsets.append(offsets[-1] + len(t))
    tops: list[dict[str, float] | None] = [None]
    values: list[float | None] = [None]
    for k in range(1, len(toks)):
        if toks[k - 1].endswith("\t"):
            line = prompt[: offsets[k] - 1].rsplit("\n", 1)[-1]
            alts = slot(line)
        else:
            alts = {toks[k]: -0.1, "the": -2.5}
        if alts is not None:
            alts = dict(sorted(alts.items(), key=lambda kv: -kv[1])[:top])
        tops.append(alts)
        values.append((alts or {}).get(toks[k], -5.0))
    return {"id": "x", "object": "text_completion", "model": "fixture",
            "choices": [{"index": 0, "text": prompt + generated, "finish_reason": "length",
                         "logprobs": {"tokens": toks, "token_logprobs": values, "top_logprobs": tops,
                                      "text_offset": offsets}}],
            "usage": {"prompt_tokens": len(toks) - 1, "completion_tokens": 1}}


def _simulated_slot(words: list[str]) -> Callable[[str], dict[str, float]]:
    """Slot logprobs that say 10 (p 0.7) on a line whose token holds a quoted word, else 0 (p 0.9)."""
    def slot(line: str) -> dict[str, float]:
        hit = bool(line.strip()) and _matches(line, words)
        probs = {"10": 0.7, "9": 0.15, "?": 0.1, "0": 0.05} if hit else {"0": 0.9, "1": 0.04, "?": 0.06}
        return {k: math.log(v) for k, v in probs.items()}

    return slot


def _quoted(description: str) -> list[str]:
    out = []
    for m in QUOTED.finditer(description):
        try:
            s = json.loads(f'"{m.group(1)}"').strip().casefold()
        except json.JSONDecodeError:
            continue
        if s:
            out.append(s)
    return out


def _matches(text: str, words: list[str]) -> bool:
    low = text.casefold()
    return any(w in low for w in words)


def answer(body: dict[str, Any], n: int) -> Reply:
    """Plausible answers to interp's prompts (see the module docstring)."""
    if body.get("echo") and body.get("logprobs"):  # all-at-once simulation: the last Description: line
        description = re.findall(r"^Description: (.*)$", body["prompt"], re.M)[-1]
        return Reply(body=echo_body(body["prompt"], _simulated_slot(_quoted(description)), int(body["logprobs"])))
    msgs = body.get("messages") or [{"role": "user", "content": body.get("prompt", "")}]
    system = msgs[0]["content"] if msgs[0]["role"] == "system" else ""
    last = msgs[-1]["content"]
    top = int(body.get("top_logprobs") or 0) if body.get("logprobs") else 0
    if "[EXPLANATION]" in system:
        marked = Counter(m.strip() for m in re.findall(r"<<(.*?)>>", last) if m.strip())
        word = marked.most_common(1)[0][0] if marked else "nothing"
        if "clean" in system:  # intervention: what the steered lines have that the clean ones lack
            steered = " ".join(re.findall(r"^Steered: (.*)$", last, re.M)).split()
            clean = set(" ".join(re.findall(r"^Clean: (.*)$", last, re.M)).split())
            new = [w for w in steered if w not in clean] or ["nothing"]
            word = Counter(new).most_common(1)[0][0]
        return Reply(body=chat_body(f"The pattern is clear.\n[EXPLANATION]: The token {json.dumps(word)}."))
    description = last.split("\n", 1)[0]
    words = _quoted(description)
    if "integers from 0 to 10" in system:
        toks = [json.loads(t) for t in re.findall(r"^\d+ (\".*\")$", last, re.M)]
        vals = [10 if t.strip() and _matches(t, words) else 0 for t in toks]
        return Reply(body=chat_body(json.dumps(vals), top, hi=10))
    texts = re.findall(r"^(?:Text|Continuation) \d+: (.*)$", last, re.M)
    if "correctly marked" in system:
        vals = [int(bool(re.findall(r"<<(.*?)>>", t)) and all(_matches(m, words) for m in re.findall(r"<<(.*?)>>", t)))
                for t in texts]
    else:
        vals = [int(_matches(t, words)) for t in texts]
    return Reply(body=chat_body(json.dumps(vals), top))


class LLMServer:
    """The server; use as a context manager. ``url`` ends in ``/v1``."""

    def __init__(self, script: Callable[[dict[str, Any], int], Reply] = answer, latency: float = 0.0):
        self.script, self.latency = script, latency
        self.requests: list[dict[str, Any]] = []
        self.in_flight = self.max_in_flight = 0
        self._lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            # headers and body go out in two writes: without TCP_NODELAY, Nagle's algorithm and the client's
            # delayed ACK would add ~40 ms to every answer on a kept-alive connection
            disable_nagle_algorithm = True

            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:  # noqa: N802
                length = int(self.headers.get("content-length") or 0)
                body = json.loads(self.rfile.read(length) or b"{}")
                with server._lock:
                    n = len(server.requests)
                    server.requests.append({"path": self.path, "body": body, "headers": dict(self.headers)})
                    server.in_flight += 1
                    server.max_in_flight = max(server.max_in_flight, server.in_flight)
                try:
                    reply = server.script(body, n)
                    if isinstance(reply.body, dict) and isinstance(reply.body.get("usage"), dict):
                        prompt = json.dumps(body.get("messages") or body.get("prompt") or "")
                        reply.body["usage"].setdefault("prompt_tokens", 0)
                        reply.body["usage"]["prompt_tokens"] = reply.body["usage"]["prompt_tokens"] or len(prompt) // 4
                    time.sleep(server.latency + reply.delay)
                    if reply.drop:
                        self.close_connection = True
                        self.connection.shutdown(2)
                        return
                    data = reply.body if isinstance(reply.body, bytes) else (
                        reply.body.encode() if isinstance(reply.body, str) else json.dumps(reply.body).encode())
                    self.send_response(reply.status)
                    self.send_header("content-type", "application/json")
                    self.send_header("content-length", str(len(data)))
                    for k, v in reply.headers.items():
                        self.send_header(k, v)
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass
                finally:
                    with server._lock:
                        server.in_flight -= 1

        class Server(ThreadingHTTPServer):
            def handle_error(self, request: Any, client_address: Any) -> None:
                pass  # a client that went away (a killed process, a timed-out try) is expected here

        self.httpd = Server(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"

    def __enter__(self) -> LLMServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def main() -> None:
    """``python tests/llm_server.py [--latency S]``: serve until killed, printing the base URL first."""
    import argparse
    import sys

    p = argparse.ArgumentParser(description=main.__doc__)
    p.add_argument("--latency", type=float, default=0.0, help="seconds added to every answer")
    args = p.parse_args()
    with LLMServer(latency=args.latency) as server:
        print(server.url, flush=True)
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            sys.exit(0)


if __name__ == "__main__":
    main()
