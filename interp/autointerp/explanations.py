"""The explanations format: where ``interp explain`` / ``interp score`` put their results, and the reader.

Layout, inside the feature store directory (so ``interp dashboard`` finds it with no extra flag)::

    <feature store>/explanations/<run>/run.json            what the run was (configs, usage, failures)
    <feature store>/explanations/<run>/features/<i>.json   one record per feature, written atomically

A *run* is one explainer's explanations and their scores; its name defaults to the explainer's
(``ngram``, ``llm``), so the LLM-free baseline and an LLM's explanations sit side by side.

A feature record (``format`` = ``interp-autointerp-feature``, ``version`` = 1) holds:

- ``feature`` (int), ``run`` (str), ``explainer`` (``ngram`` | ``llm``), ``explanation`` (str);
- ``explain``: ``train`` (the [context, start] of every example the explainer saw), ``usage`` (tokens) and,
  for an LLM, ``raw`` (the answer the explanation was parsed from);
- ``scores``: scorer name -> result, each with ``score`` (the headline number, see ``HEADLINE``; None when
  undefined), ``metrics`` (every metric computed), ``control`` (the same scorer on a random explanation:
  ``explanation``, ``source_feature``, ``score``, ``metrics``), ``examples`` (what was scored and what the
  scorer answered), ``usage`` and ``failures`` (malformed answers by kind);
- ``updated`` (UTC time of the last write).

Nothing is pickled; readers ignore fields they do not know, and a record with a ``version`` above
``VERSION`` is refused with a message to upgrade interp.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from interp.errors import InterpError
from interp.io import atomic_write_json, read_json

FORMAT = "interp-autointerp-feature"
RUN_FORMAT = "interp-autointerp-run"
VERSION = 1
DIRNAME = "explanations"
HEADLINE = {
    "detection": "balanced_accuracy",
    "fuzzing": "balanced_accuracy",
    "simulation": "pearson",
    "surprisal": "auroc",
    "embedding": "auroc",
    "intervention": "auroc",
}
"""The metric each scorer reports as its ``score``."""
_KIND_RANK = {"llm": 0, "ngram": 1}


def run_dir(feature_store: str | Path, run: str) -> Path:
    """Directory of run ``run`` inside a feature store directory."""
    if not run or "/" in run or run.startswith("."):
        raise InterpError(f"Run name {run!r} must be a plain directory name such as 'llm' or 'ngram'.")
    return Path(feature_store) / DIRNAME / run


def record_path(run_path: Path, feature: int) -> Path:
    return run_path / "features" / f"{feature}.json"


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def write_record(run_path: Path, record: dict[str, Any]) -> None:
    """Write one feature's record atomically (temporary file, fsync, rename)."""
    record = {**record, "format": FORMAT, "version": VERSION, "updated": now()}
    atomic_write_json(record_path(run_path, int(record["feature"])), record)


def read_record(run_path: Path, feature: int) -> dict[str, Any] | None:
    """The record of ``feature`` in a run, or None when it has none yet."""
    path = record_path(run_path, feature)
    if not path.is_file():
        return None
    return _checked(read_json(path, "explanation record"), path)


def iter_records(run_path: Path) -> Iterator[dict[str, Any]]:
    """Every feature record of a run, in feature order."""
    folder = run_path / "features"
    if not folder.is_dir():
        return
    paths = [p for p in folder.glob("*.json") if p.stem.isdigit()]
    for path in sorted(paths, key=lambda p: int(p.stem)):
        yield _checked(read_json(path, "explanation record"), path)


def _checked(rec: Any, path: Path) -> dict[str, Any]:
    if not isinstance(rec, dict) or rec.get("format") != FORMAT:
        raise InterpError(f"{path} is not an interp explanation record; remove it or run interp explain again.")
    if int(rec.get("version", 0)) > VERSION:
        raise InterpError(f"{path} has format version {rec['version']}; this interp reads up to {VERSION}. "
                          "Upgrade interp.")
    return rec


def list_runs(feature_store: str | Path) -> list[Path]:
    """Runs in a feature store directory, the preferred one first (LLM before n-gram, then newest)."""
    base = Path(feature_store) / DIRNAME
    if not base.is_dir():
        return []
    metas = [(d, read_json(d / "run.json", "explanations run manifest")) for d in sorted(base.iterdir())
             if (d / "run.json").is_file()]
    metas.sort(key=lambda dm: str(dm[1].get("updated", "")), reverse=True)  # newest first ...
    metas.sort(key=lambda dm: _KIND_RANK.get(dm[1].get("explainer", ""), 2))  # ... within each explainer kind
    return [d for d, _ in metas]


def load_explanations(explanations: Any) -> dict[int, dict[str, Any]]:
    """Normalise explanations to ``{feature: {"text": str, "scores": {name: float}, ...}}``.

    Accepts:
    - a feature store directory (its ``explanations/`` runs; the preferred run gives ``text`` and
      ``scores``, the others are listed under ``runs``) or one run directory; records of these also carry
      ``run``, ``explainer``, ``controls`` (scorer -> control score) and ``results`` (every scorer's
      full result, with its examples);
    - a path to a JSON file or an object: a mapping from feature index (int or str) to a string or to a
      record with ``explanation``/``text`` and ``scores`` (a mapping) or ``score``; or a list of such
      records that carry their index under ``feature``, ``index`` or ``latent``.
    """
    if explanations is None:
        return {}
    if isinstance(explanations, (str, Path)) and Path(explanations).is_dir():
        return _load_dir(Path(explanations))
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
        out[i] = {"text": str(text), "scores": _finite(scores)}
    return out


def _finite(scores: Mapping[str, Any]) -> dict[str, float]:
    return {str(k): v for k, v in scores.items() if isinstance(v, (int, float)) and math.isfinite(v)}


def _load_dir(path: Path) -> dict[int, dict[str, Any]]:
    runs = [path] if (path / "run.json").is_file() else list_runs(path)
    out: dict[int, dict[str, Any]] = {}
    for rank, run in enumerate(runs):
        for rec in iter_records(run):
            entry = _entry(rec)
            i = int(rec["feature"])
            if rank == 0 or i not in out:
                out.setdefault(i, {}).update(entry)
                out[i].setdefault("runs", [])
            else:
                out[i]["runs"].append({k: entry[k] for k in ("run", "explainer", "text", "scores")})
    return out


def _entry(rec: dict[str, Any]) -> dict[str, Any]:
    results = rec.get("scores") or {}
    return {
        "text": str(rec.get("explanation", "")),
        "run": rec.get("run"),
        "explainer": rec.get("explainer"),
        "scores": _finite({k: r.get("score") for k, r in results.items()}),
        "controls": _finite({k: (r.get("control") or {}).get("score") for k, r in results.items()}),
        "results": results,
    }
