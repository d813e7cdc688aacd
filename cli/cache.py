"""``interp cache``: run a model over a corpus and write an activation store."""

from __future__ import annotations

import argparse


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("cache", help="cache activations to a store", description=__doc__)
    p.add_argument("--model", default="demo", help="'demo', a local HF checkpoint dir, or a hub name")
    p.add_argument("--hooks", nargs="+", default=["blocks.*.hook_resid_post"],
                   help="hook names or fnmatch patterns (TransformerLens names)")
    p.add_argument("--corpus", default="stdlib", help="'stdlib', local files/dir/glob, or a dataset name")
    p.add_argument("--split", default="train", help="dataset split (hub datasets)")
    p.add_argument("--text-field", default="text", help="text column (jsonl/parquet/hub)")
    p.add_argument("--seed", type=int, default=0, help="document order seed")
    p.add_argument("--n-tokens", type=int, default=1_000_000, help="token budget")
    p.add_argument("--ctx-len", type=int, default=128, help="tokens per context, BOS included")
    p.add_argument("--batch-size", type=int, default=32, help="contexts per forward pass")
    p.add_argument("--shard-mb", type=float, default=128, help="approximate shard size in MB")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    p.add_argument("--with-grads", action="store_true", help="also store d(LM loss)/d(activation)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--processing", default="default", choices=["default", "transformer_lens", "none"],
                   help="weight processing at load; default keeps the checkpoint's own residual stream")
    p.add_argument("--out", required=True, help="store directory (resumes if it holds the same store)")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from interp.activations.cache import CacheConfig, cache_activations
    from interp.model.corpus import CorpusConfig

    cfg = CacheConfig(
        model=args.model,
        hooks=tuple(args.hooks),
        corpus=CorpusConfig(source=args.corpus, split=args.split, text_field=args.text_field, seed=args.seed),
        n_tokens=args.n_tokens,
        ctx_len=args.ctx_len,
        batch_size=args.batch_size,
        shard_mb=args.shard_mb,
        dtype=args.dtype,
        with_grads=args.with_grads,
        device=args.device,
        processing=args.processing,
    )
    store = cache_activations(cfg, args.out, progress=not args.no_progress)
    print(f"{store.path}: {store.n_rows} rows x {len(store.hooks)} hooks in {len(store.shards)} shards")
    return 0
