"""``interp zoo train``: train the embedded demo model (see ``interp.zoo``).

The flags are generated from ``ZooConfig``: one flag per field, with the field's docstring as help,
so the dataclass is the single description of the recipe.
"""

from __future__ import annotations

import argparse

from cli.config_flags import add_config_flags, config_kwargs

_RECIPE = ("interp.zoo.config", "ZooConfig")


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Add ``zoo`` with its ``train`` subcommand: ``--out`` plus one flag per ``ZooConfig`` field."""
    zoo = subparsers.add_parser("zoo", help="the embedded demo model")
    commands = zoo.add_subparsers(dest="zoo_command", required=True)
    train = commands.add_parser(
        "train",
        help="train the demo model on the Python standard library's source",
        description="Train a demo model with the zoo recipe (a small Llama on the stdlib source, see "
        "interp/zoo/config.py). The shipped checkpoint (interp/zoo/demo) is this command's output with the "
        "defaults and --num-threads 1; its zoo_card.json records that config.",
    )
    train.add_argument("--out", required=True, help="directory to write the checkpoint to (replaced)")
    add_config_flags(train, *_RECIPE)
    train.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Run ``interp zoo train`` from parsed ``args``; returns the process exit code."""
    import logging

    from interp.zoo import ZooConfig, train_demo

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    cfg = ZooConfig(**config_kwargs(args, *_RECIPE))
    card = train_demo(cfg, args.out)
    prev, best = card["best_previous_token_head"], card["best_induction_head"]
    print(
        f"wrote {args.out}: {card['parameter_count']:,} parameters, {card['training_tokens']:,} tokens, "
        f"held-out loss {card['heldout_loss']:.3f} (unigram {card['unigram_loss']:.3f}), "
        f"best previous-token head L{prev['layer']}H{prev['head']} = {prev['score']:.3f}, "
        f"best induction head L{best['layer']}H{best['head']} = {best['score']:.3f}, "
        f"copying gap {card['copying_gap']['gap']:.2f} nats, {card['wall_time_s']:.0f} s"
    )
    return 0
