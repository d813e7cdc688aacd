"""Caching and store-read throughput, each as a ratio against its physical limit, measured in one run.

1. ``interp cache`` end to end (tokenising, hooks, copies, serialisation, sha256, fsync) against a bare
   forward pass stopped at the same layer on the same tokens. Goal: >= 0.9.
2. Streaming shuffled batches out of the store (GB/s) against a plain memory copy of the same bytes.

Usage: python bench/cache.py [--model demo] [--hook blocks.1.hook_resid_post] [--n-tokens 262144]
"""

from __future__ import annotations

import argparse
import logging
import shutil
import tempfile
import time
from pathlib import Path

import torch

from interp.activations.cache import CacheConfig, cache_activations
from interp.activations.store import ActivationStore
from interp.model.corpus import CorpusConfig, iter_contexts
from interp.model.model import load_model


def bare_forward_seconds(model, cfg: CacheConfig, hooks: list[str]) -> float:
    contexts = iter_contexts(cfg.corpus, model.tokenizer, cfg.ctx_len, model.info.bos_token_id)
    tokens = torch.stack([c.tokens for _, c in zip(range(cfg.n_contexts), contexts)])
    stop = model.stop_layer(hooks)
    start = time.perf_counter()
    with torch.no_grad():
        for a in range(0, tokens.shape[0], cfg.batch_size):
            model.forward(tokens[a : a + cfg.batch_size].to(model.device), stop_at_layer=stop)
    return time.perf_counter() - start


def memcpy_gbps(nbytes: int, repeats: int = 5) -> float:
    src = torch.empty(nbytes // 4, dtype=torch.float32).normal_()
    dst = torch.empty_like(src)
    dst.copy_(src)
    start = time.perf_counter()
    for _ in range(repeats):
        dst.copy_(src)
    return nbytes * repeats / (time.perf_counter() - start) / 1e9


def read_gbps(store: ActivationStore, hook: str, verify: bool) -> float:
    reader = ActivationStore(store.path, verify=verify)
    d = reader.d(hook)
    start = time.perf_counter()
    rows = sum(b.acts[hook].shape[0] for b in reader.batches(hook, 4096, exclude_bos=False, drop_last=False))
    return rows * d * 4 / (time.perf_counter() - start) / 1e9


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="demo")
    p.add_argument("--hook", default="blocks.1.hook_resid_post")
    p.add_argument("--n-tokens", type=int, default=262_144)
    p.add_argument("--ctx-len", type=int, default=128)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = p.parse_args()
    logging.basicConfig(level=logging.WARNING)

    model = load_model(args.model, device=args.device)
    cfg = CacheConfig(model=args.model, hooks=(args.hook,), corpus=CorpusConfig(source="stdlib"),
                      n_tokens=args.n_tokens, ctx_len=args.ctx_len, batch_size=args.batch_size, shard_mb=64,
                      device=args.device)
    hooks = model.resolve_hooks([args.hook])
    bare_forward_seconds(model, CacheConfig(**{**cfg.__dict__, "n_tokens": 4 * args.ctx_len * args.batch_size}),
                         hooks)  # warm-up
    bare = bare_forward_seconds(model, cfg, hooks)
    tmp = Path(tempfile.mkdtemp(prefix="interp-bench-"))
    try:
        start = time.perf_counter()
        store = cache_activations(cfg, tmp / "store", progress=False, model=model)
        cached = time.perf_counter() - start
        tokens = store.n_rows
        size = sum(s.bytes for s in store.shards)
        copy = memcpy_gbps(size)
        first = read_gbps(store, args.hook, verify=True)
        warm = read_gbps(store, args.hook, verify=False)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    print(f"device: {args.device}; torch threads: {torch.get_num_threads()}; model: {args.model} "
          f"(d_model={model.info.d_model}, {model.info.n_layers} layers); hook: {args.hook}")
    print(f"tokens: {tokens}, store size: {size / 1e6:.1f} MB")
    print(f"bare forward (stop_at_layer={model.stop_layer(hooks)}): {tokens / bare:,.0f} tok/s")
    print(f"interp cache end to end:              {tokens / cached:,.0f} tok/s")
    print(f"caching / bare forward ratio:         {bare / cached:.3f}   (goal >= 0.9)")
    print(f"memory copy:                          {copy:.2f} GB/s")
    print(f"store read, sha256-verified pass:     {first:.2f} GB/s  ratio {first / copy:.3f}")
    print(f"store read, verified already:         {warm:.2f} GB/s  ratio {warm / copy:.3f}")


if __name__ == "__main__":
    main()
