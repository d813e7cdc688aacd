"""Names a package exports but imports only on first use, so that importing the package stays cheap.

``__getattr__, __dir__ = lazy_exports(__name__, {"Name": "module.path", ...}, globals())`` in a package's
``__init__``: ``package.Name`` imports ``module.path`` the first time it is read, then caches it.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any


def lazy_exports(
    package: str, exports: Mapping[str, str], namespace: dict[str, Any]
) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """The module ``__getattr__`` and ``__dir__`` of a package whose ``exports`` map each public name to the
    module that defines it (absolute, or relative to ``package`` when it starts with a dot)."""

    def getattr_(name: str) -> Any:
        if name not in exports:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        module = exports[name]
        value = getattr(importlib.import_module(module, package if module.startswith(".") else None), name)
        namespace[name] = value
        return value

    def dir_() -> list[str]:
        return sorted(set(namespace) | set(exports))

    return getattr_, dir_
