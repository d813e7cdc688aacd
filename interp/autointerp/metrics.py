"""Scoring metrics: balanced accuracy, precision / recall / F1, AUROC and Pearson correlation.

Conventions (delphi's ``log/result_analysis.py``, Paulo et al. 2024):
- a prediction is a probability or a 0/1 answer; it counts as positive when it is >= 0.5;
- predictions that are ``None`` (a malformed answer that could not be recovered) are left out and counted
  in ``n_failed``;
- ``balanced_accuracy`` is (TPR + TNR) / 2, so 0.5 is chance whatever the class balance;
- a metric that is undefined (no positives, a constant series) is ``None``, never a made-up number.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np


def classification_metrics(labels: Sequence[bool], predictions: Sequence[float | None]) -> dict[str, Any]:
    """Confusion counts and rates of ``predictions`` (None = failed) against ``labels`` (True = positive)."""
    if len(labels) != len(predictions):
        raise ValueError(f"{len(labels)} labels but {len(predictions)} predictions")
    pairs = [(bool(y), p >= 0.5) for y, p in zip(labels, predictions) if p is not None]
    tp = sum(y and p for y, p in pairs)
    tn = sum(not y and not p for y, p in pairs)
    fp = sum(not y and p for y, p in pairs)
    fn = sum(y and not p for y, p in pairs)
    pos, neg = tp + fn, tn + fp
    tpr = tp / pos if pos else None
    tnr = tn / neg if neg else None
    precision = tp / (tp + fp) if tp + fp else None
    f1 = 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else None
    return {
        "balanced_accuracy": (tpr + tnr) / 2 if tpr is not None and tnr is not None else None,
        "accuracy": (tp + tn) / len(pairs) if pairs else None,
        "precision": precision,
        "recall": tpr,
        "f1": f1,
        "tpr": tpr,
        "tnr": tnr,
        "tp": tp,
        "tn": tn,
        "fp": fp,
        "fn": fn,
        "n": len(pairs),
        "n_failed": len(labels) - len(pairs),
    }


def auroc(labels: Sequence[bool], scores: Sequence[float | None]) -> float | None:
    """Area under the ROC curve of ``scores`` separating positives from negatives (None entries dropped).

    Computed as the Mann-Whitney statistic: the probability that a random positive scores above a random
    negative, ties counting one half. ``None`` when either class is empty.
    """
    pairs = [(bool(y), float(s)) for y, s in zip(labels, scores) if s is not None]
    pos = np.array([s for y, s in pairs if y], dtype=np.float64)
    neg = np.array([s for y, s in pairs if not y], dtype=np.float64)
    if not len(pos) or not len(neg):
        return None
    greater = (pos[:, None] > neg[None, :]).sum()
    ties = (pos[:, None] == neg[None, :]).sum()
    return float((greater + 0.5 * ties) / (len(pos) * len(neg)))


def pearson(x: Sequence[float], y: Sequence[float]) -> float | None:
    """Pearson correlation of two equal-length series; ``None`` when either is constant or shorter than 2."""
    a, b = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"series of different lengths: {a.shape} and {b.shape}")
    if a.size < 2:
        return None
    a, b = a - a.mean(), b - b.mean()
    den = np.sqrt((a * a).sum() * (b * b).sum())
    if den == 0 or not np.isfinite(den):
        return None
    return float((a * b).sum() / den)
