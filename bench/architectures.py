"""Every registered architecture trained on one store of a real model, with L0, FVU and CE loss recovered.

One cache run stores the residual stream and the attention heads' z of one layer, every layer's MLP input/output
(with LM-loss gradients for the g-SAE). One training pass over it trains every architecture at once:
the SAE family, MP, g-SAE and the post-hoc codebook on the residual stream, the transcoders from
``ln2.hook_normalized`` to ``hook_mlp_out``, and an attention-output TopK SAE on ``attn.hook_z``. The cross-layer
transcoder reads every layer's MLP input and writes every MLP output (the store holds them for every layer), so
its CE loss recovered splices every MLP at once (bench/clt.py compares it with per-layer transcoders).
Prints a markdown table (the one in docs/dictionaries.md).

Usage: python bench/architectures.py [--model demo] [--layer 0] [--n-tokens 131072] [--train-tokens 524288]
       [--only jumprelu,gated]
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

import torch

from interp.activations.cache import CacheConfig, cache_activations
from interp.dictionaries import REGISTRY, load_dictionary
from interp.model.corpus import CorpusConfig
from interp.model.model import load_model
from interp.training import TrainConfig, train_dictionary
from interp.training.evals import evaluate


def configs(layer: int, k: int, common: dict) -> list[TrainConfig]:
    resid = f"blocks.{layer}.hook_resid_post"
    mlp_in, mlp_out = f"blocks.{layer}.ln2.hook_normalized", f"blocks.{layer}.hook_mlp_out"
    z = f"blocks.{layer}.attn.hook_z"
    specs = {
        "topk": dict(hook=resid, k=k),
        "batchtopk": dict(hook=resid, k=k),
        "matryoshka": dict(hook=resid, k=k),
        "relu": dict(hook=resid, params={"l1_coeff": 5.0}),
        "relu_normweighted": dict(hook=resid, params={"l1_coeff": 5.0}),
        "relu_unitnorm": dict(hook=resid, params={"l1_coeff": 5.0}),
        "jumprelu": dict(hook=resid),  # registry defaults: l0_coeff, threshold, bandwidth from the data
        "gated": dict(hook=resid),  # registry defaults: l1_coeff from the data
        "mp": dict(hook=resid, k=k),
        "gsae": dict(hook=resid, k=k),
        "codebook": dict(hook=resid, k=8),
        "transcoder": dict(hook=mlp_in, hook_out=mlp_out, params={"l1_coeff": 5.0}),
        "skip_transcoder": dict(hook=mlp_in, hook_out=mlp_out, k=k),
        "clt": dict(hook="blocks.*.ln2.hook_normalized", hook_out="blocks.*.hook_mlp_out"),
    }
    missing = set(REGISTRY) - set(specs)
    if missing:
        raise SystemExit(f"bench/architectures.py has no settings for: {', '.join(sorted(missing))}")
    out = [TrainConfig(architecture=a, name=a, **s, **common) for a, s in specs.items()]
    out.append(TrainConfig(architecture="topk", name="attn_z_topk", hook=z, k=k, **common))
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="demo")
    p.add_argument("--layer", type=int, default=0)
    p.add_argument("--k", type=int, default=16)
    p.add_argument("--expansion", type=int, default=8)
    p.add_argument("--n-tokens", type=int, default=131_072)
    p.add_argument("--train-tokens", type=int, default=524_288)
    p.add_argument("--out", default="runs/architectures")
    p.add_argument("--only", default=None, help="comma-separated dictionary names to train (default: all)")
    args = p.parse_args()
    logging.basicConfig(level=logging.WARNING)
    out = Path(args.out)
    model = load_model(args.model)
    hooks = tuple(f"blocks.{args.layer}.{h}" for h in ("hook_resid_post", "attn.hook_z"))
    hooks += ("blocks.*.ln2.hook_normalized", "blocks.*.hook_mlp_out")  # every layer's, for the CLT
    store = cache_activations(CacheConfig(model=args.model, hooks=hooks, corpus=CorpusConfig(source="stdlib"),
                                          n_tokens=args.n_tokens, ctx_len=min(128, model.info.n_ctx), with_grads=True),
                             out / "store", model=model)
    common = dict(expansion=args.expansion, n_tokens=args.train_tokens, batch_size=1024, seed=0)
    t = time.perf_counter()
    cfgs = [c for c in configs(args.layer, args.k, common) if not args.only or c.name in args.only.split(",")]
    result = train_dictionary(cfgs, store, out / "dicts")
    train_s = time.perf_counter() - t
    print(f"model {args.model} (d_model={model.info.d_model}), layer {args.layer}, {store.n_rows} cached rows, "
          f"{args.train_tokens} training tokens each, all trained in one pass of {train_s:.0f} s\n")
    print("| dictionary | hook | d_sae | L0 | FVU | CE loss recovered | ΔLM loss | dead |")
    print("|---|---|---|---|---|---|---|---|")
    for path in result.dictionaries:
        d = load_dictionary(path)
        torch.manual_seed(0)
        r = evaluate(d, store, model=model, n_tokens=32_768, ce_tokens=16_384)
        hook = d.cfg.hook_in + (f" → {d.cfg.hook_out.rsplit('.', 1)[-1]}" if d.cfg.hook_out else "")
        print(f"| {path.name} | {hook} | {d.cfg.d_sae} | {r.l0:.1f} | {r.fvu:.3f} | "
              f"{r.ce_loss_recovered:.3f} | {r.delta_lm_loss:.3f} | {r.dead_fraction:.1%} |")


if __name__ == "__main__":
    main()
