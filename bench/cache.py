"""Caching and store-read throughput, each as a ratio against its limit, measured in interleaved rounds.

1. ``interp cache`` end to end (tokenising, capture, copies, serialisation, sha256, fsync) against
   - a plain ``transformers`` forward of the same blocks (SDPA attention, stopped after the hooked block):
     the real limit; goal >= 0.9 on a GPT-2-small-shaped model, >= 0.8 on the demo model;
   - the TransformerBridge's forward stopped at the same layer (what caching ran on before the module path).
2. Streaming shuffled batches out of the store (GB/s) against a plain memory copy of the same bytes: the first
   pass of a new reader of shards recorded as verified (as ``interp cache`` leaves them), the first pass of one
   that must hash them (``verified.json`` removed: a copied store), and a second pass. Goal: >= 0.5 after the
   first pass, and the first pass >= half of that.

Each round runs every measurement once, in a rotating order; the medians and the range of the per-round ratios
are printed, with the machine's load average.

Usage: python bench/cache.py [--model demo|gpt2-small-shape|DIR] [--hook blocks.0.hook_resid_post]
       [--n-tokens 65536] [--rounds 5] [--threads 1]
``gpt2-small-shape`` is GPT2LMHeadModel(d_model 768, 12 layers, 12 heads) with seeded random weights and the demo
tokenizer, written once to $TMPDIR/interp-gpt2-small-shape.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from interp.activations.cache import CacheConfig, cache_activations
from interp.activations.shard import VERIFIED
from interp.activations.store import ActivationStore
from interp.model import DEMO_DIR, load_model
from interp.model.corpus import CorpusConfig, iter_contexts


def gpt2_small_shape() -> Path:
    path = Path(tempfile.gettempdir()) / "interp-gpt2-small-shape"
    if not (path / "model.safetensors").is_file():
        from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

        tok = PreTrainedTokenizerFast.from_pretrained(DEMO_DIR)
        torch.manual_seed(0)
        model = GPT2LMHeadModel(GPT2Config(n_embd=768, n_layer=12, n_head=12, vocab_size=len(tok),
                                           bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id))
        model.save_pretrained(path)
        tok.save_pretrained(path)
    return path


def plain_forward(path: str, stop: int | None) -> Callable[[torch.Tensor], Any]:
    """``transformers``' own model with SDPA attention, cut after block ``stop`` (None: the whole model)."""
    from transformers import AutoModelForCausalLM

    hf = AutoModelForCausalLM.from_pretrained(path, attn_implementation="sdpa", dtype=torch.float32).eval()
    if stop is None:
        return hf
    base = hf.base_model
    name = "h" if hasattr(base, "h") else "layers"
    setattr(base, name, getattr(base, name)[:stop])
    return base


def timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def report(name: str, rates: list[float], unit: str) -> None:
    print(f"{name:44s} {statistics.median(rates):>12,.2f} {unit}  (range {min(rates):,.2f}-{max(rates):,.2f})")


def ratio(name: str, num: list[float], den: list[float], goal: float | None) -> None:
    rs = [a / b for a, b in zip(num, den)]
    met = "" if goal is None else f"   goal >= {goal}: {'met' if statistics.median(rs) >= goal else 'NOT met'}"
    print(f"{name:44s} {statistics.median(rs):>12.3f}        (range {min(rs):.3f}-{max(rs):.3f}){met}")


def bench_caching(args: argparse.Namespace, model: Any, source: str, tmp: Path) -> Path:
    cfg = CacheConfig(model=args.model, hooks=(args.hook,), corpus=CorpusConfig(source="stdlib"),
                      n_tokens=args.n_tokens, ctx_len=args.ctx_len, batch_size=args.batch_size, shard_mb=64)
    hooks = model.resolve_hooks([args.hook])
    stop = model.stop_layer(hooks)
    contexts = iter_contexts(cfg.corpus, model.tokenizer, cfg.ctx_len, model.info.bos_token_id)
    tokens = torch.stack([c.tokens for _, c in zip(range(cfg.n_contexts), contexts)])
    plain = plain_forward(source, stop)

    def forward(fn: Callable[[torch.Tensor], Any]) -> Callable[[], None]:
        def run() -> None:
            with torch.no_grad():
                for a in range(0, tokens.shape[0], cfg.batch_size):
                    fn(tokens[a : a + cfg.batch_size])
        return run

    def cache() -> None:
        out = tmp / "store"
        shutil.rmtree(out, ignore_errors=True)
        cache_activations(cfg, out, progress=False, model=model)

    runs = {"plain transformers forward (SDPA)": forward(plain),
            "bridge forward": forward(lambda t: model.forward(t, stop_at_layer=stop)),
            "interp cache end to end": cache}
    for fn in runs.values():  # warm-up (the first cache run also boots nothing: the module path needs no bridge)
        fn()
    seconds: dict[str, list[float]] = {name: [] for name in runs}
    names = list(runs)
    for r in range(args.rounds):
        for name in names[r % len(names):] + names[: r % len(names)]:
            seconds[name].append(timed(runs[name]))
    n = tokens.numel()
    print(f"capture path: {model.capture_path(hooks)}; stop_at_layer={stop}; {n:,} tokens per run")
    rates = {name: [n / s for s in ts] for name, ts in seconds.items()}
    for name, rs in rates.items():
        report(name, rs, "tok/s")
    cached, plain_r, bridge_r = rates["interp cache end to end"], rates[names[0]], rates["bridge forward"]
    goal = 0.8 if args.model == "demo" else 0.9
    ratio("caching / plain forward", cached, plain_r, goal)
    ratio("caching / bridge forward", cached, bridge_r, None)
    ratio("bridge forward / plain forward", bridge_r, plain_r, None)
    return tmp / "store"


