"""``interp dashboard``: build the static feature dashboard (opens offline from file://)."""

from __future__ import annotations

import argparse


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("dashboard", help="build the static feature dashboard", description=__doc__)
    p.add_argument("--features", required=True, help="feature store directory (from interp analyze)")
    p.add_argument("--out", required=True, help="site directory to write (replaced if it holds a site)")
    p.add_argument("--explanations", default=None, help="explanations JSON (feature -> text and scores)")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from interp.site.build import build_dashboard

    index = build_dashboard(args.features, args.out, args.explanations, progress=not args.no_progress)
    print(f"open file://{index.resolve()}")
    return 0
