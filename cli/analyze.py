"""``interp analyze``: per-feature statistics and examples of a dictionary over an activation store."""

from __future__ import annotations

import argparse


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("analyze", help="compute feature statistics and examples", description=__doc__)
    p.add_argument("--dictionary", required=True, help="dictionary directory (cfg.json + weights)")
    p.add_argument("--store", required=True, help="activation store directory (from interp cache)")
    p.add_argument("--out", required=True, help="feature store directory to write")
    p.add_argument(
        "--model", default=None, help="model for token strings and W_U (default: the store's model)"
    )
    p.add_argument("--hook", default=None, help="store hook to read (default: the dictionary's hook_in)")
    p.add_argument("--n-top", type=int, default=20, help="top-activating contexts per feature")
    p.add_argument("--n-quantiles", type=int, default=10, help="activation bands for quantile examples")
    p.add_argument("--per-quantile", type=int, default=3, help="examples per band")
    p.add_argument(
        "--quantile-pool", type=int, default=200, help="uniform sample of firing contexts per feature"
    )
    p.add_argument("--n-random", type=int, default=10, help="non-activating contexts per feature")
    p.add_argument("--window", type=int, default=32, help="tokens per example window")
    p.add_argument("--n-logits", type=int, default=10, help="promoted/suppressed tokens per feature")
    p.add_argument("--n-neighbours", type=int, default=10, help="neighbours per feature")
    p.add_argument("--cooc-rows", type=int, default=8192, help="rows sampled for co-occurrence")
    p.add_argument("--chunk-rows", type=int, default=4096, help="rows encoded at once")
    p.add_argument("--max-rows", type=int, default=None, help="analyse only the first rows of the store")
    p.add_argument("--seed", type=int, default=0, help="seed of the example sampling")
    p.add_argument("--device", default="cpu")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from interp.dictionaries import load_dictionary
    from interp.features import AnalyzeConfig, analyze_features, load_feature_store

    cfg = AnalyzeConfig(
        n_top=args.n_top,
        n_quantiles=args.n_quantiles,
        per_quantile=args.per_quantile,
        quantile_pool=args.quantile_pool,
        n_random=args.n_random,
        window=args.window,
        n_logits=args.n_logits,
        n_neighbours=args.n_neighbours,
        cooc_rows=args.cooc_rows,
        chunk_rows=args.chunk_rows,
        max_rows=args.max_rows,
        seed=args.seed,
        device=args.device,
    )
    dictionary = load_dictionary(args.dictionary).to(args.device).eval()
    model = None
    if args.model:
        from interp.models import load_model

        model = load_model(args.model)
    out = analyze_features(
        dictionary,
        args.store,
        args.out,
        cfg,
        model,
        dictionary_path=str(args.dictionary),
        hook=args.hook,
        progress=not args.no_progress,
    )
    fs = load_feature_store(out)
    alive = int((fs.tensors["count"] > 0).sum())
    print(f"{out}: {fs.n_features} features ({alive} alive) over {fs.manifest['n_rows']} rows")
    return 0