def bench_reads(args: argparse.Namespace, path: Path) -> None:
    probe = ActivationStore(path)
    hook = probe.hooks[0]
    nbytes = probe.n_rows * probe.d(hook) * 4
    src = torch.empty(nbytes // 4).normal_()
    dst = torch.empty_like(src)
    dst.copy_(src)

    def read_pass(store: ActivationStore) -> float:
        start = time.perf_counter()
        rows = sum(b.acts[hook].shape[0] for b in store.batches(hook, 4096, exclude_bos=False, drop_last=False,
                                                                  buffer_rows=args.buffer_rows))
        return rows * probe.d(hook) * 4 / (time.perf_counter() - start) / 1e9

    ActivationStore(path).verify_all()  # the shards are in the page cache for every reader below
    first, later, second = ("first pass, never verified here (sha256 on a background thread)",
                            "first pass of a new reader (shards recorded as verified, as interp cache leaves them)",
                            "second pass")
    gbps: dict[str, list[float]] = {"memory copy": [], first: [], later: [], second: []}
    for _ in range(args.rounds):
        gbps["memory copy"].append(nbytes / timed(lambda: dst.copy_(src)) / 1e9)
        (path / VERIFIED).unlink(missing_ok=True)
        reader = ActivationStore(path, verify=True)
        gbps[first].append(read_pass(reader))
        gbps[second].append(read_pass(reader))
        gbps[later].append(read_pass(ActivationStore(path, verify=True)))
    buffer = "default buffer (about 256 MiB)" if args.buffer_rows is None else f"buffer of {args.buffer_rows} rows"
    print(f"store: {nbytes / 1e6:.0f} MB of float32 rows ({len(probe.shards)} shards), shuffled batches of 4096 "
          f"rows, {buffer}")
    for name, rs in gbps.items():
        report(name, rs, "GB/s")
    copy = gbps["memory copy"]
    ratio("second pass / memory copy", gbps[second], copy, 0.5)
    ratio("first pass of a new reader / memory copy", gbps[later], copy, 0.25)
    ratio("first pass, never verified / memory copy", gbps[first], copy, 0.25)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="demo")
    p.add_argument("--hook", default=None, help="default: blocks.0.hook_resid_post (demo), blocks.5 (otherwise)")
    p.add_argument("--n-tokens", type=int, default=65_536)
    p.add_argument("--ctx-len", type=int, default=128)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's own)")
    p.add_argument("--skip", choices=["caching", "reads"], default=None)
    p.add_argument("--buffer-rows", type=int, default=None,
                   help="shuffle-buffer rows of the read passes (default: the reader's own, about 256 MiB)")
    args = p.parse_args()
    logging.basicConfig(level=logging.WARNING)
    if args.threads:
        torch.set_num_threads(args.threads)
    source = str(gpt2_small_shape()) if args.model == "gpt2-small-shape" else args.model
    args.hook = args.hook or ("blocks.0.hook_resid_post" if args.model == "demo" else "blocks.5.hook_resid_post")
    model = load_model(source)
    source = str(DEMO_DIR) if args.model == "demo" else source
    print(f"model: {args.model} (d_model={model.info.d_model}, {model.info.n_layers} layers); hook: {args.hook}; "
          f"torch threads: {torch.get_num_threads()}; load average {os.getloadavg()[0]:.1f}")
    tmp = Path(tempfile.mkdtemp(prefix="interp-bench-"))
    try:
        store = tmp / "store"
        if args.skip != "caching":
            store = bench_caching(args, model, source, tmp)
        else:
            cache_activations(CacheConfig(model=args.model, hooks=(args.hook,), n_tokens=args.n_tokens,
                                          ctx_len=args.ctx_len, batch_size=args.batch_size, shard_mb=64,
                                          corpus=CorpusConfig(source="stdlib")), store, progress=False, model=model)
        if args.skip != "reads":
            bench_reads(args, store)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"load average at the end: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
