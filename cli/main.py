"""The ``interp`` console script.

Each subcommand is one module in this package exposing ``add_parser(subparsers)`` and ``run(args) -> int``
(heavy imports happen inside ``run``). Modules are discovered, so adding a subcommand is adding a file. A module
whose job resumes when run again sets ``RESUMABLE = True``: Ctrl-C then says so.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import pkgutil
import sys

import cli


def _commands() -> list[str]:
    return sorted(m.name for m in pkgutil.iter_modules(cli.__path__)
                  if not m.name.startswith("_") and m.name not in ("main", "config_flags"))


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The full parser; with ``only``, every other subcommand is a cheap stub (its full parser may import
    torch to list, say, the registered architectures)."""
    parser = argparse.ArgumentParser(prog="interp", description="Interpretability toolkit for language models.")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in _commands():
        module = importlib.import_module(f"cli.{name}")
        if not hasattr(module, "add_parser"):
            continue
        if only is None or name == only:
            module.add_parser(sub)
        else:
            sub.add_parser(name, help=(module.__doc__ or "").strip().split("\n")[0].split(": ", 1)[-1])
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    command = next((a for a in argv if not a.startswith("-")), None)
    known = command in _commands()
    args = build_parser(only=command if known else "").parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    from interp.errors import InterpError
    from interp.progress import hide_library_bars, on_terminal

    if getattr(args, "no_progress", False) or not on_terminal():
        hide_library_bars()  # transformers' "Loading weights" and the like: hidden, or \r-junk in a log
    try:
        return int(args.run(args) or 0)
    except InterpError as e:
        print(f"interp: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        resumable = getattr(importlib.import_module(f"cli.{args.command}"), "RESUMABLE", False)
        print("interp: interrupted" + ("; run the same command again to resume." if resumable else "."),
              file=sys.stderr)
        return 130


def _exit(code: int) -> None:
    """Exit with ``code``. A ``torchrun`` worker leaves the process group, flushes its logs and output, then ends
    with ``os._exit``: C++ static destructors run at a normal exit, and torch's distributed threads can abort
    the process there ("terminate called without an active exception", SIGABRT) after all its work succeeded."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        from interp.distributed import leave

        leave()
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    sys.exit(code)


if __name__ == "__main__":
    _exit(main())
