"""``interp circuit transcoder-paths``: explain one prompt's logit, transcoder feature or attention-SAE feature by
the paths through transcoder features, attention heads and embeddings that write it (Dunefsky et al. 2024), and
write them as a graph with error nodes (``graph.json``).

    interp circuit transcoder-paths --model demo --transcoders runs/demo/dicts/clt \\
        --prompt "def add(a, b):" --root logit --num-iters 3 --num-branches 5 --out runs/paths

The flags of ``interp.circuits.paths_api.TranscoderPathsConfig`` are generated from the dataclass; ``interp circuit``
(``cli/circuit.py``) adds this module's arguments and hands the ``transcoder-paths`` method to :func:`run`.
"""

from __future__ import annotations

import argparse

from cli._transcoders import load_inputs
from cli.config_flags import add_config_flags

CONFIG = ("interp.circuits.paths_api", "TranscoderPathsConfig")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The transcoder-paths arguments (``--model``, ``--out`` and ``--device`` come from ``interp circuit``)."""
    group = parser.add_argument_group("transcoder paths (method transcoder-paths; TranscoderPathsConfig)")
    group.add_argument("--transcoders", nargs="+", metavar="DIR",
                       help="dictionary directories: per-layer transcoders (one per layer) or one cross-layer "
                       "transcoder")
    group.add_argument("--attention-sae", metavar="DIR", help="an attention-output SAE (blocks.L.attn.hook_z), for "
                       "--root attn_feature")
    add_config_flags(group, *CONFIG)


def run(args: argparse.Namespace) -> int:
    from interp.circuits.paths_api import format_paths, save_paths, transcoder_paths
    from interp.dictionaries import load_dictionary

    cfg, model, transcoders = load_inputs(args, CONFIG, "transcoder-paths")
    sae = load_dictionary(args.attention_sae, device=args.device) if args.attention_sae else None
    result = transcoder_paths(model, transcoders, cfg, sae)
    path = save_paths(result, args.out)
    print(format_paths(result.search), end="")
    print(path)
    return 0
