"""``interp convert``: rewrite a dictionary directory between interp, SAELens and sparsify formats."""

from __future__ import annotations

import argparse


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("convert", help="convert a dictionary to/from SAELens or sparsify", description=__doc__)
    p.add_argument("--from", dest="src_fmt", required=True, help="format of PATH: interp, saelens or sparsify")
    p.add_argument("path", metavar="PATH", help="dictionary directory to read")
    p.add_argument("--to", dest="out_fmt", required=True, help="format to write (same choices)")
    p.add_argument("out", metavar="OUT", help="directory to write (sparsify: a run directory; the coder goes in "
                   "OUT/<hookpoint>/)")
    p.add_argument("--hookpoint", default=None, help="sparsify: the Hugging Face module path to name the coder "
                   "after (default: mapped from the dictionary's hook)")
    p.add_argument(
        "--scaling-factor",
        type=float,
        default=None,
        help="SAELens 'expected_average_only_in' input scale (kept outside SAELens directories)",
    )
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from interp.formats import export_dictionary, import_dictionary

    d = import_dictionary(args.path, args.src_fmt, scaling_factor=args.scaling_factor)
    out = export_dictionary(d, args.out, args.out_fmt, hookpoint=args.hookpoint)
    print(f"wrote {d.cfg.architecture} ({d.cfg.d_in} -> {d.cfg.d_sae} latents) as {args.out_fmt} to {out}")
    return 0
