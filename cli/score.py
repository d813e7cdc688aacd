"""``interp score``: score the explanations of a run (detection, fuzzing, simulation, surprisal, embedding,
intervention), each against a random-explanation control.

Scores go into each feature's record in the feature store; a restarted run skips what is finished and
never scores a feature twice. Without an LLM, detection, fuzzing and simulation run on the n-gram
simulator (offline).
"""

from __future__ import annotations

import argparse

from cli.explain import add_common, configs, quiet_http, report


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("score", help="score explanations (detection, fuzzing, simulation ...)",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common(p)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from interp.autointerp import run_autointerp

    quiet_http(args)
    cfg, sample, llm, local = configs(args)
    summary = run_autointerp(args.features, cfg, sample, llm, local, explain_features=False, score_features=True,
                             api_key=args.api_key, progress=not args.no_progress)
    report(summary)
    return 0
