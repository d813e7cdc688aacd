"""``interp train``: train dictionaries on an activation store, or on activations computed on the fly from a
model (``--model`` and ``--corpus`` instead of ``--store``). Under ``torchrun`` one dictionary trains with DDP
on every process, several are spread over the processes (see docs/scaling.md).

Every field of ``interp.training.TrainConfig`` is a flag (generated from the dataclass). ``--config`` reads a
JSON object of TrainConfig fields, or a list of them trained as a sweep in one pass over the data; flags
given on the command line override every entry.
"""

from __future__ import annotations

import argparse
import json
from typing import TYPE_CHECKING

from cli.config_flags import add_config_flags, config_kwargs

if TYPE_CHECKING:
    from interp.activations import ModelSource

CONFIG = ("interp.training.config", "TrainConfig")

RESUMABLE = True
"""Run again after an interruption, the job resumes (see ``cli.main``)."""


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    from interp.dictionaries import REGISTRY

    p = subparsers.add_parser("train", help="train a sparse dictionary on a store", description=__doc__)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--store", help="activation store directory (from interp cache)")
    src.add_argument("--model", help="compute activations on the fly from this model (demo, a local HF "
                     "directory or a hub name) instead of reading a store; needs --hook")
    p.add_argument("--corpus", default="stdlib:train", help="with --model: corpus source (see interp.model.corpus)")
    p.add_argument("--ctx-len", type=int, default=128, help="with --model: tokens per context")
    p.add_argument("--model-batch", type=int, default=32, help="with --model: contexts per forward pass")
    p.add_argument("--out", required=True, help="output directory (rerun the same command to resume)")
    p.add_argument("--config", help="JSON file of TrainConfig fields, or a list of them to train a sweep in one "
                   "pass over the data (give each a distinct 'name'); flags override every entry")
    p.add_argument("--param", action="append", default=[], metavar="NAME=JSON",
                   help="architecture parameter, e.g. --param l1_coeff=5.0 (repeatable)")
    p.add_argument("--no-progress", action="store_true")
    add_config_flags(p.add_argument_group("training (TrainConfig; flags override --config)"), *CONFIG,
                     overrides=True, choices={"architecture": sorted(REGISTRY)}, aliases={"k": ["-k"]})
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from interp.distributed import init_from_env, rank_and_world
    from interp.training import load_train_configs, train_dictionary

    overrides = {**config_kwargs(args, *CONFIG), "params": parse_params(args.param)}
    cfgs = load_train_configs(args.config, overrides)
    init_from_env(cfgs[0].device)  # under torchrun: join the process group
    source = args.store if args.store else _model_source(args, cfgs)
    result = train_dictionary(cfgs, source, args.out, progress=not args.no_progress)
    if rank_and_world()[0] != 0:
        return 0
    for path in result.dictionaries:
        m = result.metrics[path.name]
        print(
            f"{path}: L0 {m['l0']:.1f}  FVU {m['fvu']:.4f}  dead {m['dead_fraction']:.1%}  "
            f"{m['tokens_per_s']:.0f} tok/s"
        )
    return 0


def parse_params(items: list[str]) -> dict[str, object]:
    """``NAME=JSON`` items as a dict; a value that is not JSON stays a string."""
    params: dict[str, object] = {}
    for item in items:
        name, _, value = item.partition("=")
        try:
            params[name] = json.loads(value)
        except json.JSONDecodeError:
            params[name] = value
    return params


def _model_source(args: argparse.Namespace, cfgs: list) -> ModelSource:
    from interp.activations import ModelSource
    from interp.errors import InterpError

    if not all(c.hook for c in cfgs):
        raise InterpError("--model computes activations on the fly and needs --hook (e.g. blocks.0.hook_resid_post).")
    hooks = sorted({h for c in cfgs for h in (c.hook, c.hook_out) if h})
    return ModelSource(args.model, hooks, args.corpus, ctx_len=args.ctx_len, batch_contexts=args.model_batch,
                       device=cfgs[0].device)
