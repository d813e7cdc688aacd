"""Links between attribution graphs and the feature pages of a site: which feature nodes open which feature page,
and, per feature, the graphs it appears in.

**Rule.** A site shows one or more feature stores, each the features of one dictionary. A feature node (kind
``feature``) of an attribution graph links to feature ``attrs["latent"]`` of a store when the graph's transcoder of
the node's layer is that store's dictionary: the graph's ``metadata["dictionaries"][layer]`` equals the
:func:`~interp.circuits.graph.dictionary_digest` of the store manifest's ``dictionary`` (the dictionary's config,
training run included), and the latent is one of the store's features. So with per-layer transcoders, a site with
the feature stores of every layer's transcoder links every layer's nodes (one store per layer), a site with layer 1's
store only layer 1's; with a cross-layer transcoder its one store links every layer's nodes. When two stores match a
node the first given wins. Graphs without ``dictionaries`` (written before it was recorded, or imported from
circuit-tracer) link nowhere.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from interp.circuits.graph import CircuitGraph, dictionary_digest
from interp.site.graphs import SiteGraph, graph_title

CONTEXT = 12
"""Prompt tokens shown before a node's position on a feature page."""


def feature_pages(manifest: Mapping[str, Any], n_features: int, graph: CircuitGraph) -> dict[str, int]:
    """Node id -> feature index on the site, for the feature nodes of ``graph`` that the feature store with
    ``manifest`` (and ``n_features`` features) describes (the module docstring's rule)."""
    digests = graph.metadata.get("dictionaries")
    if not isinstance(digests, dict) or not isinstance(manifest.get("dictionary"), dict):
        return {}
    mine = dictionary_digest(manifest["dictionary"])
    out = {}
    for node in graph.nodes:
        latent = node.attrs.get("latent")
        if (node.kind == "feature" and digests.get(str(node.layer)) == mine and isinstance(latent, int)
                and not isinstance(latent, bool) and 0 <= latent < n_features):
            out[node.id] = latent
    return out


def site_links(stores: Sequence[Any], graph: CircuitGraph) -> dict[str, tuple[int, int]]:
    """Node id -> (store index, feature index) for the feature nodes of ``graph`` that one of the feature ``stores``
    (FeatureStore objects, in site order) describes; the first matching store wins."""
    out: dict[str, tuple[int, int]] = {}
    for k, fs in enumerate(stores):
        for node, latent in feature_pages(fs.manifest, fs.n_features, graph).items():
            out.setdefault(node, (k, latent))
    return out


def store_pages(links: Mapping[str, tuple[int, int]], store: int) -> dict[str, int]:
    """The part of :func:`site_links`' result that links into ``store``: node id -> feature index."""
    return {node: latent for node, (k, latent) in links.items() if k == store}


def _prompt(graph: CircuitGraph) -> tuple[str, list[str]]:
    meta = graph.metadata
    tokens = [str(t) for t in meta.get("prompt_tokens") or []]
    config = meta["config"] if isinstance(meta.get("config"), dict) else {}
    return str(config.get("prompt") or "".join(tokens)), tokens


def appearances(graphs: Sequence[SiteGraph], pages: Sequence[Mapping[str, int]]) -> dict[int, list[dict[str, Any]]]:
    """Feature index -> the graph nodes it appears as (``pages[g]`` is :func:`feature_pages` of graph ``g``), most
    influential first: ``g`` (the graph's index on the site), ``title``, ``prompt`` (its first 200 characters),
    ``node`` (id), ``label``, ``position``, ``context`` (the prompt tokens up to and including the node's position, at
    most :data:`CONTEXT` before it), ``influence`` (the node's score) and ``activation``."""
    out: dict[int, list[dict[str, Any]]] = {}
    for g, (sg, links) in enumerate(zip(graphs, pages)):
        if not links:
            continue
        prompt, tokens = _prompt(sg.graph)
        title = graph_title(sg)
        for node in sg.graph.nodes:
            if node.id not in links:
                continue
            pos = node.position if node.position is not None and 0 <= node.position < len(tokens) else None
            out.setdefault(links[node.id], []).append({
                "g": g, "title": title, "prompt": prompt[:200], "node": node.id, "label": node.label or node.id,
                "position": node.position,
                "context": tokens[max(0, pos - CONTEXT) : pos + 1] if pos is not None else [],
                "influence": node.score, "activation": node.attrs.get("activation")})
    for rows in out.values():
        rows.sort(key=lambda r: -abs(r["influence"] or 0.0))
    return out
