"""The demo corpus: the Python standard library's own ``.py`` source files, read in place.

Every machine that runs interp has this text, so the demo model can be trained again anywhere
without a download and without copying any data into the repository.

Contracts:

- Files are read from ``sysconfig.get_paths()["stdlib"]`` of the running interpreter. The corpus
  therefore depends on the Python version; ``corpus_fingerprint`` names it exactly.
- Excluded: anything under a directory named in ``EXCLUDED_DIRS`` (``site-packages``, test suites,
  IDLE, lib2to3) and files larger than ``MAX_FILE_BYTES``.
- Order is the sorted order of the POSIX relative paths, so it is the same on every run.
- The train / held-out split is a pure function of the relative path (a SHA-256 hash), about
  ``HELDOUT_FRACTION`` of the files are held out, and the two splits are disjoint.
"""

from __future__ import annotations

import hashlib
import os
import sysconfig
from collections.abc import Iterator
from pathlib import Path
from typing import Literal, get_args

from interp.errors import InterpError

Split = Literal["train", "heldout", "all"]

EXCLUDED_DIRS: frozenset[str] = frozenset(
    {"site-packages", "dist-packages", "test", "tests", "idlelib", "lib2to3", "__pycache__"}
)
"""Directory names whose files never enter the corpus, at any depth below the stdlib root."""

MAX_FILE_BYTES = 200_000
"""Files larger than this (mostly generated tables) are left out."""

HELDOUT_FRACTION = 0.05
"""Approximate fraction of files in the held-out split."""


def stdlib_root() -> Path:
    """The directory holding the running interpreter's standard library sources."""
    return Path(sysconfig.get_paths()["stdlib"])


def is_heldout(relative_path: str) -> bool:
    """Whether a file, named by its POSIX path relative to the stdlib root, is in the held-out split."""
    digest = hashlib.sha256(relative_path.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < HELDOUT_FRACTION


def _included(relative: Path, size: int) -> bool:
    return not EXCLUDED_DIRS.intersection(relative.parts[:-1]) and size <= MAX_FILE_BYTES


def stdlib_files(split: Split = "all", root: Path | None = None) -> list[Path]:
    """Absolute paths of the corpus files in ``split``, sorted by relative POSIX path.

    ``root`` defaults to :func:`stdlib_root`; tests pass a small directory instead. Raises
    ``InterpError`` for an unknown split or when no file is found.
    """
    if split not in get_args(Split):
        raise InterpError(f"unknown corpus split {split!r}; use one of {list(get_args(Split))}")
    base = stdlib_root() if root is None else Path(root)
    chosen: list[tuple[str, str]] = []
    pending = [(str(base), "")]  # (directory, its POSIX path relative to base with a trailing "/", or "")
    while pending:  # plain strings, not pathlib: listing the stdlib is on every cache job's way to its first batch
        directory, prefix = pending.pop()
        with os.scandir(directory) as entries:
            for entry in entries:
                if entry.is_dir():
                    if entry.name not in EXCLUDED_DIRS and not entry.is_symlink():  # as os.walk: no linked trees
                        pending.append((entry.path, prefix + entry.name + "/"))
                elif entry.name.endswith(".py") and entry.is_file() and entry.stat().st_size <= MAX_FILE_BYTES:
                    key = prefix + entry.name
                    if split == "all" or (split == "heldout") == is_heldout(key):
                        chosen.append((key, entry.path))
    if not chosen:
        raise InterpError(
            f"no Python source files for split {split!r} under {base}; the demo corpus is the "
            "standard library's .py files, so run interp with a Python installation that ships them"
        )
    chosen.sort()
    return [Path(path) for _, path in chosen]


def iter_stdlib_documents(split: Split = "all", root: Path | None = None) -> Iterator[str]:
    """The text of each file of :func:`stdlib_files`, in the same order; undecodable bytes are replaced."""
    for path in stdlib_files(split, root):
        yield path.read_text(encoding="utf-8", errors="replace")


def corpus_fingerprint(files: list[Path], root: Path | None = None) -> str:
    """SHA-256 over the relative paths and contents of ``files``: equal fingerprints, equal corpus."""
    base = stdlib_root() if root is None else Path(root)
    digest = hashlib.sha256()
    for path in files:
        digest.update(path.relative_to(base).as_posix().encode("utf-8") + b"\0")
        digest.update(hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()
