"""``interp eval``: evaluate a dictionary on a store (and, with --model, by splicing it into the model)."""

from __future__ import annotations

import argparse


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("eval", help="evaluate a dictionary", description=__doc__)
    p.add_argument("--dictionary", required=True, help="dictionary directory (from interp train)")
    p.add_argument("--store", required=True, help="activation store directory")
    p.add_argument("--model", help="model the store came from ('demo', a path), for CE loss recovered and KL")
    p.add_argument("--n-tokens", type=int, default=100_000, help="rows for the reconstruction metrics")
    p.add_argument("--ce-tokens", type=int, default=8192, help="tokens for the downstream metrics")
    p.add_argument(
        "--dense-threshold", type=float, default=0.1, help="firing frequency above which a latent is dense"
    )
    p.add_argument("--out", help="metrics JSON path (default: <dictionary>/eval.json)")
    p.add_argument("--device", default="cpu")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from interp.activations.store import ActivationStore
    from interp.dictionaries import load_dictionary
    from interp.io import atomic_write_json
    from interp.training.evals import evaluate

    d = load_dictionary(args.dictionary, device=args.device)
    model = None
    if args.model:
        from interp.model.model import load_model

        model = load_model(args.model, device=args.device)
    result = evaluate(
        d,
        ActivationStore(args.store),
        model=model,
        n_tokens=args.n_tokens,
        ce_tokens=args.ce_tokens,
        dense_threshold=args.dense_threshold,
    )
    metrics = result.to_dict()
    out = Path(args.out) if args.out else Path(args.dictionary) / "eval.json"
    atomic_write_json(out, metrics)
    width = max(len(k) for k in metrics)
    for key, value in metrics.items():
        if isinstance(value, float):
            print(f"{key:<{width}}  {value:.4f}")
        elif isinstance(value, int):
            print(f"{key:<{width}}  {value}")
    print(f"metrics written to {out}")
    return 0
