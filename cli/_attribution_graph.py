"""``interp circuit attribution-graph``: the attribution graph of one prompt through transcoders (Ameisen et al.
2025, circuit-tracer): direct effects between active features, error nodes, embeddings and the top logits in the
local replacement model, pruned by influence; writes ``graph.json`` (interp's graph format) and, with
``--circuit-tracer``, the JSON that circuit-tracer's viewer and Neuronpedia open (``<slug>.json`` and
``graph-metadata.json``).

    interp circuit attribution-graph --model demo --transcoders runs/demo/dicts/clt \\
        --prompt "def add(a, b):" --max-feature-nodes 512 --out runs/graph --circuit-tracer

The flags of ``interp.circuits.graph_api.AttributionGraphConfig`` are generated from the dataclass; the ones it
shares with ``transcoder-paths`` (``--prompt``) are that command's flags. ``--auto-supernodes`` groups the graph's
feature nodes by decoder-direction clusters (flags of ``interp.circuits.auto_supernodes.SupernodeConfig``) as a
starting point for the graph view.
"""

from __future__ import annotations

import argparse
from typing import Any

from cli._transcoders import load_inputs
from cli.config_flags import add_config_flags, config_kwargs

CONFIG = ("interp.circuits.graph_api", "AttributionGraphConfig")
SUPERNODES = ("interp.circuits.auto_supernodes", "SupernodeConfig")
SHARED = ("prompt",)
"""Fields whose flags ``transcoder-paths`` already adds (same name, type and meaning)."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The attribution-graph arguments (``--model``, ``--out``, ``--device`` and ``--transcoders`` come from
    ``interp circuit`` and ``transcoder-paths``)."""
    group = parser.add_argument_group("attribution graph (method attribution-graph; AttributionGraphConfig)")
    group.add_argument("--circuit-tracer", action="store_true",
                       help="also write circuit-tracer's graph JSON (<slug>.json and graph-metadata.json) to --out")
    group.add_argument("--slug", help="the circuit-tracer graph's slug (default: the output directory's name)")
    group.add_argument("--qk", nargs=4, type=int, metavar=("LAYER", "HEAD", "QUERY", "KEY"),
                       help="also attribute this attention score (head HEAD of block LAYER, query position QUERY to "
                       "key position KEY) to pairs of query-side and key-side components (saved in the metadata)")
    add_config_flags(group, *CONFIG, skip=SHARED)
    auto = parser.add_argument_group("automatic supernodes (attribution-graph --auto-supernodes; SupernodeConfig)")
    auto.add_argument("--auto-supernodes", action="store_true",
                      help="group feature nodes whose decoder directions are alike into supernodes (saved in the "
                      "graph's metadata and both output formats; edit them in the graph view)")
    add_config_flags(auto, *SUPERNODES)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from interp.circuits.graph_api import attribution_graph, save_attribution_graph

    cfg, model, transcoders = load_inputs(args, CONFIG, "attribution-graph")
    grouping = _supernode_config(args) if args.auto_supernodes else None  # bad flags fail before the work
    result = attribution_graph(model, transcoders, cfg)
    if args.qk:
        from interp.circuits.qk import qk_attribution, qk_metadata

        result.graph.metadata["qk"] = qk_metadata(qk_attribution(model, result.trace, *args.qk))
    if grouping is not None:
        result = result._replace(graph=_auto_supernodes(grouping, result.graph, transcoders))
    out = Path(args.out)
    path = save_attribution_graph(result, out)
    meta = result.graph.metadata
    print(f"attribution graph: {meta['n_active_features']} active features, {meta['n_feature_rows']} feature rows, "
          f"{len(result.graph.nodes)} nodes and {len(result.graph.edges)} edges kept, {meta['runtime_s']:.2f} s")
    print(f"  replacement score {meta['replacement_score']:.3f}  completeness {meta['completeness_score']:.3f}")
    for node in sorted(result.graph.nodes, key=lambda n: -(n.score or 0.0))[:10]:
        print(f"  {node.id:24s} influence {node.score:.4f}")
    if args.qk:
        print(f"  qk {args.qk}: score {meta['qk']['score']:+.4f}; top pair {meta['qk']['top'][0]}")
    print(path)
    if args.circuit_tracer:
        from interp.formats.circuit_tracer import export_circuit_tracer

        print(export_circuit_tracer(result.graph, out, slug=args.slug or out.name))
    return 0


def _supernode_config(args: argparse.Namespace) -> Any:
    from interp.circuits.auto_supernodes import SupernodeConfig
    from interp.configs import config_from_dict

    return config_from_dict(SupernodeConfig, config_kwargs(args, *SUPERNODES), "command line")


def _auto_supernodes(cfg: Any, graph: Any, transcoders: Any) -> Any:
    from interp.circuits.auto_supernodes import auto_supernodes
    from interp.circuits.supernodes import group_nodes
    from interp.configs import config_to_dict

    grouped = group_nodes(graph, auto_supernodes(graph, transcoders, cfg))
    grouped.metadata["supernodes_config"] = config_to_dict(cfg)
    print(f"  {len(grouped.metadata['supernodes'])} supernodes (decoder cosine >= {cfg.supernode_threshold})")
    return grouped
