"""What the cache manifest's corpus digests cost, as ratios measured in one run.

Every shard's token ids, document indices and positions (16 bytes a token) are hashed with sha256: once by
the shard writer (on its own thread, beside the shard's own sha256), and once more per complete shard when a
run resumes (while it re-tokenises the corpus to skip those contexts). This prints the digest's time against
(1) the bare forward pass that computes the same tokens, (2) writing the shard (serialise, sha256, fsync),
(3) tokenising and packing the same contexts, which a resume does anyway.

Usage: python bench/corpus_digest.py [--model demo] [--hook blocks.1.hook_resid_post] [--n-tokens 131072]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from interp.activations.cache import CacheConfig, contexts_digest
from interp.io import save_tensors
from interp.model.corpus import iter_contexts
from interp.model.model import load_model


def seconds(fn, repeats: int = 3) -> float:
    """Best of ``repeats`` wall times of ``fn()``."""
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="demo")
    p.add_argument("--hook", default="blocks.1.hook_resid_post")
    p.add_argument("--n-tokens", type=int, default=131_072)
    args = p.parse_args()
    model = load_model(args.model)
    cfg = CacheConfig(model=args.model, hooks=(args.hook,), n_tokens=args.n_tokens)

    def contexts() -> list:
        it = iter_contexts(cfg.corpus, model.tokenizer, cfg.ctx_len, model.info.bos_token_id)
        return [c for _, c in zip(range(cfg.n_contexts), it)]

    group = contexts()
    tokens = torch.stack([c.tokens for c in group])
    columns = [torch.cat([c[j] for c in group]) for j in range(3)]
    stop = model.stop_layer([args.hook])

    def forward() -> None:
        with torch.no_grad():
            for a in range(0, tokens.shape[0], cfg.batch_size):
                model.forward(tokens[a : a + cfg.batch_size], stop_at_layer=stop)

    acts = {f"act/{args.hook}": torch.randn(tokens.numel(), model.info.d_model)}
    shard = {**acts, "tokens": columns[0].to(torch.int32), "doc": columns[1], "pos": columns[2]}
    with tempfile.TemporaryDirectory() as tmp:
        t_write = seconds(lambda: save_tensors(Path(tmp) / "shard.safetensors", shard))
    t_digest = seconds(lambda: contexts_digest(*columns), repeats=5)
    t_forward = seconds(forward, repeats=1)
    t_tokenize = seconds(contexts, repeats=1)
    n = tokens.numel()
    print(f"{n} tokens of {args.model}, hook {args.hook} (d={model.info.d_model}), threads={torch.get_num_threads()}")
    print(f"digest            {t_digest * 1e3:8.2f} ms  ({n / t_digest / 1e6:.0f} M tokens/s)")
    print(f"forward pass      {t_forward * 1e3:8.2f} ms  digest / forward  = {t_digest / t_forward:.4f}")
    print(f"shard write       {t_write * 1e3:8.2f} ms  digest / write    = {t_digest / t_write:.4f}")
    print(f"tokenise + pack   {t_tokenize * 1e3:8.2f} ms  digest / tokenise = {t_digest / t_tokenize:.4f}")


if __name__ == "__main__":
    main()
