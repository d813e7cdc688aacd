"""Supernodes: named groups of a graph's nodes drawn as one node, whose edges are the sums of its members' edges.

A graph keeps its grouping in ``metadata["supernodes"]``: a list of ``{"name": str, "members": [node id, ...]}``
(no node in two supernodes; a supernode may hold nodes of any layer and position). circuit-tracer keeps the same
thing in its viewer state, ``qParams.supernodes`` (``[[name, node_id, ...], ...]`` in its node ids);
:mod:`interp.formats.circuit_tracer` converts between the two on export and import.

Where a grouping comes from: :func:`group_nodes` (by hand, in Python), the graph view (the user groups nodes and
saves a grouping file, :func:`save_supernodes` / :func:`load_supernodes`, which ``interp dashboard --supernodes``
reads), or :func:`interp.circuits.auto_supernodes.auto_supernodes` (decoder-direction clusters, a starting point).

A grouping file (``format`` ``interp-supernodes``, ``schema_version`` 1) holds ``graph`` (``key``: the
:func:`graph_key` of the graph it was made on, and its ``title`` and ``source`` for people) and ``supernodes``.

This module imports neither torch nor scipy.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

from interp.circuits.graph import CircuitGraph, Edge, Node
from interp.errors import InterpError
from interp.io import atomic_write_json, read_json

FORMAT = "interp-supernodes"
SCHEMA_VERSION = 1
KIND = "supernode"
"""The kind of a supernode's node in :func:`collapse_supernodes`' result."""


@dataclass(frozen=True)
class Supernode:
    """A named group of node ids."""

    name: str
    """What the group means (shown as the node's label)."""
    members: tuple[str, ...]
    """Ids of the grouped nodes, in the order given."""

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "members": list(self.members)}


def _as_supernode(item: Any, where: str) -> Supernode:
    if isinstance(item, Supernode):
        return item
    if isinstance(item, dict) and isinstance(item.get("name"), str) and isinstance(item.get("members"), list):
        name, members = item["name"], item["members"]
    elif isinstance(item, (tuple, list)) and len(item) == 2 and isinstance(item[0], str):
        name, members = item
    else:
        raise InterpError(f"{where}: a supernode is {{'name': str, 'members': [node id, ...]}} or (name, members); "
                          f"got {item!r:.80}.")
    if not all(isinstance(m, str) for m in members):
        raise InterpError(f"{where}: supernode {name!r} has a member that is not a node id string.")
    return Supernode(name, tuple(members))


def check_supernodes(graph: CircuitGraph, supernodes: Iterable[Any], where: str = "supernodes") -> list[Supernode]:
    """``supernodes`` (Supernode objects, dicts or (name, members) pairs) checked against ``graph``: every name is
    non-empty, every supernode has a member, every member is a node of the graph and in one supernode only."""
    out = [_as_supernode(item, where) for item in supernodes]
    ids = {n.id for n in graph.nodes}
    owner: dict[str, str] = {}
    for sn in out:
        if not sn.name.strip():
            raise InterpError(f"{where}: a supernode has an empty name; name every group.")
        if not sn.members:
            raise InterpError(f"{where}: supernode {sn.name!r} has no members.")
        missing = [m for m in sn.members if m not in ids]
        if missing:
            raise InterpError(f"{where}: supernode {sn.name!r} names nodes the graph does not have: "
                              f"{', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''}. Was it made on "
                              "another graph (or another pruning of it)?")
        for m in sn.members:
            if m in owner:
                raise InterpError(f"{where}: node {m} is in two supernodes ({owner[m]!r} and {sn.name!r}).")
            owner[m] = sn.name
    return out


def group_nodes(graph: CircuitGraph, supernodes: Iterable[Any], where: str = "supernodes") -> CircuitGraph:
    """A copy of ``graph`` whose grouping (``metadata["supernodes"]``) is ``supernodes``, checked by
    :func:`check_supernodes`; an empty list clears the grouping. Nodes and edges are shared, not copied."""
    checked = check_supernodes(graph, supernodes, where)
    meta = dict(graph.metadata)
    meta["supernodes"] = [sn.to_dict() for sn in checked]
    return CircuitGraph(graph.nodes, graph.edges, meta)


def supernodes_of(graph: CircuitGraph) -> list[Supernode]:
    """The graph's grouping (empty when it has none), checked against its nodes."""
    return check_supernodes(graph, graph.metadata.get("supernodes") or [], "the graph's metadata.supernodes")


class GroupedGraph(NamedTuple):
    """A graph with each supernode collapsed into one node (not a :class:`CircuitGraph`: summed edges between
    supernodes spanning several layers may run both ways)."""

    nodes: list[Node]
    """The ungrouped nodes (graph order), then one node per supernode: id ``supernode-{k}``, kind ``supernode``,
    label its name, layer the lowest of its members', position theirs when they share one, score the sum of their
    scores (None when none has one), ``attrs["members"]`` their ids."""
    edges: list[Edge]
    """One edge per (source, target, slot) after collapsing, scored with the sum of the edges it stands for
    (unscored edges count 0); edges inside one supernode are left out. Order: first appearance in the graph."""
    internal: dict[str, float]
    """Supernode id -> the sum of the scores of the edges between its members."""


