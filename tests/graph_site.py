"""An attribution graph of the tiny model of ``conftest.py`` through random skip transcoders on both layers, and the
feature stores of both transcoders: a site with layer 1's store links its layer-1 feature nodes to feature pages, a
site with both stores every layer's (shared by the supernode and feature-link tests and their browser test)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, NamedTuple

from transcoders import per_layer

PROMPT = "def add(a, b):\n    return a + b\n"
HOOK = "blocks.1.ln2.hook_normalized"
HOOK0 = "blocks.0.ln2.hook_normalized"


class GraphSite(NamedTuple):
    transcoders: list[Any]
    """The per-layer transcoders (layer 0, layer 1)."""
    features: Any
    """The feature store of layer 1's transcoder."""
    graph: Any
    """The attribution graph of PROMPT through both."""
    features0: Any
    """The feature store of layer 0's transcoder."""


def graph_site(base: Path, model_dir: Path, corpus_dir: Path, model: Any) -> GraphSite:
    from interp.activations import CacheConfig, cache_activations
    from interp.circuits.graph_api import AttributionGraphConfig, attribution_graph
    from interp.circuits.replacement import TranscoderSet
    from interp.features import AnalyzeConfig, analyze_features, load_feature_store
    from interp.model import CorpusConfig

    transcoders = per_layer("skip_transcoder", model.info.fingerprint, k=4)
    store = cache_activations(CacheConfig(model=str(model_dir), hooks=(HOOK0, HOOK), n_tokens=320, ctx_len=32,
                                          corpus=CorpusConfig(source=str(corpus_dir))), base / "store", progress=False)
    cfg = AnalyzeConfig(n_top=2, quantile_pool=10, n_quantiles=2, per_quantile=1, window=8, n_random=1)
    fs = load_feature_store(analyze_features(transcoders[1], store, base / "features", cfg, model, progress=False))
    fs0 = load_feature_store(analyze_features(transcoders[0], store, base / "features0", cfg, model, progress=False))
    result = attribution_graph(model, TranscoderSet(transcoders, model),
                               AttributionGraphConfig(prompt=PROMPT, max_feature_nodes=32, node_threshold=0.99,
                                                      edge_threshold=0.99))
    return GraphSite(transcoders, fs, result.graph, fs0)
