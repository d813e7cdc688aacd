"""``interp circuit attribution-graph``: the attribution graph of one prompt through transcoders (Ameisen et al.
2025, circuit-tracer): direct effects between active features, error nodes, embeddings and the top logits in the
local replacement model, pruned by influence; writes ``graph.json`` (interp's graph format) and, with
``--circuit-tracer``, the JSON that circuit-tracer's viewer and Neuronpedia open (``<slug>.json`` and
``graph-metadata.json``).

    interp circuit attribution-graph --model demo --transcoders runs/demo/dicts/clt \\
        --prompt "def add(a, b):" --max-feature-nodes 512 --out runs/graph --circuit-tracer

The flags of ``interp.circuits.graph_api.AttributionGraphConfig`` are generated from the dataclass; the ones it
shares with ``transcoder-paths`` (``--prompt``) are that command's flags.
"""

from __future__ import annotations

import argparse

from cli._transcoders import load_inputs
from cli.config_flags import add_config_flags

CONFIG = ("interp.circuits.graph_api", "AttributionGraphConfig")
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


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from interp.circuits.graph_api import attribution_graph, save_attribution_graph

    cfg, model, transcoders = load_inputs(args, CONFIG, "attribution-graph")
    result = attribution_graph(model, transcoders, cfg)
    if args.qk:
        from interp.circuits.qk import qk_attribution, qk_metadata

        result.graph.metadata["qk"] = qk_metadata(qk_attribution(model, result.trace, *args.qk))
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
