"""The on-disk response cache of the LLM client: JSON files keyed by the request, written atomically."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from interp.io import atomic_write_json


class ResponseCache:
    """Answers on disk, one JSON file per request: ``<dir>/<key[:2]>/<key>.json`` (request and response)."""

    def __init__(self, directory: str | Path):
        self.dir = Path(directory)

    @staticmethod
    def key(path: str, body: dict[str, Any]) -> str:
        canon = json.dumps({"path": path, "body": body}, sort_keys=True, ensure_ascii=False)
        return hashlib.sha256(canon.encode()).hexdigest()

    def _file(self, key: str) -> Path:
        return self.dir / key[:2] / f"{key}.json"

    def get(self, key: str) -> dict[str, Any] | None:
        try:
            entry = json.loads(self._file(key).read_text(encoding="utf-8"))
            return entry["response"] if isinstance(entry, dict) else None
        except (FileNotFoundError, json.JSONDecodeError, KeyError):
            return None

    def put(self, key: str, path: str, body: dict[str, Any], response: dict[str, Any]) -> None:
        atomic_write_json(self._file(key), {"request": {"path": path, "body": body}, "response": response})

    def drop(self, key: str) -> None:
        self._file(key).unlink(missing_ok=True)
