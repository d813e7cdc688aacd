"""``interp demo``: the whole pipeline on the embedded demo model, ending with the dashboard's path."""

from __future__ import annotations

import argparse

RESUMABLE = True
"""Run again after an interruption, the job resumes (see ``cli.main``)."""


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("demo", help="cache, train, analyze and build a dashboard on the demo model",
                              description=__doc__)
    p.add_argument("--out", default="runs/demo", help="directory for every stage's output")
    p.add_argument("--n-tokens", type=int, default=None, help="tokens to cache")
    p.add_argument("--train-tokens", type=int, default=None, help="tokens to train the SAE on")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from interp.demo import DemoConfig, run_demo

    cfg = DemoConfig()
    if args.n_tokens:
        cfg = replace(cfg, n_tokens=args.n_tokens)
    if args.train_tokens:
        cfg = replace(cfg, train_tokens=args.train_tokens)
    result = run_demo(args.out, cfg, progress=not args.no_progress)
    m = result.metrics
    print(f"SAE: L0 {m.get('l0', float('nan')):.1f}, FVU {m.get('fvu', float('nan')):.3f}, "
          f"dead {m.get('dead_fraction', float('nan')):.1%}, CE loss recovered "
          f"{m.get('ce_loss_recovered', float('nan')):.3f}")
    print(f"Dashboard: {result.index_html.resolve()}")
    return 0
