"""``interp cache``: run a model over a corpus and write an activation store.

Every field of ``interp.activations.CacheConfig`` (and of its corpus, ``interp.model.CorpusConfig``) is a flag,
generated from the dataclasses; ``--corpus`` is the corpus source. Under ``torchrun`` the processes split the
shards and write one store (see docs/scaling.md).
"""

from __future__ import annotations

import argparse

from cli.config_flags import add_config_flags, config_kwargs

CONFIG = ("interp.activations.cache", "CacheConfig")
RENAME = {"corpus.source": "corpus"}

RESUMABLE = True
"""Run again after an interruption, the job resumes (see ``cli.main``)."""


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("cache", help="cache activations to a store", description=__doc__)
    p.add_argument("--out", required=True, help="store directory (resumes if it holds the same store)")
    p.add_argument("--no-progress", action="store_true")
    add_config_flags(p.add_argument_group("what to cache (CacheConfig)"), *CONFIG, rename=RENAME)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from interp.activations import CacheConfig, cache_activations
    from interp.configs import config_from_dict
    from interp.distributed import init_from_env, rank_and_world

    cfg = config_from_dict(CacheConfig, config_kwargs(args, *CONFIG), "command line")
    init_from_env(cfg.device)  # under torchrun: join the process group; ranks split the shards
    store = cache_activations(cfg, args.out, progress=not args.no_progress)
    if rank_and_world()[0] != 0:
        return 0
    print(f"{store.path}: {store.n_rows} rows x {len(store.hooks)} hooks in {len(store.shards)} shards")
    return 0
