"""``interp analyze``: per-feature statistics and examples of a dictionary over an activation store.

Every field of ``interp.features.AnalyzeConfig`` is a flag (generated from the dataclass: name, type,
default and the docstring under the field as help).
"""

from __future__ import annotations

import argparse

from cli.config_flags import add_config_flags, config_kwargs

CONFIG = ("interp.features.config", "AnalyzeConfig")


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("analyze", help="compute feature statistics and examples", description=__doc__)
    p.add_argument("--dictionary", required=True, help="dictionary directory (cfg.json + weights)")
    p.add_argument("--store", required=True, help="activation store directory (from interp cache)")
    p.add_argument("--out", required=True, help="feature store directory to write")
    p.add_argument(
        "--model", default=None, help="model for token strings and W_U (default: the store's model)"
    )
    p.add_argument("--hook", default=None, help="store hook to read (default: the dictionary's hook_in)")
    p.add_argument("--no-progress", action="store_true")
    add_config_flags(p.add_argument_group("analysis (AnalyzeConfig)"), *CONFIG)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from interp.dictionaries import load_dictionary
    from interp.features import AnalyzeConfig, analyze_features, load_feature_store

    cfg = AnalyzeConfig(**config_kwargs(args, *CONFIG))
    dictionary = load_dictionary(args.dictionary).to(cfg.device).eval()
    model = None
    if args.model:
        from interp.model.model import load_model

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
