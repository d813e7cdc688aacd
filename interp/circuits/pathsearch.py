"""Transcoder circuits (Dunefsky et al. 2024): roots, greedy path search, and paths as a graph with error nodes.

A *root* is what a circuit explains at one position of a traced prompt: a transcoder feature's pre-activation, a
logit (or logit difference), or a direction read at a residual hook. :func:`greedy_paths` grows paths back from
it: each iteration decomposes the last node of every kept path (:func:`interp.circuits.decompose.decompose`),
takes its ``num_branches`` largest contributors among transcoder features of earlier layers, attention heads at
every (head, source position), skip terms, MLPs without transcoders and the embeddings, and keeps the
``num_branches`` best extended paths overall. Contributions are in the root's units along the whole path (each
child direction carries its parent's pullback). With ``raw=False`` a contribution is capped at the smallest
feature value already on its path (the root's value and the path's feature contributions): zero-ablating a node
cannot remove more than that (the reference's ``do_raw_attribution=False``; it keeps the last feature's
contribution rather than the smallest). Biases and transcoder errors are never ranked.

:func:`paths_graph` merges the paths into one graph (nodes keyed by component, edge weights summed over the
distinct paths through them) and gives every expanded node three error nodes so that its incoming edges sum to
its value exactly: the transcoders' error (MLP output minus reconstruction), the bias terms (its own encoder or
value bias, attention output biases, transcoder decoder biases), and the rest (contributors the search pruned).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch

from interp.circuits.decompose import Child, Component, Decomposition, Site, child, decompose, ln_pullback
from interp.circuits.graph import CircuitGraph, Edge, Node
from interp.circuits.replacement import Trace
from interp.errors import InterpError
from interp.model import Model


@dataclass(frozen=True)
class Root:
    """What a circuit explains: ``value`` = ``vector . x(site)`` + ``bias``."""

    kind: str
    """``feature``, ``logit``, ``vector`` or ``attn_feature``."""
    layer: int
    position: int
    value: float
    """Pre-activation, logit (difference) or projection."""
    vector: torch.Tensor
    site: Site
    bias: float
    label: str
    index: int | None = None
    activation: float | None = None
    """The feature's activation (0 when it is not active), for feature roots."""
    attrs: dict[str, Any] = field(default_factory=dict)

    @property
    def component(self) -> Component:
        return Component(self.kind, self.layer, self.position, self.index)

    @property
    def id(self) -> str:
        return self.component.id


def _position(trace: Trace, position: int) -> int:
    P = len(trace.tokens)
    if not -P <= position < P:
        raise InterpError(f"Position {position} is outside the prompt of {P} tokens.")
    return position % P


@torch.no_grad()
def feature_root(model: Model, trace: Trace, layer: int, feature: int, position: int = -1) -> Root:
    """Transcoder feature ``feature`` of ``layer`` at ``position``: its pre-activation x W[:, i] + b_i."""
    tc = trace.transcoders
    if tc is None:
        raise InterpError("Trace the prompt with transcoders to explain a transcoder feature.")
    t = _position(trace, position)
    if not 0 <= feature < tc.n_features(layer):
        raise InterpError(f"Layer {layer}'s transcoder has {tc.n_features(layer)} features; {feature} is out of range.")
    W, b = tc.encoder(layer)
    w = W[:, feature].float()
    pre = float(trace.acts[tc.input_hook(layer)][t] @ w + b[feature])
    vec = ln_pullback(model, trace, w, "mid", layer, t) if tc.reads_ln(layer) else w
    label = f"L{layer} feature {feature} @ {t}"
    return Root("feature", layer, t, pre, vec, Site("mid", layer, t), float(b[feature]), label,
                feature, trace.features[layer].at(t, feature), {"latent": tc.latent(layer, feature)})


