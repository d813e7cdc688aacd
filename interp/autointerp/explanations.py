"""The explanations format: what auto-interpretation writes and the site and exporters read.

An explanations file is JSON: a mapping from feature index (int or str) to a string or to a record with
``explanation``/``text`` and ``scores`` (a mapping of scorer name to number) or ``score``; or a list of such
records that carry their index under ``feature``, ``index`` or ``latent``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from interp.errors import InterpError
from interp.io import read_json


def load_explanations(explanations: Any) -> dict[int, dict[str, Any]]:
    """Normalise explanations to ``{feature: {"text": str, "scores": {name: float}}}``.

    Accepts a path to a JSON file or an object: a mapping from feature index (int or str) to a string
    or to a record with ``explanation``/``text`` and ``scores`` (a mapping) or ``score``; or a list of
    such records that carry their index under ``feature``, ``index`` or ``latent``.
    """
    if explanations is None:
        return {}
    if isinstance(explanations, (str, Path)):
        explanations = read_json(explanations, "explanations file")
    items: list[tuple[Any, Any]]
    if isinstance(explanations, Mapping):
        items = list(explanations.items())
    elif isinstance(explanations, list):
        items = [
            (next((r[k] for k in ("feature", "index", "latent") if k in r), None), r) for r in explanations
        ]
    else:
        raise InterpError("Explanations must be a JSON object keyed by feature index, or a list of records.")
    out: dict[int, dict[str, Any]] = {}
    for key, rec in items:
        try:
            i = int(key)
        except (TypeError, ValueError) as e:
            raise InterpError(f"Explanation key {key!r} is not a feature index.") from e
        if isinstance(rec, str):
            out[i] = {"text": rec, "scores": {}}
            continue
        text = rec.get("explanation", rec.get("text", ""))
        scores = dict(rec.get("scores") or {})
        if "score" in rec and isinstance(rec["score"], (int, float)):
            scores.setdefault("score", rec["score"])
        out[i] = {
            "text": str(text),
            "scores": {
                str(k): v for k, v in scores.items() if isinstance(v, (int, float)) and math.isfinite(v)
            },
        }
    return out
