"""``interp codebook finetune|steer``: codebook bottlenecks finetuned into a model, and steering with them.

``finetune`` flags are generated from ``CodebookFinetuneConfig`` (one flag per field, its docstring as
help); ``--corpus`` / ``--heldout`` take a corpus source string (``none`` for --heldout holds out the
first contexts of --corpus).
"""

from __future__ import annotations

import argparse

from cli.config_flags import add_config_flags, config_kwargs

_CONFIG = ("interp.codebooks.finetune", "CodebookFinetuneConfig")
_BY_HAND = ("sites", "corpus", "heldout")


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("codebook", help="codebook features finetuned into a model; steering")
    commands = p.add_subparsers(dest="codebook_command", required=True)
    ft = commands.add_parser("finetune", help="insert codebooks at hook sites and finetune with the LM loss",
                             description=__doc__)
    ft.add_argument("--out", required=True, help="output directory (model/, codebooks/, metrics.json ...)")
    ft.add_argument("--no-progress", action="store_true")
    ft.add_argument("--sites", nargs="+", default=["blocks.0.attn.hook_z", "blocks.1.hook_mlp_out"],
                    help="hook sites: blocks.L.attn.hook_z (a codebook per head) or a (batch, pos, d) hook")
    ft.add_argument("--corpus", default="stdlib:train", help="training corpus (see interp.model.corpus)")
    ft.add_argument("--heldout", default="stdlib:heldout",
                    help="held-out corpus; 'none' holds out the first contexts of --corpus")
    add_config_flags(ft, *_CONFIG, skip=_BY_HAND)
    ft.set_defaults(run=run_finetune)

    st = commands.add_parser("steer", help="generate with a code forced, and show the next-token shift")
    st.add_argument("--run-dir", required=True, help="output directory of `interp codebook finetune`")
    st.add_argument("--prompt", required=True)
    st.add_argument("--site", required=True, help="codebook site, e.g. blocks.0.attn.hook_z")
    st.add_argument("--head", type=int, default=0, help="codebook (head) at the site; 0 for MLP sites")
    st.add_argument("--code", type=int, required=True, help="code id to force")
    st.add_argument("--positions", default="all", help="'all', 'last', or comma-separated prompt positions")
    st.add_argument("--mode", choices=["include", "replace"], default="include")
    st.add_argument("--max-new-tokens", type=int, default=30)
    st.add_argument("--sample", action="store_true", help="sample instead of greedy decoding")
    st.add_argument("--top", type=int, default=8, help="next-token probabilities to show")
    st.set_defaults(run=run_steer)


def run_finetune(args: argparse.Namespace) -> int:
    from interp.codebooks.finetune import CodebookFinetuneConfig, finetune_codebooks
    from interp.model.corpus import CorpusConfig

    values = config_kwargs(args, *_CONFIG, skip=_BY_HAND)
    values["sites"] = tuple(args.sites)
    values["corpus"] = CorpusConfig(args.corpus)
    values["heldout"] = None if args.heldout.lower() == "none" else CorpusConfig(args.heldout)
    result = finetune_codebooks(CodebookFinetuneConfig(**values), args.out, progress=not args.no_progress)
    for name in ("original", "snap", "finetuned", "finetuned_no_codebooks"):
        m = result.metrics[name]
        print(f"{name:24s} loss {m['loss']:.4f}  next-token accuracy {m['accuracy']:.4f}")
    print(f"wrote {args.out}")
    return 0


def run_steer(args: argparse.Namespace) -> int:
    from interp.codebooks.finetune import load_run
    from interp.codebooks.steer import generate_with_codes, next_token_shift

    model, codebooks = load_run(args.run_dir)
    positions = args.positions if args.positions in ("all", "last") else [int(p) for p in args.positions.split(",")]
    common = dict(max_new_tokens=args.max_new_tokens, greedy=not args.sample, mode=args.mode)
    plain = generate_with_codes(model, codebooks, args.prompt, None, **common)
    forced = generate_with_codes(model, codebooks, args.prompt, args.site, args.head, args.code,
                                 positions=positions, **common)
    print(f"prompt:  {args.prompt!r}\nplain:   {plain.text!r}\nforced:  {forced.text!r}")
    shift = next_token_shift(model, codebooks, args.prompt, args.site, args.head, args.code,
                             positions=positions, mode=args.mode)
    delta = shift.forced[0] - shift.base[0]
    for title, ids in (("gained", delta.topk(args.top).indices), ("lost", (-delta).topk(args.top).indices)):
        print(f"next-token probability {title}:")
        for tok, i in zip(model.token_strings(ids), ids.tolist()):
            print(f"  {tok!r:>16} {shift.base[0, i]:.4f} -> {shift.forced[0, i]:.4f}")
    return 0