@torch.no_grad()
def logit_root(model: Model, trace: Trace, token: int, position: int = -1, other: int | None = None) -> Root:
    """The logit of ``token`` at ``position`` (minus that of ``other`` when given)."""
    t = _position(trace, position)
    for tok in (token, other):
        if tok is not None and not 0 <= tok < model.info.d_vocab:
            raise InterpError(f"Token id {tok} is outside the vocabulary ({model.info.d_vocab}).")
    u = model.W_U[:, token].float() - (model.W_U[:, other].float() if other is not None else 0)
    bias = float(model.b_U[token]) - (float(model.b_U[other]) if other is not None else 0.0)
    L = model.info.n_layers
    vec = ln_pullback(model, trace, u, "pre", L, t)
    value = float(trace.resid("pre", L)[t] @ vec) + bias
    names = model.token_strings([token] + ([other] if other is not None else []))
    label = f"logit {names[0]!r}" + (f" - {names[1]!r}" if other is not None else "") + f" @ {t}"
    attrs = {"token": token, "other": other}
    return Root("logit", L, t, value, vec, Site("pre", L, t), bias, label, token, None, attrs)


@torch.no_grad()
def vector_root(model: Model, trace: Trace, hook: str, vector: torch.Tensor, position: int = -1) -> Root:
    """A direction read at ``blocks.L.hook_resid_pre``, ``hook_resid_mid`` or ``hook_resid_post``."""
    t = _position(trace, position)
    kinds = {"hook_resid_pre": ("pre", 0), "hook_resid_mid": ("mid", 0), "hook_resid_post": ("pre", 1)}
    parts = hook.split(".")
    if len(parts) != 3 or parts[0] != "blocks" or not parts[1].isdigit() or parts[2] not in kinds:
        raise InterpError(f"A direction root is read at blocks.L.hook_resid_pre / _mid / _post, not {hook!r}.")
    kind, shift = kinds[parts[2]]
    site = Site(kind, int(parts[1]) + shift, t)
    if vector.shape != (model.info.d_model,):
        raise InterpError(f"The direction has shape {tuple(vector.shape)}; the residual stream is "
                          f"{model.info.d_model} wide.")
    value = float(trace.resid(site.kind, site.layer)[t] @ vector.float())
    return Root("vector", site.layer, t, value, vector.float(), site, 0.0, f"direction at {hook} @ {t}")


# ---- path search ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class PathNode:
    """One step of a path: a component and its contribution to the node before it, in the root's units."""

    component: Component
    value: float
    """Raw contribution (the direct effect of the component on its parent's value)."""
    score: float
    """``value`` capped for ranking (equal to it with ``raw=True``)."""
    child: Child | None
    """Its own input direction (None for embeddings and MLPs without transcoders)."""


@dataclass
class Expansion:
    """What decomposing one node instance (a path prefix) gave: the value it explains and its leaf terms."""

    value: float
    own_bias: float
    error: float
    bias: float


@dataclass
class PathSearch:
    """The result of :func:`greedy_paths`."""

    root: Root
    paths: list[list[tuple[PathNode, ...]]]
    """paths[i]: the paths kept after iteration i (i + 1 steps below the root), best first."""
    expansions: dict[tuple[str, ...], Expansion]
    """Node instance (ids from the root down) -> its expansion, for every node that was expanded."""
    config: dict[str, Any]

    def all_paths(self) -> list[tuple[PathNode, ...]]:
        return [p for level in self.paths for p in level]


