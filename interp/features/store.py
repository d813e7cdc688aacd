"""The feature store written by ``interp analyze``: its format constants and its reader.

Other tools can read a feature store without interp: it is ``manifest.json``, ``features.safetensors``
and ``vocab.json``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from interp.errors import InterpError
from interp.io import load_tensors, read_json

FORMAT = "interp-feature-store"
VERSION = 1
KINDS = ("top", "quant", "rand")


class FeatureStore:
    """Read side of a feature store directory written by :func:`analyze_features`.

    Layout: ``manifest.json`` (format, version, inputs, dictionary cfg, analyze config, counts),
    ``features.safetensors`` (dense per-feature tensors, first dimension = feature; names in the
    module docstring, example tensors ``{top,quant,rand}_{tokens,acts,start}`` of shape
    (F, k, window) with token id -1 / start -1 for missing examples) and ``vocab.json`` (the string of
    every token id). Everything is plain safetensors + JSON.
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.manifest: dict[str, Any] = read_json(self.path / "manifest.json", "feature store manifest")
        if self.manifest.get("format") != FORMAT:
            raise InterpError(f"{self.path} is not a feature store. Create one with interp analyze.")
        if self.manifest.get("version", 0) > VERSION:
            version = self.manifest["version"]
            raise InterpError(f"Feature store {self.path} has format version {version}; upgrade interp.")
        if not self.manifest.get("complete"):
            raise InterpError(f"Feature store {self.path} is incomplete; run the same interp analyze again.")
        self.tensors = load_tensors(self.path / "features.safetensors")
        self.vocab: list[str] = read_json(self.path / "vocab.json", "feature store vocabulary")

    @property
    def n_features(self) -> int:
        return int(self.tensors["count"].numel())

    def token_strings(self, ids: torch.Tensor | list[int]) -> list[str]:
        ids = ids.tolist() if isinstance(ids, torch.Tensor) else ids
        return [self.vocab[i] if 0 <= i < len(self.vocab) else f"<{i}>" for i in ids]

    def examples(self, i: int, kind: str) -> list[dict[str, Any]]:
        """Examples of feature ``i`` of one kind (top, quant, rand): tokens, ids, acts, context, band."""
        t = self.tensors
        out = []
        for j in range(t[f"{kind}_tokens"].shape[1]):
            if int(t[f"{kind}_start"][i, j]) < 0:
                continue
            ids = t[f"{kind}_tokens"][i, j]
            ex = {
                "tokens": self.token_strings(ids),
                "ids": ids.tolist(),
                "acts": [round(float(a), 5) for a in t[f"{kind}_acts"][i, j]],
                "context": int(t[f"{kind}_ctx"][i, j]),
                "start": int(t[f"{kind}_start"][i, j]),
            }
            if kind == "quant":
                ex["band"] = int(t["quant_band"][i, j])
            out.append(ex)
        return out

    def feature(self, i: int) -> dict[str, Any]:
        """Everything known about feature ``i`` as a JSON-ready dict (token ids decoded to strings)."""
        if not 0 <= i < self.n_features:
            raise InterpError(f"Feature {i} is out of range: the store has {self.n_features} features.")
        t = self.tensors
        hist = t["hist"][i]
        rec: dict[str, Any] = {
            "index": i,
            "count": int(t["count"][i]),
            "density": float(t["density"][i]),
            "max_act": float(t["max_act"][i]),
            "mean_act": float(t["mean_act"][i]),
            "hist": {"edges": [float(e) for e in t["hist_edges"]], "counts": hist.tolist()},
            "examples": {kind: self.examples(i, kind) for kind in KINDS},
        }
        if "logit_pos" in t:
            rec["logits"] = {
                side: [
                    [s, round(float(v), 5)]
                    for s, v in zip(self.token_strings(t[f"logit_{side}_ids"][i]), t[f"logit_{side}"][i])
                ]
                for side in ("pos", "neg")
            }
        if "nbr_dec_ids" in t:
            rec["neighbours"] = {
                name: [
                    [int(j), round(float(v), 5)] for j, v in zip(t[f"nbr_{name}_ids"][i], t[key][i]) if j >= 0
                ]
                for name, key in (("dec", "nbr_dec_cos"), ("cooc", "nbr_cooc"))
            }
        if "head_attr" in t:
            rec["head_attr"] = [round(float(v), 5) for v in t["head_attr"][i]]
        return rec


def load_feature_store(path: str | Path) -> FeatureStore:
    """Open a feature store written by :func:`analyze_features`."""
    return FeatureStore(path)
