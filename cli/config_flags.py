"""Command-line flags generated from a config dataclass, so the dataclass is the only place a field's
name, type, default and help are written.

The dataclass is read from its module's *source* with ``ast`` (its module is not imported), which keeps
``interp --help`` fast when the config lives next to heavy code. Supported field types: ``int``,
``float``, ``str``, ``bool``, ``Literal[...]`` and ``X | None`` of those; defaults must be literals (fields
with other defaults can be skipped and given hand-written flags).
"""

from __future__ import annotations

import argparse
import ast
import importlib.util
from pathlib import Path
from typing import Any, NamedTuple

_TYPES: dict[str, type] = {"int": int, "float": float, "str": str, "bool": bool}


class ConfigField(NamedTuple):
    """One field of a config dataclass as written in its source."""

    name: str
    """Field name; the flag is ``--`` plus the name with dashes."""
    annotation: str
    """The annotation's source text, e.g. ``int | None``."""
    default: Any
    """The literal default value."""
    doc: str
    """The docstring under the field, whitespace collapsed ('' if none)."""


def _source_path(module: str) -> Path:
    """The source file of ``module``, found without importing it or its parent packages."""
    top, _, rest = module.partition(".")
    spec = importlib.util.find_spec(top)
    if spec is None or spec.origin is None:
        raise ImportError(f"Cannot find the source of {module}.")
    base = Path(spec.origin).parent
    path = base.joinpath(*rest.split(".")) if rest else base
    return path / "__init__.py" if path.is_dir() else path.with_suffix(".py")


def config_fields(module: str, class_name: str, skip: tuple[str, ...] = ()) -> list[ConfigField]:
    """The fields of dataclass ``class_name`` in ``module`` (except ``skip``), in order, read from source."""
    tree = ast.parse(_source_path(module).read_text(encoding="utf-8"))
    cls = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == class_name)
    fields = []
    for node, after in zip(cls.body, [*cls.body[1:], None]):
        if not (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)) or node.target.id in skip:
            continue
        if node.value is None:
            raise ValueError(f"{class_name}.{node.target.id} has no default; flags need one.")
        doc = ""
        if isinstance(after, ast.Expr) and isinstance(after.value, ast.Constant) and isinstance(after.value.value, str):
            doc = " ".join(after.value.value.split())
        fields.append(ConfigField(node.target.id, ast.unparse(node.annotation), ast.literal_eval(node.value), doc))
    return fields


def _flag_kwargs(f: ConfigField) -> dict[str, Any]:
    if f.annotation.startswith("Literal["):
        return {"choices": list(ast.literal_eval(f.annotation[len("Literal") :]))}
    parts = [p.strip() for p in f.annotation.split("|")]
    optional = "None" in parts
    names = [p for p in parts if p != "None"]
    if len(names) != 1 or names[0] not in _TYPES:
        raise ValueError(f"Field {f.name}: cannot make a flag for type {f.annotation}.")
    kind = _TYPES[names[0]]
    if kind is bool:
        return {"action": argparse.BooleanOptionalAction}
    if optional:
        return {"type": lambda text: None if text.lower() == "none" else kind(text), "metavar": names[0].upper()}
    return {"type": kind}


def add_config_flags(
    parser: argparse._ActionsContainer, module: str, class_name: str, skip: tuple[str, ...] = ()
) -> list[str]:
    """Add one ``--field-name`` flag per field (default and help from the source); returns the names."""
    fields = config_fields(module, class_name, skip)
    for f in fields:
        default = "" if f.default is None else f" (default: {f.default})"
        parser.add_argument(
            f"--{f.name.replace('_', '-')}", dest=f.name, default=f.default, help=f.doc + default, **_flag_kwargs(f)
        )
    return [f.name for f in fields]


def config_kwargs(
    args: argparse.Namespace, module: str, class_name: str, skip: tuple[str, ...] = ()
) -> dict[str, Any]:
    """The parsed values of the flags that :func:`add_config_flags` added, as keyword arguments."""
    return {f.name: getattr(args, f.name) for f in config_fields(module, class_name, skip)}