def collapse_supernodes(graph: CircuitGraph, supernodes: Iterable[Any] | None = None) -> GroupedGraph:
    """``graph`` with every supernode drawn as one node (default: the graph's own grouping)."""
    groups = check_supernodes(graph, supernodes) if supernodes is not None else supernodes_of(graph)
    where = {m: f"supernode-{k}" for k, sn in enumerate(groups) for m in sn.members}
    nodes = [n for n in graph.nodes if n.id not in where]
    by_id = {n.id: n for n in graph.nodes}
    for k, sn in enumerate(groups):
        members = [by_id[m] for m in sn.members]
        scores = [m.score for m in members if m.score is not None]
        positions = {m.position for m in members}
        nodes.append(Node(f"supernode-{k}", KIND, min(m.layer for m in members),
                          position=positions.pop() if len(positions) == 1 else None, label=sn.name,
                          score=sum(scores) if scores else None, attrs={"members": list(sn.members)}))
    sums: dict[tuple[str, str, str | None], Edge] = {}
    internal = {f"supernode-{k}": 0.0 for k in range(len(groups))}
    for e in graph.edges:
        s, t = where.get(e.source, e.source), where.get(e.target, e.target)
        if s == t:
            internal[s] += e.score or 0.0
            continue
        have = sums.get((s, t, e.slot))
        if have is None:
            sums[(s, t, e.slot)] = Edge(s, t, e.slot, e.score or 0.0, e.position, e.in_circuit)
        else:
            have.score = (have.score or 0.0) + (e.score or 0.0)
            have.position = have.position if have.position == e.position else None
            have.in_circuit = bool(have.in_circuit or e.in_circuit)
    return GroupedGraph(nodes, list(sums.values()), internal)


def graph_key(graph: CircuitGraph) -> str:
    """A short fingerprint of the graph's node ids (in order): a grouping file names the graph it was made on by
    it, and the view keeps a user's unsaved grouping under it."""
    return hashlib.sha256("\n".join(n.id for n in graph.nodes).encode()).hexdigest()[:16]


class Grouping(NamedTuple):
    """A grouping file's content."""

    key: str
    """:func:`graph_key` of the graph it was made on ('' when the file does not say)."""
    title: str
    """That graph's title, for messages."""
    supernodes: list[Supernode]
    """The groups (not yet checked against a graph)."""


def save_supernodes(graph: CircuitGraph, path: str | Path, supernodes: Sequence[Any] | None = None,
                    title: str = "", source: str = "") -> Path:
    """Write a grouping file for ``graph`` (its own grouping unless ``supernodes`` is given), atomically."""
    groups = check_supernodes(graph, supernodes) if supernodes is not None else supernodes_of(graph)
    path = Path(path)
    atomic_write_json(path, {"format": FORMAT, "schema_version": SCHEMA_VERSION,
                             "graph": {"key": graph_key(graph), "title": title, "source": source},
                             "supernodes": [sn.to_dict() for sn in groups]})
    return path


def load_supernodes(path: str | Path) -> Grouping:
    """Read a grouping file (as the graph view downloads it, or :func:`save_supernodes` writes it)."""
    raw = read_json(path, "supernode grouping")
    if not isinstance(raw, dict) or raw.get("format") != FORMAT:
        raise InterpError(f"{path} is not a supernode grouping (format {FORMAT!r}); save one from the graph view "
                          "or with interp.circuits.supernodes.save_supernodes.")
    version = raw.get("schema_version")
    if not isinstance(version, int) or version > SCHEMA_VERSION:
        raise InterpError(f"{path} has schema_version {version!r}; this interp reads up to {SCHEMA_VERSION}.")
    graph = raw["graph"] if isinstance(raw.get("graph"), dict) else {}
    items = raw.get("supernodes")
    if not isinstance(items, list):
        raise InterpError(f"{path} has no list of supernodes.")
    return Grouping(str(graph.get("key") or ""), str(graph.get("title") or ""),
                    [_as_supernode(item, str(path)) for item in items])


def apply_groupings(graphs: Sequence[CircuitGraph], paths: Sequence[str | Path]) -> list[CircuitGraph]:
    """``graphs`` with the grouping of each file in ``paths`` applied to the graph it was made on (matched by
    :func:`graph_key`; InterpError when no graph, or two files, match)."""
    keys = [graph_key(g) for g in graphs]
    out = list(graphs)
    done: dict[int, str] = {}
    for path in paths:
        grouping = load_supernodes(path)
        if grouping.key not in keys:
            raise InterpError(f"{path} was saved on graph {grouping.title or grouping.key!r}, which is not among the "
                              "graphs given; pass that graph too (or apply it with group_nodes).")
        g = keys.index(grouping.key)
        if g in done:
            raise InterpError(f"{path} and {done[g]} both group graph {grouping.title or grouping.key!r}.")
        done[g] = str(path)
        out[g] = group_nodes(out[g], grouping.supernodes, str(path))
    return out