@torch.no_grad()
def greedy_paths(
    model: Model,
    trace: Trace,
    root: Root,
    *,
    num_iters: int = 2,
    num_branches: int = 5,
    raw: bool = False,
    ignore_bos: bool = True,
    absolute: bool = False,
) -> PathSearch:
    """Grow paths back from ``root`` for ``num_iters`` steps, keeping ``num_branches`` (see the module docstring).
    ``absolute`` ranks by |contribution| (the reference ranks by signed contribution, largest first)."""
    if num_iters < 1 or num_branches < 1:
        raise InterpError("num_iters and num_branches must be >= 1.")
    root_child = Child(root.vector, root.site, None, root.bias)
    root_node = PathNode(root.component, root.value, root.value, root_child)
    decomps: dict[tuple[str, ...], Decomposition] = {}
    expansions: dict[tuple[str, ...], Expansion] = {}
    current: list[tuple[PathNode, ...]] = [(root_node,)]
    levels: list[list[tuple[PathNode, ...]]] = []
    for _ in range(num_iters):
        grown: list[tuple[PathNode, ...]] = []
        for path in current:
            last = path[-1]
            if last.child is None:
                continue
            key = tuple(n.component.id for n in path)
            dec = decomps.get(key) or decompose(model, trace, last.child.vector, last.child.site)
            decomps[key] = dec
            expansions[key] = Expansion(last.value, last.child.bias_value, dec.leaf_total(("error",)),
                                        dec.leaf_total(("attn_bias", "dec_bias")))
            cap = None if raw else _cap(root, path)
            grown += [path + (node,) for node in _top(model, trace, dec, num_branches, cap, ignore_bos, absolute)]
        if not grown:
            break
        order = sorted(range(len(grown)), key=lambda i: -_rank(grown[i][-1].score, absolute))
        current = [grown[i] for i in order[:num_branches]]
        levels.append(current)
    config = dict(num_iters=num_iters, num_branches=num_branches, raw=raw, ignore_bos=ignore_bos, absolute=absolute)
    return PathSearch(root, levels, expansions, config)


def _cap(root: Root, path: tuple[PathNode, ...]) -> float | None:
    """The largest effect zero-ablating a node below ``path`` can have: the smallest |activation| of a feature root
    and |contribution| of a feature on the path (None when there is none)."""
    values = [n.value for n in path[1:] if n.component.kind == "feature"]
    if root.activation is not None:
        values.append(root.activation)
    return min(abs(v) for v in values) if values else None


def _rank(score: float, absolute: bool) -> float:
    return abs(score) if absolute else score


def _top(model: Model, trace: Trace, dec: Decomposition, k: int, cap: float | None, ignore_bos: bool,
         absolute: bool) -> list[PathNode]:
    comps, values = dec.terms(ignore_bos=ignore_bos)
    if not comps:
        return []
    scores = values.clamp(-cap, cap) if cap is not None else values
    keys = scores.abs() if absolute else scores
    top = keys.topk(min(k, len(comps))).indices.tolist()
    return [PathNode(comps[i], float(values[i]), float(scores[i]), child(model, trace, dec, comps[i])) for i in top]


# ---- paths as a graph ------------------------------------------------------------------------------
_STAGE = {"embed": 0, "pos": 0, "head": 0, "attn_feature": 1, "feature": 2, "skip": 2, "mlp": 2, "logit": 0,
          "vector": 3}


