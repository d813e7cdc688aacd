"""What the transcoder-based circuit commands (``transcoder-paths``, ``attribution-graph``) share: their config
from the flags, the model, and the transcoders loaded for that model."""

from __future__ import annotations

import argparse
from typing import Any

from cli.config_flags import config_kwargs


def load_inputs(args: argparse.Namespace, config: tuple[str, str], command: str) -> tuple[Any, Any, Any]:
    """``(cfg, model, transcoders)`` for ``command``; ``config`` is the (module, class) of its config dataclass."""
    import importlib

    from interp.circuits.replacement import TranscoderSet
    from interp.configs import config_from_dict
    from interp.errors import InterpError
    from interp.model import load_model

    if not args.transcoders:
        raise InterpError(f"{command} needs --transcoders DIR [DIR ...] (per-layer transcoders or one CLT).")
    cls = getattr(importlib.import_module(config[0]), config[1])
    cfg = config_from_dict(cls, config_kwargs(args, *config), "command line")
    model = load_model(args.model, device=args.device)
    return cfg, model, TranscoderSet.load(args.transcoders, model)
