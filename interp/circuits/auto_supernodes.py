"""Automatic supernodes: an attribution graph's feature nodes clustered by the direction they write.

**Rule.** A feature's direction is what it writes into the residual stream: its decoder row, summed over every
layer it writes to (one layer for a per-layer or skip transcoder; a cross-layer transcoder's feature writes to its
own and every later layer, and the residual stream adds those writes up). Two feature nodes are similar by the
cosine of their directions, so one feature active at several positions (cosine 1) always lands in one group.
Features are clustered per layer (default) or all layers together (``supernodes_across_layers``), by complete
linkage (scipy's hierarchical clustering) cut at cosine distance ``1 - supernode_threshold``: every two members of
a group have cosine at least ``supernode_threshold``. Groups with at least ``supernode_min_size`` nodes become
supernodes, named after their most influential member, largest total influence first. Error, token and logit nodes
are never grouped automatically. The result is a starting point: the graph view edits it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from scipy.cluster.hierarchy import fcluster, linkage
from scipy.spatial.distance import squareform

from interp.circuits.graph import CircuitGraph, Node
from interp.circuits.replacement import TranscoderSet
from interp.circuits.supernodes import Supernode
from interp.errors import InterpError


@dataclass(frozen=True)
class SupernodeConfig:
    """How feature nodes are grouped automatically (see the module docstring)."""

    supernode_threshold: float = 0.9
    """Group features whose decoder directions have cosine similarity at least this (every pair of a group), in
    (0, 1]."""
    supernodes_across_layers: bool = False
    """Cluster the features of all layers together (default: each layer's features apart)."""
    supernode_min_size: int = 2
    """The fewest feature nodes a group needs to become a supernode (2 or more)."""

    def __post_init__(self) -> None:
        if not 0.0 < self.supernode_threshold <= 1.0:
            raise InterpError(f"supernode_threshold is a cosine similarity in (0, 1]; got {self.supernode_threshold}.")
        if self.supernode_min_size < 2:
            raise InterpError(f"supernode_min_size must be at least 2; got {self.supernode_min_size}.")


@torch.no_grad()
def decoder_directions(transcoders: TranscoderSet, features: Sequence[tuple[int, int]]) -> torch.Tensor:
    """(N, d_model) fp32: what each (layer, feature index) writes into the residual stream per unit of activation,
    summed over the layers it writes to."""
    out = torch.zeros(len(features), transcoders.model.info.d_model)
    by_layer: dict[int, list[int]] = {}
    for row, (layer, _) in enumerate(features):
        by_layer.setdefault(layer, []).append(row)
    for layer, rows in by_layer.items():
        index = torch.tensor([features[r][1] for r in rows])
        for target in transcoders.targets(layer):
            out[rows] += transcoders.decoder(layer, target)[index].float().cpu()
    return out


def _clusters(directions: torch.Tensor, threshold: float) -> np.ndarray:
    """Cluster labels (1-based) of the rows of ``directions`` by complete linkage on cosine distance."""
    x = torch.nn.functional.normalize(directions.double(), dim=1)
    dist = (1.0 - x @ x.T).clamp(min=0.0).numpy()
    np.fill_diagonal(dist, 0.0)
    dist = (dist + dist.T) / 2
    Z = linkage(squareform(dist, checks=False), method="complete")
    return fcluster(Z, t=1.0 - threshold + 1e-9, criterion="distance")


def auto_supernodes(graph: CircuitGraph, transcoders: TranscoderSet,
                    cfg: SupernodeConfig | None = None) -> list[Supernode]:
    """Supernodes of ``graph``'s feature nodes by decoder-direction clusters (the module docstring's rule); pass
    them to :func:`interp.circuits.supernodes.group_nodes`. Features with a zero decoder are left alone."""
    cfg = cfg or SupernodeConfig()
    feats = [n for n in graph.nodes if n.kind == "feature" and n.feature is not None]
    missing = sorted({n.layer for n in feats} - set(transcoders.layers))
    if missing:
        raise InterpError(f"The graph has features of layers {missing}, which these transcoders do not cover; pass "
                          "the transcoders the graph was made with.")
    directions = decoder_directions(transcoders, [(n.layer, int(n.feature or 0)) for n in feats])
    alive = directions.norm(dim=1) > 0
    pools: dict[int, list[int]] = {}
    for i, n in enumerate(feats):
        if alive[i]:
            pools.setdefault(-1 if cfg.supernodes_across_layers else n.layer, []).append(i)
    groups: list[list[Node]] = []
    for rows in pools.values():
        if len(rows) < cfg.supernode_min_size:
            continue
        labels = _clusters(directions[rows], cfg.supernode_threshold)
        for label in np.unique(labels):
            members = [feats[rows[k]] for k in np.flatnonzero(labels == label)]
            if len(members) >= cfg.supernode_min_size:
                groups.append(members)
    order = {n.id: i for i, n in enumerate(graph.nodes)}
    out = []
    for members in sorted(groups, key=lambda ms: -sum(abs(m.score or 0.0) for m in ms)):
        top = max(members, key=lambda m: abs(m.score or 0.0))
        members.sort(key=lambda m: order[m.id])
        out.append(Supernode(f"{top.label or top.id} (+{len(members) - 1})", tuple(m.id for m in members)))
    return out