def paths_graph(model: Model, trace: Trace, search: PathSearch) -> CircuitGraph:
    """The paths of ``search`` as a :class:`~interp.circuits.graph.CircuitGraph`: nodes in forward order
    (embeddings, then per layer heads, attention-SAE features, transcoder features; the logits last), edges
    child -> parent with the contribution as score, and per expanded node the error nodes ``err>``, ``bias>`` and
    ``rest>`` (kinds ``error``, ``bias``, ``pruned``) that make its incoming scores sum to its value."""
    root = search.root
    nodes: dict[str, dict[str, Any]] = {root.id: _node(model, trace, root.kind, root.layer, root.position, root.index,
                                                       root.value, {**root.attrs, "root": True, "bias": root.bias})}
    nodes[root.id]["label"] = root.label
    edges: dict[tuple[str, str], float] = {}
    seen: set[tuple[str, ...]] = set()
    for path in search.all_paths():
        for depth in range(1, len(path)):
            prefix = tuple(n.component.id for n in path[: depth + 1])
            if prefix in seen:
                continue
            seen.add(prefix)
            node, parent = path[depth], path[depth - 1].component.id
            c = node.component
            if c.id not in nodes:
                nodes[c.id] = _node(model, trace, c.kind, c.layer, c.position, c.index, 0.0, {}, c.target)
            nodes[c.id]["score"] += node.value
            edges[(c.id, parent)] = edges.get((c.id, parent), 0.0) + node.value
    incoming: dict[str, float] = {}
    for (_, parent), w in edges.items():
        incoming[parent] = incoming.get(parent, 0.0) + w
    totals: dict[str, Expansion] = {}
    for key, ex in search.expansions.items():
        if key[-1] not in incoming:
            continue  # expanded, but none of its children survived in a kept path
        acc = totals.setdefault(key[-1], Expansion(0.0, 0.0, 0.0, 0.0))
        acc.value += ex.value
        acc.error += ex.error
        acc.bias += ex.bias + ex.own_bias
    for parent, ex in totals.items():
        rest = ex.value - incoming[parent] - ex.error - ex.bias
        for kind, name, value in (("error", "err", ex.error), ("bias", "bias", ex.bias), ("pruned", "rest", rest)):
            nid = f"{name}>{parent}"
            of = nodes[parent]
            nodes[nid] = {"id": nid, "kind": kind, "layer": of["layer"], "position": of["position"],
                          "label": f"{name} of {of['label']}", "score": value, "attrs": {"of": parent}}
            edges[(nid, parent)] = value
    order = {nid: _order(n, parent_of=n["attrs"].get("of"), nodes=nodes) for nid, n in nodes.items()}
    ordered = sorted(nodes.values(), key=lambda n: order[n["id"]])
    metadata = {"method": "transcoder-paths", "model": model.info.to_dict(), "root": root.id,
                "root_value": root.value, "prompt_tokens": model.token_strings(trace.tokens),
                "config": search.config, "score_units": "contribution to the root's value",
                "score_origin": "edge"}
    return CircuitGraph([Node(**n) for n in ordered], [Edge(s, t, score=w) for (s, t), w in edges.items()],
                        metadata)


def _order(node: dict[str, Any], parent_of: str | None, nodes: dict[str, dict[str, Any]]) -> tuple[float, ...]:
    if parent_of is not None:  # error nodes sit just before their parent
        key = _order(nodes[parent_of], None, nodes)
        return (key[0], key[1] - 0.5, key[2], key[3])
    index = node.get("head") if node.get("head") is not None else node.get("feature")
    return (float(node["layer"]), float(_STAGE.get(node["kind"], 2)), float(node.get("position") or 0),
            float(index or 0))


def _node(model: Model, trace: Trace, kind: str, layer: int, position: int, index: int | None, score: float,
          attrs: dict[str, Any], target: int | None = None) -> dict[str, Any]:
    tok = model.token_strings([int(trace.tokens[position])])[0]
    node: dict[str, Any] = {"id": Component(kind, layer, position, index, target).id, "kind": kind, "layer": layer,
                            "position": position, "score": score, "attrs": {**attrs, "token": tok}}
    if kind == "head":
        node.update(head=index, label=f"L{layer}H{index} {position}->{target}")
        node["attrs"]["target"] = target
    elif kind in ("feature", "attn_feature"):
        tc = trace.transcoders
        latent = tc.latent(layer, index) if kind == "feature" and tc is not None and index is not None else index
        node.update(feature=latent, label=f"L{layer}/{index} @ {position}")
        if kind == "feature" and tc is not None and index is not None:
            node["attrs"].update(activation=trace.features[layer].at(position, index), layer_feature=index)
    elif kind == "embed":
        node.update(label=f"embed {tok!r} @ {position}", layer=-1)
    elif kind == "pos":
        node.update(label=f"pos {position}", layer=-1)
    else:
        node.update(label=f"{kind} L{layer} @ {position}")
    if math.isnan(score):
        raise InterpError(f"Node {node['id']} has a NaN score.")
    return node
