"""Command-line flags generated from a config dataclass, so the dataclass is the only place a field's
name, type, default and help are written.

The dataclass is read from its module's *source* with ``ast`` (its module is not imported), which keeps
``interp --help`` fast when the config lives next to heavy code. Supported field types: ``int``,
``float``, ``str``, ``bool``, ``Literal[...]``, ``X | None`` of those, ``tuple[X, ...]`` (one or more
values) and ``tuple[X, X]`` (exactly two), and a nested config dataclass given as
``field(default_factory=Nested)`` (its fields become flags of their own, see ``rename``). Fields whose
default is ``field(default_factory=dict)`` (free-form mappings) get no flag: a command adds its own.

The parsed flags come back from :func:`config_kwargs` as a dict of field values (nested configs as
nested dicts), which :func:`interp.configs.config_from_dict` turns into the config.
"""

from __future__ import annotations

import argparse
import ast
import importlib.util
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

_TYPES: dict[str, type] = {"int": int, "float": float, "str": str, "bool": bool}
_NESTED = "."  # separates a nested config's field name from its parent's in argparse dests


class ConfigField(NamedTuple):
    """One field of a config dataclass as written in its source."""

    name: str
    """Field name; the flag is ``--`` plus the name with dashes."""
    annotation: str
    """The annotation's source text, e.g. ``int | None``."""
    default: Any
    """The literal default value (None for a nested config or a free-form mapping)."""
    doc: str
    """The docstring under the field, whitespace collapsed ('' if none)."""
    nested: tuple[str, str] | None = None
    """(module, class name) of a nested config dataclass, else None."""


def _source_path(module: str) -> Path:
    """The source file of ``module``, found without importing it or its parent packages."""
    top, _, rest = module.partition(".")
    spec = importlib.util.find_spec(top)
    if spec is None or spec.origin is None:
        raise ImportError(f"Cannot find the source of {module}.")
    base = Path(spec.origin).parent
    path = base.joinpath(*rest.split(".")) if rest else base
    return path / "__init__.py" if path.is_dir() else path.with_suffix(".py")


def _factory(value: ast.expr) -> str | None:
    """The name passed as ``default_factory`` in ``field(default_factory=X)``, else None."""
    if isinstance(value, ast.Call) and getattr(value.func, "id", None) == "field":
        for kw in value.keywords:
            if kw.arg == "default_factory" and isinstance(kw.value, ast.Name):
                return kw.value.id
    return None


def _imported_from(tree: ast.Module, name: str, module: str) -> str:
    """The module a name is imported from in ``tree`` (``module`` itself when defined there)."""
    for node in tree.body:
        if isinstance(node, ast.ImportFrom) and any(a.name == name for a in node.names) and node.module:
            return node.module
    return module


def config_fields(module: str, class_name: str, skip: Sequence[str] = ()) -> list[ConfigField]:
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
        annotation, factory = ast.unparse(node.annotation), _factory(node.value)
        if factory in ("dict", "list"):
            continue  # free-form: the command gives it a flag of its own
        if factory is not None:
            nested = (_imported_from(tree, factory, module), factory)
            fields.append(ConfigField(node.target.id, annotation, None, doc, nested))
        else:
            fields.append(ConfigField(node.target.id, annotation, ast.literal_eval(node.value), doc))
    return fields


def _flag_kwargs(f: ConfigField) -> dict[str, Any]:
    parts = [p.strip() for p in f.annotation.split("|")]
    optional = "None" in parts
    names = [p for p in parts if p != "None"]
    if len(names) != 1:
        raise ValueError(f"Field {f.name}: cannot make a flag for type {f.annotation}.")
    name = names[0]
    if name.startswith("Literal["):
        values = list(ast.literal_eval(name[len("Literal") :]))
        if optional:
            return {"choices": [*values, None], "type": lambda text: None if text.lower() == "none" else text}
        return {"choices": values}
    if name.startswith("tuple[") and name.endswith("]"):
        items = [p.strip() for p in name[len("tuple[") : -1].split(",")]
        if items[-1] == "...":
            return {"nargs": "+", "type": _TYPES[items[0]], "metavar": items[0].upper()}
        if len(set(items)) == 1 and items[0] in _TYPES:
            return {"nargs": len(items), "type": _TYPES[items[0]], "metavar": items[0].upper()}
        raise ValueError(f"Field {f.name}: cannot make a flag for type {f.annotation}.")
    if name not in _TYPES:
        raise ValueError(f"Field {f.name}: cannot make a flag for type {f.annotation}.")
    kind = _TYPES[name]
    if kind is bool:
        return {"action": argparse.BooleanOptionalAction}
    if optional:
        return {"type": lambda text: None if text.lower() == "none" else kind(text), "metavar": name.upper()}
    return {"type": kind}


def add_config_flags(
    parser: argparse._ActionsContainer,
    module: str,
    class_name: str,
    skip: Sequence[str] = (),
    *,
    overrides: bool = False,
    rename: Mapping[str, str] | None = None,
    choices: Mapping[str, Sequence[str]] | None = None,
    aliases: Mapping[str, Sequence[str]] | None = None,
) -> list[str]:
    """Add one ``--field-name`` flag per field (default and help from the source); returns the dests.

    ``overrides``: a flag not given leaves its field out of :func:`config_kwargs` (for flags that override
    a config file), instead of giving the dataclass default. ``rename`` maps a nested field's
    ``parent.child`` name to the flag name it gets (default: the child's own name). ``choices`` and
    ``aliases`` (extra option strings, e.g. ``-k``) are keyed by field name.
    """
    dests = []
    for f in config_fields(module, class_name, skip):
        if f.nested is not None:
            inner = {k.split(_NESTED, 1)[1]: v for k, v in (rename or {}).items() if k.startswith(f.name + _NESTED)}
            for dest in add_config_flags(parser, *f.nested, overrides=overrides, rename=inner):
                dests.append(f"{f.name}{_NESTED}{dest}")
                action = next(a for a in parser._actions if a.dest == dest)
                if action.metavar is None and action.nargs != 0:
                    action.metavar = dest.upper()  # argparse would show the dotted dest
                action.dest = dests[-1]
            continue
        flag = (rename or {}).get(f.name, f.name).replace("_", "-")
        default = "" if f.default is None else f" (default: {f.default})"
        kwargs = _flag_kwargs(f)
        if choices and f.name in choices:
            kwargs["choices"] = list(choices[f.name])
        parser.add_argument(
            f"--{flag}",
            *(aliases or {}).get(f.name, ()),
            dest=f.name,
            default=argparse.SUPPRESS if overrides else f.default,
            help=f.doc + default,
            **kwargs,
        )
        dests.append(f.name)
    return dests


def config_kwargs(
    args: argparse.Namespace, module: str, class_name: str, skip: Sequence[str] = ()
) -> dict[str, Any]:
    """The parsed values of the flags that :func:`add_config_flags` added, as field values (nested configs
    as dicts, tuples as tuples); flags added with ``overrides`` and not given are left out."""
    out: dict[str, Any] = {}
    for f in config_fields(module, class_name, skip):
        if f.nested is not None:
            inner = {k.split(_NESTED, 1)[1]: v for k, v in vars(args).items() if k.startswith(f.name + _NESTED)}
            if inner:
                out[f.name] = inner
        elif hasattr(args, f.name):
            value = getattr(args, f.name)
            out[f.name] = tuple(value) if isinstance(value, list) else value
    return out
