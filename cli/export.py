"""``interp export``: write a feature store in other tools' formats (Neuronpedia dashboard batches)."""

from __future__ import annotations

import argparse


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("export", help="export features to other tools' formats", description=__doc__)
    p.add_argument("--features", required=True, help="feature store directory (from interp analyze)")
    p.add_argument("--neuronpedia", action="store_true", required=True, help="write Neuronpedia dashboard batches")
    p.add_argument("--out", required=True, help="directory for batch-<n>.json files")
    p.add_argument("--explanations", default=None, help="explanations JSON to include")
    p.add_argument("--model-id", default=None, help="Neuronpedia model id (default: the model's name)")
    p.add_argument("--sae-id", default=None, help="Neuronpedia source/SAE set id (default: the hook name)")
    p.add_argument("--batch-size", type=int, default=128, help="features per batch file")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from interp.formats.neuronpedia import export_neuronpedia

    files = export_neuronpedia(
        args.features,
        args.out,
        args.explanations,
        model_id=args.model_id,
        sae_id=args.sae_id,
        batch_size=args.batch_size,
    )
    print(f"wrote {len(files)} batch files to {args.out}")
    return 0
