"""``interp dashboard``: build the static site (opens offline from file://) for a feature store, circuit graphs,
or both.

    interp dashboard --features runs/features --out runs/site
    interp dashboard --graphs runs/compare --out runs/circuits-site            # graphs alone
    interp dashboard --features runs/features --graphs runs/eap/graph.json --out runs/site
    interp dashboard --features runs/tc1-features --graphs runs/graph/graph.json --out runs/site \\
        --supernodes ~/Downloads/supernodes-KEY.json     # with a grouping saved from the graph view
    interp dashboard --features runs/tc0-features runs/tc1-features --graphs runs/graph --out runs/site
        # per-layer transcoders: every layer's feature nodes link to their store's pages (stores/<k>/ after the first)
"""

from __future__ import annotations

import argparse


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("dashboard", help="build the static dashboard (features and/or circuit graphs)",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--features", nargs="+", default=None, metavar="FEATURES",
                   help="feature store directory (from interp analyze); several (e.g. one per layer's transcoder) "
                   "make one site in which every store's features link from the graphs; the first is the main one")
    p.add_argument("--graphs", nargs="+", default=[], metavar="PATH",
                   help="circuit graph JSON files (from interp circuit), or directories searched for them")
    p.add_argument("--graph-edges", type=int, default=5000,
                   help="edges each graph page keeps, the strongest by |score| (default 5000)")
    p.add_argument("--supernodes", nargs="+", default=[], metavar="FILE",
                   help="supernode groupings saved from the graph view ('Save grouping'); each is shown on the graph "
                   "it was made on, which must be among --graphs")
    p.add_argument("--out", required=True, help="site directory to write (replaced if it holds a site)")
    p.add_argument("--explanations", default=None, help="explanations JSON (feature -> text and scores)")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from interp.site.build import build_dashboard

    index = build_dashboard(args.features, args.out, args.explanations, graphs=args.graphs,
                            graph_edges=args.graph_edges, supernodes=args.supernodes,
                            progress=not args.no_progress)
    print(f"open file://{index.resolve()}")
    return 0
