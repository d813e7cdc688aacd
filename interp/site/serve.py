"""``interp serve``: the static dashboard plus a live, prompt-centric view on a local HTTP server.

Routes (everything else is a static file of the site directory):

- ``GET /data/meta.js``: the site's meta with ``served = true`` (pages then link the prompt view);
- ``POST /api/prompt`` with ``{"text": str}`` or ``GET /api/prompt?text=...``: runs the model and the
  dictionary on the prompt and answers JSON (see :func:`prompt_features`).

Constraints: stdlib ``ThreadingHTTPServer`` only; bound to 127.0.0.1 unless asked otherwise (it runs a
model on request and has no authentication); model calls are serialised by a lock; answers are JSON
with ``nosniff``, and pages put every string in the DOM as text.
"""

from __future__ import annotations

import json
import logging
import threading
from functools import partial
from http import HTTPStatus
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

import torch

from interp.dictionaries import Dictionary
from interp.errors import InterpError
from interp.model import Model

log = logging.getLogger(__name__)

MAX_PROMPT_CHARS = 8000


@torch.no_grad()
def prompt_features(
    model: Model,
    dictionary: Dictionary,
    hook: str,
    text: str,
    *,
    top_k: int = 8,
    n_summary: int = 24,
    explanations: dict[int, dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """Which features fire on each token of ``text``.

    Returns ``tokens`` (strings, BOS first), ``top`` (per token, up to ``top_k`` ``[feature, act]`` with
    act > 0, largest first; none on BOS, as in analysis), ``features`` (the ``n_summary`` features with
    the largest max activation: ``[feature, max, tokens fired]``), ``acts`` (feature -> per-token
    activations, for those features) and ``expl`` (feature -> explanation text, where known).
    """
    if len(text) > MAX_PROMPT_CHARS:
        raise InterpError(f"The prompt is longer than {MAX_PROMPT_CHARS} characters; shorten it.")
    tokens = model.to_tokens(text)[:, : model.info.n_ctx]  # (1, pos)
    x = model.capture(tokens, [hook]).acts[hook]
    x = x.reshape(tokens.shape[1], -1)  # (pos, d_in)
    f = dictionary.encode(x.float()).float().cpu()  # (pos, F)
    if model.info.bos_token_id is not None and int(tokens[0, 0]) == model.info.bos_token_id:
        f[0] = 0.0
    vals, ids = f.topk(min(top_k, f.shape[1]), dim=1)
    top = [[[int(i), round(float(v), 4)] for v, i in zip(vr, ir) if v > 0] for vr, ir in zip(vals, ids)]
    peak = f.max(0).values
    chosen = [int(i) for i in peak.topk(min(n_summary, f.shape[1])).indices if peak[i] > 0]
    explanations = explanations or {}
    shown = {int(j) for row in top for j, _ in row} | set(chosen)
    return {
        "tokens": model.token_strings(tokens[0]),
        "top": top,
        "features": [[i, round(float(peak[i]), 4), int((f[:, i] > 0).sum())] for i in chosen],
        "acts": {str(i): [round(float(v), 4) for v in f[:, i]] for i in chosen},
        "expl": {
            str(i): explanations[i]["text"] for i in sorted(shown) if i in explanations
        },
    }


class _Handler(SimpleHTTPRequestHandler):
    """Static files of the site, plus the prompt API. ``app`` is set by :func:`make_server`."""

    app: dict[str, Any]

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s - %s", self.address_string(), format % args)

    def end_headers(self) -> None:
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("Cache-Control", "no-store")
        super().end_headers()

    def _json(self, status: int, obj: Any) -> None:
        body = json.dumps(obj, ensure_ascii=True, allow_nan=False).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        url = urlparse(self.path)
        if url.path == "/api/prompt":
            return self._prompt(parse_qs(url.query).get("text", [""])[0])
        if url.path == "/data/meta.js":
            body = (
                Path(self.directory) / "data" / "meta.js"
            ).read_bytes() + b"window.INTERP_META.served = true;\n"
            self.send_response(HTTPStatus.OK)
            self.send_header("Content-Type", "text/javascript; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            return None
        return super().do_GET()

    def do_POST(self) -> None:
        if urlparse(self.path).path != "/api/prompt":
            return self._json(HTTPStatus.NOT_FOUND, {"error": "no such endpoint"})
        length = int(self.headers.get("Content-Length") or 0)
        if length > 4 * MAX_PROMPT_CHARS + 1024:
            return self._json(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, {"error": "prompt too long"})
        try:
            text = json.loads(self.rfile.read(length) or b"{}").get("text", "")
        except (json.JSONDecodeError, AttributeError):
            return self._json(HTTPStatus.BAD_REQUEST, {"error": 'send JSON {"text": "..."}'})
        return self._prompt(str(text))

    def _prompt(self, text: str) -> None:
        if not text:
            return self._json(HTTPStatus.BAD_REQUEST, {"error": "empty prompt"})
        app = self.app
        try:
            with app["lock"]:
                out = prompt_features(
                    app["model"],
                    app["dictionary"],
                    app["hook"],
                    text,
                    top_k=app["top_k"],
                    explanations=app["explanations"],
                )
        except InterpError as e:
            return self._json(HTTPStatus.BAD_REQUEST, {"error": str(e)})
        return self._json(HTTPStatus.OK, out)


def make_server(
    site_dir: str | Path,
    model: Model,
    dictionary: Dictionary,
    hook: str | None = None,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    top_k: int = 8,
    explanations: dict[int, dict[str, Any]] | None = None,
) -> ThreadingHTTPServer:
    """A server (not yet serving) for the site at ``site_dir``; port 0 picks a free port.

    Call ``serve_forever()`` on it (or run it in a thread) and ``shutdown()`` to stop.
    """
    site = Path(site_dir)
    if not (site / "index.html").is_file() or not (site / "data" / "meta.js").is_file():
        raise InterpError(f"{site} is not a dashboard site; build one with interp dashboard.")
    hook = hook or dictionary.cfg.hook_in
    if not hook:
        raise InterpError("The dictionary names no input hook; pass --hook.")
    model.resolve_hooks(hook)  # raises with close matches for a hook the model lacks
    handler = type(
        "Handler",
        (_Handler,),
        {
            "app": {
                "model": model,
                "dictionary": dictionary,
                "hook": hook,
                "top_k": top_k,
                "explanations": explanations or {},
                "lock": threading.Lock(),
            }
        },
    )
    server = ThreadingHTTPServer((host, port), partial(handler, directory=str(site)))
    server.daemon_threads = True
    return server
