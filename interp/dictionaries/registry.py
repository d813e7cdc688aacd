"""The registry of dictionary architectures: the single source of truth for the CLI, loading, docs and tests.

Adding an architecture is one module defining a :class:`~interp.dictionaries.base.Dictionary` subclass that
calls :func:`register`, plus one import line in ``interp/dictionaries/__init__.py``.
"""

from __future__ import annotations

import copy
from dataclasses import fields
from typing import Any

from interp.dictionaries.base import Dictionary, DictionaryConfig
from interp.errors import InterpError, close_matches

REGISTRY: dict[str, type[Dictionary]] = {}
"""Architecture name -> class. The single source of truth for the CLI, loading, docs and tests."""


PRESETS: dict[str, dict[str, Any]] = {}
"""Architecture name -> params that name fixes (several names can share one class)."""


DESCRIPTIONS: dict[str, str] = {}
"""Architecture name -> one-line description (docs tables, ``--help``)."""


def register(
    name: str,
    cls: type[Dictionary] | None = None,
    *,
    preset: dict[str, Any] | None = None,
    description: str = "",
) -> Any:
    """Register ``cls`` under ``name``: ``@register("topk")`` or ``register("x", Cls, preset=...)``."""

    def add(c: type[Dictionary]) -> type[Dictionary]:
        if name in REGISTRY and REGISTRY[name] is not c:
            raise InterpError(f"Architecture {name!r} is already registered to {REGISTRY[name].__name__}.")
        REGISTRY[name] = c
        PRESETS[name] = dict(preset or {})
        DESCRIPTIONS[name] = description or (c.__doc__ or "").strip().splitlines()[0]
        return c

    return add(cls) if cls is not None else add


def resolve_params(architecture: str, params: dict[str, Any]) -> dict[str, Any]:
    """Registered defaults, then the preset, then ``params``; unknown names raise InterpError."""
    cls = lookup(architecture)
    unknown = sorted(set(params) - set(cls.param_defaults))
    if unknown:
        raise InterpError(
            f"Unknown parameter(s) {', '.join(unknown)} for architecture {architecture!r}; "
            f"it takes: {', '.join(sorted(cls.param_defaults)) or 'none'}."
        )
    return {**copy.deepcopy(cls.param_defaults), **PRESETS[architecture], **params}


def lookup(architecture: str) -> type[Dictionary]:
    if architecture not in REGISTRY:
        near = close_matches(architecture, REGISTRY)
        raise InterpError(
            f"Unknown architecture {architecture!r}. Registered: {', '.join(sorted(REGISTRY))}."
            + (f" Did you mean {near[0]!r}?" if near else "")
        )
    return REGISTRY[architecture]


_CFG_KEYS = {f.name for f in fields(DictionaryConfig)} - {"architecture", "d_in", "d_sae", "params"}


def create(architecture: str, d_in: int, d_sae: int, **params: Any) -> Dictionary:
    """A freshly initialised dictionary. Keyword arguments that are ``DictionaryConfig`` fields
    (``d_out``, ``hook_in``, ``normalization`` ...) go to the config; the rest are architecture params."""
    cfg_kw = {k: params.pop(k) for k in list(params) if k in _CFG_KEYS}
    cfg = DictionaryConfig(
        architecture, int(d_in), int(d_sae), params=resolve_params(architecture, params), **cfg_kw
    )
    return lookup(architecture)(cfg)
