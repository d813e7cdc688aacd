"""Configs to and from JSON: the one conversion every stage's config file and the CLI go through.

A config is a frozen dataclass (one field per setting, a docstring under each). JSON has no tuples and
no nested types, so :func:`config_from_dict` rebuilds them from the dataclass's own annotations: lists
become tuples where the field is a tuple, objects become the nested config where the field is one, and
a key that is not a field is refused with the closest field names.
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from collections.abc import Mapping
from typing import Any, TypeVar

from interp.errors import InterpError, close_matches

C = TypeVar("C")


def config_from_dict(cls: type[C], data: Mapping[str, Any], what: str = "config") -> C:
    """``cls(**data)`` with tuple and nested-config fields rebuilt; unknown keys raise InterpError."""
    if not isinstance(data, Mapping):
        raise InterpError(f"The {what} must be a JSON object of {cls.__name__} fields, got {type(data).__name__}.")
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = [k for k in data if k not in fields]
    if unknown:
        near = close_matches(unknown[0], fields)
        raise InterpError(
            f"Unknown {cls.__name__} field {unknown[0]!r} in the {what}."
            + (f" Did you mean {near[0]!r}?" if near else "")
            + f" Fields: {', '.join(fields)}."
        )
    hints = typing.get_type_hints(cls)
    kwargs = {k: _convert(hints[k], v, f"{what} field {k!r}") for k, v in data.items()}
    try:
        return cls(**kwargs)
    except TypeError as e:
        raise InterpError(f"Bad {what}: {e}") from e


def config_to_dict(cfg: Any) -> dict[str, Any]:
    """The JSON-ready dict of a config (nested configs as objects, tuples as lists)."""
    return json.loads(json.dumps(dataclasses.asdict(cfg), default=str))


def _convert(annotation: Any, value: Any, what: str) -> Any:
    if value is None:
        return None
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        options = [a for a in typing.get_args(annotation) if a is not type(None)]
        return _convert(options[0], value, what) if len(options) == 1 else value
    if dataclasses.is_dataclass(annotation) and isinstance(annotation, type):
        if isinstance(value, annotation):
            return value
        if isinstance(value, str) and "source" in {f.name for f in dataclasses.fields(annotation)}:
            return typing.cast(Any, annotation)(source=value)  # a corpus given as its source string
        return config_from_dict(annotation, value, what)
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise InterpError(f"The {what} must be a list, got {value!r}.")
        args = typing.get_args(annotation)
        item = args[0] if args else Any
        return tuple(_convert(item, v, what) if item is not Any else v for v in value)
    return value
