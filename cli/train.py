"""``interp train``: train one dictionary on an activation store, or on activations computed on the fly
from a model (``--model`` and ``--corpus`` instead of ``--store``). A config file plus flags."""

from __future__ import annotations

import argparse
import json


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
    p.add_argument("--architecture", choices=sorted(REGISTRY), help="dictionary architecture")
    p.add_argument("--hook", help="input hook (default: the store's only hook)")
    p.add_argument("--hook-out", help="target hook, for transcoders")
    p.add_argument("--expansion", type=int, help="d_sae = expansion * d_in")
    p.add_argument("--d-sae", type=int, help="number of latents (overrides --expansion)")
    p.add_argument("-k", "--k", type=int, help="active latents / steps / codes per token")
    p.add_argument(
        "--param",
        action="append",
        default=[],
        metavar="NAME=JSON",
        help="architecture parameter, e.g. --param l1_coeff=5.0 (repeatable)",
    )
    p.add_argument("--normalization", choices=["none", "scalar", "standardize"])
    p.add_argument("--n-tokens", type=int, help="training tokens")
    p.add_argument("--batch-size", type=int, help="tokens per step")
    p.add_argument("--lr", type=float, help="Adam learning rate (default: scaled by d_sae)")
    p.add_argument("--seed", type=int)
    p.add_argument("--device")
    p.add_argument("--autocast", choices=["bfloat16"], help="train under bf16 autocast (weights stay fp32)")
    p.add_argument("--checkpoint-every", type=int, help="steps between checkpoints")
    p.add_argument("--nan-policy", choices=["stop", "skip"])
    p.add_argument("--wandb-project")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from interp.errors import InterpError
    from interp.io import read_json
    from interp.training.loop import TrainConfig, train_dictionary

    loaded = read_json(args.config, "training config") if args.config else {}
    entries = loaded if isinstance(loaded, list) else [loaded]
    if not entries or not all(isinstance(e, dict) for e in entries):
        raise InterpError(f"{args.config}: a training config is a JSON object of TrainConfig fields, or a list "
                          "of them (a sweep trained in one pass over the data).")
    cfgs = []
    for entry in entries:
        fields = {**entry, **{k: getattr(args, k) for k in _FLAGS if getattr(args, k) is not None}}
        params = {**fields.pop("params", {}), **_params(args.param)}
        try:
            cfgs.append(TrainConfig(**fields, params=params))
        except TypeError as e:
            raise InterpError(f"Bad training config: {e}") from e
    source = args.store if args.store else _model_source(args, cfgs)
    result = train_dictionary(cfgs, source, args.out, progress=not args.no_progress)
    for path in result.dictionaries:
        m = result.metrics[path.name]
        print(
            f"{path}: L0 {m['l0']:.1f}  FVU {m['fvu']:.4f}  dead {m['dead_fraction']:.1%}  "
            f"{m['tokens_per_s']:.0f} tok/s"
        )
    return 0


_FLAGS = ("architecture", "hook", "hook_out", "expansion", "d_sae", "k", "normalization", "n_tokens", "batch_size",
          "lr", "seed", "device", "checkpoint_every", "nan_policy", "wandb_project", "autocast")
"""Flags that override the config file's fields (every entry of a sweep)."""


def _params(items: list[str]) -> dict[str, object]:
    params: dict[str, object] = {}
    for item in items:
        name, _, value = item.partition("=")
        try:
            params[name] = json.loads(value)
        except json.JSONDecodeError:
            params[name] = value
    return params


def _model_source(args: argparse.Namespace, cfgs: list) -> object:
    from interp.activations.live import ModelSource
    from interp.errors import InterpError

    if not all(c.hook for c in cfgs):
        raise InterpError("--model computes activations on the fly and needs --hook (e.g. blocks.0.hook_resid_post).")
    hooks = sorted({h for c in cfgs for h in (c.hook, c.hook_out) if h})
    return ModelSource(args.model, hooks, args.corpus, ctx_len=args.ctx_len, batch_contexts=args.model_batch,
                       device=cfgs[0].device)
