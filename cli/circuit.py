"""``interp circuit METHOD``: find the circuit of a task with one method (or ``compare`` them all) and write its
graph JSON. Every field of ``interp.circuits.CircuitConfig`` is a flag, generated from the dataclass.
``transcoder-paths`` explains one prompt through transcoders instead (flags of ``TranscoderPathsConfig``), and
``attribution-graph`` builds its attribution graph (flags of ``AttributionGraphConfig``).

    interp circuit eap --model demo --task induction --out runs/circuit
    interp circuit compare --model demo --task induction --truth-nodes L0H1,L1H2 --out runs/compare
    interp circuit transcoder-paths --model demo --transcoders runs/dicts/clt --prompt "def f(x):" --out runs/paths
    interp circuit attribution-graph --model demo --transcoders runs/dicts/clt --prompt "def f(x):" --out runs/graph
"""

from __future__ import annotations

import argparse
from typing import Any

from cli import _attribution_graph as attribution_graph
from cli import _transcoder_paths as transcoder_paths
from cli.config_flags import add_config_flags, config_kwargs

CONFIG = ("interp.circuits.config", "CircuitConfig")


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    from interp.circuits.config import METHODS

    p = subparsers.add_parser("circuit", help="find a circuit (patching, EAP, EAP-IG, ACDC, discrete SAE)",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("method", choices=[*METHODS, "compare", "transcoder-paths", "attribution-graph"],
                   help="the method, 'compare' to run every method, or 'transcoder-paths' / 'attribution-graph' (one "
                   "prompt, through transcoders)")
    p.add_argument("--model", required=True, help="demo, a local Hugging Face directory, or a hub name")
    p.add_argument("--out", required=True, help="output directory (graph.json, or the comparison files)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--truth-nodes", help="ground-truth nodes for ROC AUC, comma-separated (L1H2 or a1.h2, MLP0); "
                   "'card' reads the model's zoo_card.json (heads with previous-token or induction score >= 0.3; "
                   "'card:0.5' sets the threshold), "
                   "'literature' the published circuit of the task")
    p.add_argument("--truth-edges", help="ground-truth edges, comma-separated SOURCE>TARGET[:q|k|v] "
                   "(e.g. L0H1>L1H2:k,L1H2>logits)")
    p.add_argument("--dictionary", help="discrete-sae: reuse this trained dictionary instead of training one")
    p.add_argument("--no-reference", action="store_true", help="compare: skip patching every edge alone (the "
                   "reference each edge method's ranking is compared with; one forward per edge)")
    add_config_flags(p.add_argument_group("task and method settings (CircuitConfig)"), *CONFIG)
    transcoder_paths.add_arguments(p)
    attribution_graph.add_arguments(p)
    p.set_defaults(run=run)


def _truth(args: argparse.Namespace, model: Any, task: str) -> Any:
    from interp.circuits.evaluate import ground_truth
    from interp.circuits.truth import card_ground_truth, card_path, literature_ground_truth
    from interp.errors import InterpError

    if not args.truth_nodes:
        return None
    name, colon, threshold = args.truth_nodes.partition(":")
    if name == "card":
        if not colon:
            return card_ground_truth(card_path(args.model))
        try:
            at = float(threshold)
        except ValueError:
            raise InterpError(f"--truth-nodes card:THRESHOLD needs a number, got {threshold!r}.") from None
        return card_ground_truth(card_path(args.model), threshold=at)
    if args.truth_nodes == "literature":
        return literature_ground_truth(task, model)
    edges = None
    if args.truth_edges:
        edges = []
        for item in args.truth_edges.split(","):
            pair, _, slot = item.partition(":")
            source, _, target = pair.partition(">")
            edges.append((source.strip(), target.strip(), slot.strip() or None))
    return ground_truth([n for n in args.truth_nodes.split(",") if n.strip()], edges, name="command line")


def run(args: argparse.Namespace) -> int:
    if args.method == "transcoder-paths":
        return transcoder_paths.run(args)
    if args.method == "attribution-graph":
        return attribution_graph.run(args)
    from pathlib import Path

    from interp.circuits.config import CircuitConfig
    from interp.configs import config_from_dict
    from interp.model import load_model

    cfg = config_from_dict(CircuitConfig, config_kwargs(args, *CONFIG), "command line")
    model = load_model(args.model, device=args.device)
    truth = _truth(args, model, cfg.task)
    out = Path(args.out)
    if args.method == "compare":
        from interp.circuits.compare import compare_methods, comparison_table, write_comparison

        comparison = compare_methods(model, cfg.task, config=cfg, truth=truth, reference=not args.no_reference)
        write_comparison(comparison, out, title=f"{cfg.task} on {args.model}")
        print(comparison_table(comparison.rows), end="")
        print(f"{out / 'comparison.html'}")
        return 0
    from interp.circuits.api import find_circuit
    from interp.circuits.graph import save_graph

    graph = find_circuit(model, cfg.task, args.method, cfg, truth=truth, dictionary=args.dictionary,
                         out_dir=out if args.method == "discrete-sae" and not args.dictionary else None)
    path = save_graph(graph, out / "graph.json")
    meta = graph.metadata
    print(f"{args.method} on {cfg.task}: {meta['runtime_s']:.2f} s, peak {meta['peak_memory_mb']:.0f} MiB, "
          f"metric {meta['metric_clean']:.3f} clean / {meta['metric_corrupted']:.3f} corrupted")
    for edge in graph.top_edges(10):
        print(f"  {edge.key:32s} {edge.score:+.4f}")
    ev = meta.get("evaluation")
    if ev:
        auc = "" if ev.get("node_auc") is None else f"node AUC {ev['node_auc']:.3f}  "
        auc += "" if ev.get("edge_auc") is None else f"edge AUC {ev['edge_auc']:.3f}  "
        print(f"  {auc}CPR {ev['faithfulness']['cpr']:.3f}  CMD {ev['faithfulness']['cmd']:.3f}")
    print(path)
    return 0
