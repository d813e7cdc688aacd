"""``interp zoo train``: train the embedded demo model (see ``interp.zoo``).

The flags are generated from ``ZooConfig``: one flag per field, with the field's docstring as help,
so the dataclass is the single description of the recipe.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import inspect
import types
import typing
from typing import Any, Literal


def _field_docs(cls: type) -> dict[str, str]:
    """The docstring written under each field of a dataclass, by field name."""
    try:
        tree = ast.parse(inspect.getsource(cls))
    except (OSError, TypeError):
        return {}
    docs: dict[str, str] = {}
    body = tree.body[0].body  # type: ignore[attr-defined]
    for node, following in zip(body, body[1:]):
        if (
            isinstance(node, ast.AnnAssign)
            and isinstance(node.target, ast.Name)
            and isinstance(following, ast.Expr)
            and isinstance(following.value, ast.Constant)
            and isinstance(following.value.value, str)
        ):
            docs[node.target.id] = " ".join(following.value.value.split())
    return docs


def _flag_kwargs(hint: Any) -> dict[str, Any]:
    """argparse keyword arguments (``type`` or ``choices``) for a field's type hint."""
    args = typing.get_args(hint)
    if typing.get_origin(hint) is Literal:
        return {"choices": list(args)}
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        inner = next(a for a in args if a is not type(None))
        return {"type": lambda text: None if text.lower() == "none" else inner(text)}
    return {"type": hint}


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Add ``zoo`` with its ``train`` subcommand: ``--out`` plus one flag per ``ZooConfig`` field."""
    from interp.zoo.recipe import ZooConfig  # light: the recipe's heavy work happens only in train_demo

    zoo = subparsers.add_parser("zoo", help="the embedded demo model")
    commands = zoo.add_subparsers(dest="zoo_command", required=True)
    train = commands.add_parser(
        "train",
        help="train the demo model on the Python standard library's source",
        description="Train the demo model. With no flags other than --out it reproduces the shipped "
        "checkpoint (interp/zoo/demo).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    train.add_argument("--out", required=True, help="directory to write the checkpoint to (replaced)")
    docs, hints = _field_docs(ZooConfig), typing.get_type_hints(ZooConfig)
    for field in dataclasses.fields(ZooConfig):
        train.add_argument(
            f"--{field.name.replace('_', '-')}",
            dest=field.name,
            default=field.default,
            help=docs.get(field.name, ""),
            **_flag_kwargs(hints[field.name]),
        )


def run(args: argparse.Namespace) -> int:
    """Run ``interp zoo train`` from parsed ``args``; returns the process exit code."""
    import logging

    from interp.zoo import ZooConfig, train_demo

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    cfg = ZooConfig(**{f.name: getattr(args, f.name) for f in dataclasses.fields(ZooConfig)})
    card = train_demo(cfg, args.out)
    best = card["best_induction_head"]
    print(
        f"wrote {args.out}: {card['parameter_count']:,} parameters, {card['training_tokens']:,} tokens, "
        f"held-out loss {card['heldout_loss']:.3f} (unigram {card['unigram_loss']:.3f}), "
        f"best induction head L{best['layer']}H{best['head']} = {best['score']:.3f}, "
        f"{card['wall_time_s']:.0f} s"
    )
    return 0
