"""Run-level statistics: per scorer, the mean score and the random-explanation control over features."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from interp.autointerp.explanations import iter_records


def describe(values: Sequence[float]) -> dict[str, Any]:
    """n, mean, standard deviation, 95% interval of the mean (normal approximation) and the 5-95th
    percentile range over features."""
    x = np.asarray([v for v in values if v is not None and math.isfinite(v)], dtype=np.float64)
    if not x.size:
        return {"n": 0}
    sd = float(x.std(ddof=1)) if x.size > 1 else 0.0
    half = 1.96 * sd / math.sqrt(x.size)
    return {"n": int(x.size), "mean": float(x.mean()), "sd": sd, "ci95": [float(x.mean() - half),
                                                                          float(x.mean() + half)],
            "p5_p95": [float(np.percentile(x, 5)), float(np.percentile(x, 95))]}


def summarise(run_path: Path, scorers: Sequence[str]) -> dict[str, Any]:
    """Scorer -> {"explanation": describe(scores), "control": describe(control scores)} over the run."""
    scores: dict[str, list[float]] = {s: [] for s in scorers}
    controls: dict[str, list[float]] = {s: [] for s in scorers}
    for rec in iter_records(run_path):
        for name, res in (rec.get("scores") or {}).items():
            if res.get("score") is not None:
                scores.setdefault(name, []).append(float(res["score"]))
            c = (res.get("control") or {}).get("score")
            if c is not None:
                controls.setdefault(name, []).append(float(c))
    return {name: {"explanation": describe(scores[name]), "control": describe(controls.get(name, []))}
            for name in scores}
