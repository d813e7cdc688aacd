"""Export a feature store as Neuronpedia dashboard batches (the JSON that SAEDashboard's
``neuronpedia-runner`` writes and Neuronpedia's import reads).

A batch file is ``{"model_id", "layer", "sae_set", "features": [...]}``. Each feature record carries
the format's field names; which of them interp fills, and from what:

==============================  ==============================================================
``feature_index``               the feature's index
``frac_nonzero``                density (firing tokens / analysed tokens, BOS excluded)
``pos_str`` / ``pos_values``    most promoted tokens and their logit effect (``W_dec @ W_U``)
``neg_str`` / ``neg_values``    most suppressed tokens
``freq_hist_data_bar_values``   activation histogram: geometric centre of each log-spaced bin
``freq_hist_data_bar_heights``  firing tokens per bin (under- and overflow bins left out)
``correlated_features_indices`` co-occurrence neighbours (Jaccard of firing, on a row sample)
``correlated_features_l1``      their Jaccard values (the format's activation-similarity slot)
``decoder_weights_dist``        share of the decoder norm per attention head (``hook_z`` only)
``n_prompts_total``             contexts analysed; ``n_tokens_in_prompt``: context length
``dataset``                     the corpus source of the activation store, when recorded
``activations``                 top examples (``bin_min = -1``, ``bin_max`` = the max activation)
                                then quantile examples (``bin_min``/``bin_max`` = the band's
                                range among its examples, ``bin_contains`` = 1 / n_quantiles);
                                ``tokens``, ``values`` and ``qualifying_token_index`` (the peak)
==============================  ==============================================================

Left empty because interp does not compute them: ``neuron_alignment_*``, ``correlated_neurons_*``,
``correlated_features_pearson``, ``logits_hist_data_*``. Not exported: decoder-cosine neighbours
(Neuronpedia computes its own from the weights), random non-firing examples, and explanations (which
Neuronpedia imports separately; they are written to ``explanations.json`` next to the batches).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from interp.autointerp.explanations import load_explanations
from interp.features.store import FeatureStore, load_feature_store
from interp.io import atomic_write_json


def export_neuronpedia(
    feature_store: FeatureStore | str | Path,
    out_dir: str | Path,
    explanations: Any = None,
    *,
    model_id: str | None = None,
    sae_id: str | None = None,
    batch_size: int = 128,
) -> list[Path]:
    """Write ``batch-<n>.json`` files of ``batch_size`` features to ``out_dir``; returns them in order.

    ``model_id`` defaults to the model's name, ``sae_id`` (the batch's ``sae_set``) to the hook name;
    ``layer`` is the first number in the hook name. Explanations, if given, go to ``explanations.json``
    as ``[{"modelId", "layer", "index", "description", "scores"}]``.
    """
    fs = feature_store if isinstance(feature_store, FeatureStore) else load_feature_store(feature_store)
    expl = load_explanations(explanations)
    m = fs.manifest
    model_id = model_id or Path(str(m.get("model", {}).get("name", "model"))).name
    sae_id = sae_id or str(m.get("hook"))
    layer = next((int(p) for p in str(m.get("hook", "")).split(".") if p.isdigit()), None)
    corpus = m.get("corpus") or {}
    run = {
        "n_prompts_total": int(m.get("n_rows", 0)) // int(m["ctx_len"]),
        "n_tokens_in_prompt": int(m["ctx_len"]),
        "dataset": str(corpus.get("source", "")) if isinstance(corpus, dict) else "",
        "n_quantiles": int(m["config"]["n_quantiles"]),
    }
    out = Path(out_dir)
    files = []
    for n, a in enumerate(range(0, fs.n_features, batch_size)):
        feats = [_feature(fs.feature(i), run) for i in range(a, min(a + batch_size, fs.n_features))]
        path = out / f"batch-{n}.json"
        atomic_write_json(path, {"model_id": model_id, "layer": layer, "sae_set": sae_id, "features": feats})
        files.append(path)
    if expl:
        atomic_write_json(
            out / "explanations.json",
            [
                {"modelId": model_id, "layer": sae_id, "index": str(i), "description": e["text"],
                 "scores": e["scores"]}
                for i, e in sorted(expl.items())
            ],
        )
    return files


def _activations(rec: dict[str, Any], n_quantiles: int) -> list[dict[str, Any]]:
    """Top examples, then quantile examples from the highest band down, in the format's shape."""
    out = []
    for ex in rec["examples"]["top"]:
        out.append(_activation(ex, -1, rec["max_act"], -1))
    quant = rec["examples"]["quant"]
    for band in sorted({ex["band"] for ex in quant}, reverse=True):
        group = [ex for ex in quant if ex["band"] == band]
        peaks = [max(ex["acts"]) for ex in group]
        for ex in group:
            out.append(_activation(ex, min(peaks), max(peaks), 1 / n_quantiles))
    return out


def _activation(ex: dict[str, Any], bin_min: float, bin_max: float, bin_contains: float) -> dict[str, Any]:
    values = [round(v, 3) for v in ex["acts"]]
    return {
        "bin_min": bin_min,
        "bin_max": bin_max,
        "bin_contains": bin_contains,
        "tokens": ex["tokens"],
        "values": values,
        "qualifying_token_index": values.index(max(values)) if values else 0,
    }


def _feature(rec: dict[str, Any], run: dict[str, Any]) -> dict[str, Any]:
    edges, counts = rec["hist"]["edges"], rec["hist"]["counts"]
    logits = rec.get("logits", {"pos": [], "neg": []})
    cooc = rec.get("neighbours", {}).get("cooc", [])
    return {
        "feature_index": rec["index"],
        "neuron_alignment_indices": [],
        "neuron_alignment_values": [],
        "neuron_alignment_l1": [],
        "correlated_neurons_indices": [],
        "correlated_neurons_l1": [],
        "correlated_neurons_pearson": [],
        "correlated_features_indices": [j for j, _ in cooc],
        "correlated_features_l1": [v for _, v in cooc],
        "correlated_features_pearson": [],
        "neg_str": [s for s, _ in logits["neg"]],
        "neg_values": [v for _, v in logits["neg"]],
        "pos_str": [s for s, _ in logits["pos"]],
        "pos_values": [v for _, v in logits["pos"]],
        "frac_nonzero": rec["density"],
        "freq_hist_data_bar_values": [math.sqrt(lo * hi) for lo, hi in zip(edges[:-1], edges[1:])],
        "freq_hist_data_bar_heights": counts[1:-1],
        "logits_hist_data_bar_heights": [],
        "logits_hist_data_bar_values": [],
        "n_prompts_total": run["n_prompts_total"],
        "n_tokens_in_prompt": run["n_tokens_in_prompt"],
        "dataset": run["dataset"],
        "decoder_weights_dist": rec.get("head_attr", []),
        "activations": _activations(rec, run["n_quantiles"]),
    }
