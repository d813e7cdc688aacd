"""A cross-layer transcoder against per-layer transcoders, every MLP of a model replaced at once.

One cache run stores every layer's MLP input (``ln2.hook_normalized``) and output (``hook_mlp_out``). One training
pass trains, from it, a CLT over all layers and, per layer, a ReLU transcoder, a skip (TopK) transcoder and a
JumpReLU transcoder, all with the same number of latents per layer. Then, on held-in rows of the store:

- L0: active latents per token, summed over layers; dead: latents that never fired (all layers together);
- FVU over the MLP outputs of every layer concatenated;
- CE loss recovered with every MLP replaced at once (closed loop: a layer's features read the already replaced
  layers before it; ``interp.circuits.replacement.replacement_logits``), against zero-ablating every MLP, and
  ΔLM loss (nats/token added by the replacement); BOS positions excluded.

It also times one training step of the CLT against a JumpReLU transcoder with the same d_in, d_sae (all layers'
latents) and batch, interleaved on one thread. Prints markdown tables (docs/dictionaries.md).

Usage: python bench/clt.py [--model demo] [--n-tokens 131072] [--train-tokens 262144] [--expansion 8]
"""

from __future__ import annotations

import argparse
import logging
import statistics
import time
from pathlib import Path

import torch

from interp.activations.cache import CacheConfig, cache_activations
from interp.circuits.replacement import TranscoderSet, replacement_logits
from interp.dictionaries import Dictionary, TrainBatch, TrainState, create, load_dictionary
from interp.model import load_model, next_token_loss
from interp.model.corpus import CorpusConfig
from interp.training import TrainConfig, evaluate, train_dictionary

MLP_IN, MLP_OUT = "blocks.{}.ln2.hook_normalized", "blocks.{}.hook_mlp_out"


def configs(n_layers: int, common: dict, clt_params: dict, k: int) -> dict[str, list[TrainConfig]]:
    per_layer = {
        "transcoder": dict(params={"l1_coeff": 5.0}),
        "skip_transcoder": dict(k=k),
        "jumprelu": dict(params={"threshold_init": 0.5, "bandwidth": 0.1, "l0_coeff": 0.3, "transcoder": True}),
    }
    out = {"clt": [TrainConfig(architecture="clt", name="clt", hook=MLP_IN.format("*"), hook_out=MLP_OUT.format("*"),
                               params=clt_params, **common)]}
    for arch, spec in per_layer.items():
        out[arch] = [TrainConfig(architecture=arch, name=f"{arch}-{layer}", hook=MLP_IN.format(layer),
                                 hook_out=MLP_OUT.format(layer), **spec, **common) for layer in range(n_layers)]
    return out


@torch.no_grad()
def replaced_ce(model, store, dicts: list[Dictionary], n_contexts: int, batch: int = 8) -> dict[str, float]:
    """Clean, replaced and all-MLPs-zeroed next-token CE over the store's first contexts (BOS excluded)."""
    ts = TranscoderSet(dicts, model)
    ctx = store.ctx_len
    tokens = store.column("tokens")[: n_contexts * ctx].long().view(n_contexts, ctx)
    keep = store.column("pos")[: n_contexts * ctx].view(n_contexts, ctx)[:, 1:] >= 0
    zero = [(MLP_OUT.format(layer), lambda y, hook: torch.zeros_like(y)) for layer in ts.layers]
    sums = {"clean": 0.0, "replaced": 0.0, "zero": 0.0}
    for a in range(0, n_contexts, batch):
        toks, m = tokens[a : a + batch], keep[a : a + batch]
        with model.hooks(zero):
            zeroed = model.forward(toks)
        for key, logits in (("clean", model.forward(toks)), ("replaced", replacement_logits(model, ts, toks)),
                            ("zero", zeroed)):
            sums[key] += float(next_token_loss(logits, toks)[m].sum())
    n = int(keep.sum())
    ce = {k: v / n for k, v in sums.items()}
    ce["recovered"] = (ce["zero"] - ce["replaced"]) / (ce["zero"] - ce["clean"])
    return ce


def step_seconds(d: Dictionary, x: torch.Tensor, y: torch.Tensor) -> float:
    t = time.perf_counter()
    out = d.training_step(TrainBatch(x, y, None), TrainState(0, 10, torch.zeros(d.cfg.d_sae, dtype=torch.bool)))
    out.loss.backward()
    return time.perf_counter() - t


def time_steps(n_layers: int, d_model: int, n: int, batch: int, rounds: int = 7) -> tuple[float, float]:
    """Median seconds per training step (forward + backward): a CLT and a JumpReLU transcoder of equal size."""
    torch.set_num_threads(1)
    hooks = tuple(str(i) for i in range(n_layers))
    clt = create("clt", n_layers * d_model, n_layers * n, hooks_in=hooks, hooks_out=hooks)
    flat = create("jumprelu", n_layers * d_model, n_layers * n, transcoder=True)
    x, y = torch.randn(batch, n_layers * d_model), torch.randn(batch, n_layers * d_model)
    times: dict[str, list[float]] = {"clt": [], "jumprelu": []}
    for _ in range(rounds):  # interleaved, so a slow spell hits both
        times["clt"].append(step_seconds(clt, x, y))
        times["jumprelu"].append(step_seconds(flat, x, y))
    return statistics.median(times["clt"]), statistics.median(times["jumprelu"])


def summarise(model, store, name: str, dicts: list[Dictionary], n_tokens: int, ce_contexts: int) -> str:
    rs = [evaluate(d, store, n_tokens=n_tokens) for d in dicts]
    fvu = sum(r.mse for r in rs) / sum(r.mse / r.fvu for r in rs)  # pooled over the layers' outputs
    dead = sum(r.dead_fraction * d.cfg.d_sae for r, d in zip(rs, dicts)) / sum(d.cfg.d_sae for d in dicts)
    ce = replaced_ce(model, store, dicts, ce_contexts)
    return (f"| {name} | {sum(d.cfg.d_sae for d in dicts)} | {sum(r.l0 for r in rs):.1f} | {fvu:.3f} | "
            f"{ce['recovered']:.3f} | {ce['replaced'] - ce['clean']:.3f} | {dead:.1%} |")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="demo")
    p.add_argument("--n-tokens", type=int, default=131_072)
    p.add_argument("--train-tokens", type=int, default=262_144)
    p.add_argument("--expansion", type=int, default=8)
    p.add_argument("--k", type=int, default=16)
    p.add_argument("--sparsity-coeff", type=float, default=1.0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", default="runs/clt-bench")
    args = p.parse_args()
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    model = load_model(args.model)
    L = model.info.n_layers
    store = cache_activations(CacheConfig(model=args.model, hooks=(MLP_IN.format("*"), MLP_OUT.format("*")),
                                          corpus=CorpusConfig(source="stdlib"), n_tokens=args.n_tokens,
                                          ctx_len=min(128, model.info.n_ctx)), out / "store", model=model)
    common = dict(expansion=args.expansion, n_tokens=args.train_tokens, batch_size=1024, seed=0)
    groups = configs(L, common, {"sparsity_coeff": args.sparsity_coeff}, args.k)
    t = time.perf_counter()
    train_dictionary([c for cfgs in groups.values() for c in cfgs], store, out / "dicts")
    print(f"model {args.model} ({L} layers, d_model {model.info.d_model}), {store.n_rows} cached rows, "
          f"{args.train_tokens} training tokens each, {args.expansion}x latents per layer, all trained in one pass "
          f"of {time.perf_counter() - t:.0f} s on {args.threads} threads\n")
    print("| dictionaries (every MLP replaced) | latents | L0 | FVU | CE loss recovered | ΔLM loss | dead |")
    print("|---|---|---|---|---|---|---|")
    for name, cfgs in groups.items():
        dicts = [load_dictionary(out / "dicts" / c.name) for c in cfgs if c.name]
        label = "clt" if name == "clt" else f"{name} per layer"
        print(summarise(model, store, label, dicts, n_tokens=32_768, ce_contexts=128))
    clt_s, flat_s = time_steps(L, model.info.d_model, args.expansion * model.info.d_model, 1024)
    print(f"\none training step, batch 1024, 1 thread: clt {clt_s * 1e3:.0f} ms, JumpReLU transcoder of the same "
          f"size (d_in {L * model.info.d_model}, d_sae {L * args.expansion * model.info.d_model}) "
          f"{flat_s * 1e3:.0f} ms, ratio {clt_s / flat_s:.2f}")


if __name__ == "__main__":
    main()
