"""TopK training throughput vs the encoder matmul alone (the floor for a sparse decoder), and vs the
peer libraries sparsify and SAELens on the same data, same run.

d_in=512, d_sae=8192, k=32, batch 4096, fp32 by default. For each thread count it prints tokens/s of:
- the encoder matmul ``x @ W_enc``, as written (a fresh output each call) and into a reused buffer
  (the faster of the two is the limit the ratio is taken against);
- interp's TopK training step (forward, backward, decoder constraints, Adam, as ``interp train`` runs it);
- sparsify and SAELens, each in its own virtualenv (see bench/peers.py; an absent venv is skipped),
  and sparsify once more with torch's fused Adam, to show how much of the gap is the optimizer.

interp's step and the matmuls are timed in interleaved rounds and the median round is reported, so a
slow spell on a shared machine hits all of them alike. Reference points on this kind of CPU: sparsify
1.3.3 ~8,500 tok/s, SAELens 6.54 ~2,200 tok/s. ``--device cuda --dtype bfloat16`` measures a GPU.

``--store-rows N`` adds a fourth contender, in the same rounds: the train step fed from an activation store of
N random rows on local disk (shuffled batches in page-locked memory on a GPU, copied with non_blocking=True),
against the step on a batch already on the device.
"""

from __future__ import annotations

import argparse
import atexit
import os
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import torch
from peers import DEFAULT_VENVS, measure, venv_for  # bench/ is on sys.path when run as a script

from interp.dictionaries import TrainBatch, TrainState, create
from interp.training.slot import make_optimizer


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--d-in", type=int, default=512)
    ap.add_argument("--d-sae", type=int, default=8192)
    ap.add_argument("--k", type=int, default=32)
    ap.add_argument("--batch", type=int, default=4096)
    ap.add_argument("--steps", type=int, default=3, help="calls per round")
    ap.add_argument("--rounds", type=int, default=5, help="interleaved rounds; the median is reported")
    ap.add_argument("--threads", default=f"1,{os.cpu_count()}", help="comma-separated torch thread counts")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"], help="bfloat16: autocast")
    ap.add_argument(
        "--sparsify-venv", default=None, help=f"default $INTERP_SPARSIFY_VENV or {DEFAULT_VENVS['sparsify']}"
    )
    ap.add_argument("--saelens-venv", default=None, help=f"default $INTERP_SAELENS_VENV or {DEFAULT_VENVS['saelens']}")
    ap.add_argument("--no-peers", action="store_true", help="measure interp only")
    ap.add_argument("--store-rows", type=int, default=0,
                    help="also time the step fed from a store of this many rows on local disk (0: skip)")
    ap.add_argument("--dead-fraction", type=float, default=0.0,
                    help="mark this fraction of interp's latents dead, so its step also runs AuxK (peers: AuxK off)")
    args = ap.parse_args()
    print(f"d_in={args.d_in} d_sae={args.d_sae} k={args.k} batch={args.batch} {args.dtype} on {args.device}, "
          f"{args.dead_fraction:.0%} of interp's latents dead")
    for threads in sorted({int(t) for t in args.threads.split(",")}):
        torch.set_num_threads(threads)
        print(f"\n-- {threads} thread(s) --")
        rates = measure_interp(args)
        limit = max(rates["encoder matmul, fresh output"], rates["encoder matmul, reused buffer"])
        train = rates["interp TopK train step"]
        print(f"interp step takes {limit / train:.2f}x the encoder matmul's time (goal <= 2x)")
        if args.store_rows:
            print(f"fed from the store: {rates['train step fed from a store'] / train:.2f}x the in-memory step's rate")
        if not args.no_peers and args.device == "cpu":
            measure_peers(args, threads, train)


def measure_interp(args: argparse.Namespace) -> dict[str, float]:
    torch.manual_seed(0)
    dev = torch.device(args.device)
    x = torch.randn(args.batch, args.d_in, device=dev)
    d = create("topk", args.d_in, args.d_sae, k=args.k).to(dev)
    opt = make_optimizer(d, lr=1e-4)
    dead = torch.zeros(args.d_sae, dtype=torch.bool, device=dev)
    dead[: int(args.dead_fraction * args.d_sae)] = True
    autocast = torch.autocast(dev.type, dtype=torch.bfloat16, enabled=args.dtype == "bfloat16")
    W = d.W_enc_.detach()
    buf = torch.empty(args.batch, args.d_sae, device=dev, dtype=torch.bfloat16 if args.dtype == "bfloat16" else None)
    Wc, xc = (W.bfloat16(), x.bfloat16()) if args.dtype == "bfloat16" else (W, x)

    def train_step() -> None:
        with autocast:
            out = d.training_step(TrainBatch(x, x, None), TrainState(0, 1, dead))
        opt.zero_grad(set_to_none=True)
        out.loss.backward()
        d.constrain_grads()
        opt.step()
        d.constrain_weights()

    fns: dict[str, Callable[[], object]] = {
        "encoder matmul, fresh output": lambda: xc @ Wc,
        "encoder matmul, reused buffer": lambda: torch.mm(xc, Wc, out=buf),
        "interp TopK train step": train_step,
    }
    if args.store_rows:
        batches = store_batches(args, dev)

        def fed_step() -> None:
            nonlocal x
            x = next(batches)
            train_step()

        fns["train step fed from a store"] = fed_step
    times: dict[str, list[float]] = {name: [] for name in fns}
    for fn in fns.values():
        fn()
    for _ in range(args.rounds):
        for name, fn in fns.items():
            _sync(dev)
            t = time.perf_counter()
            for _ in range(args.steps):
                fn()
            _sync(dev)
            times[name].append((time.perf_counter() - t) / args.steps)
    rates = {name: args.batch / statistics.median(ts) for name, ts in times.items()}
    for name, rate in rates.items():
        print(f"{name:>32}: {rate:>10,.0f} tok/s  (median of {args.rounds} rounds)")
    return rates


def store_batches(args: argparse.Namespace, dev: torch.device) -> Iterator[torch.Tensor]:
    """Batches from a store of ``args.store_rows`` random rows written to a temporary directory, forever, moved
    to ``dev`` as the trainer moves them."""
    from interp.activations.store import FORMAT, MANIFEST, ActivationStore, shard_name
    from interp.io import atomic_write_json, save_tensors

    path = Path(tempfile.mkdtemp(prefix="interp-bench-store-"))
    atexit.register(shutil.rmtree, path, ignore_errors=True)
    shards, per_shard = [], 1 << 16
    for i, a in enumerate(range(0, args.store_rows, per_shard)):
        rows = min(per_shard, args.store_rows - a)
        tensors = {"act/x": torch.randn(rows, args.d_in), "tokens": torch.zeros(rows, dtype=torch.int32),
                   "doc": torch.zeros(rows, dtype=torch.int64), "pos": torch.zeros(rows, dtype=torch.int32)}
        sha = save_tensors(path / shard_name(i), tensors)
        shards.append({"file": shard_name(i), "rows": rows, "contexts": rows, "bytes": (path / shard_name(i))
                       .stat().st_size, "sha256": sha})
    atomic_write_json(path / MANIFEST, {"format": FORMAT, "version": 1, "model": {}, "ctx_len": 1, "dtype": "float32",
                                        "hooks": {"x": {"shape": [args.d_in], "d": args.d_in}}, "with_grads": False,
                                        "shards": shards, "n_contexts": args.store_rows, "complete": True})
    store, pin, epoch = ActivationStore(path), dev.type == "cuda", 0
    while True:
        for b in store.batches("x", args.batch, seed=epoch, pin_memory=pin):
            yield b.acts["x"].to(dev, non_blocking=True)
        epoch += 1


def measure_peers(args: argparse.Namespace, threads: int, train: float) -> None:
    shape = dict(d_in=args.d_in, d_sae=args.d_sae, k=args.k, batch=args.batch, steps=args.steps * args.rounds)
    for name, given, fused in (
        ("sparsify", args.sparsify_venv, False),
        ("sparsify", args.sparsify_venv, True),
        ("saelens", args.saelens_venv, False),
    ):
        label = f"{name}{' + fused Adam' if fused else ''}"
        peer = measure(name, venv_for(name, given), threads=threads, fused_adam=fused, **shape)
        if peer.tokens_per_s is None:
            print(f"{label:>32}: {peer.detail}")
            continue
        print(f"{label:>32}: {peer.tokens_per_s:>10,.0f} tok/s  ({peer.detail}; "
              f"interp is {train / peer.tokens_per_s:.2f}x its speed)")


def _sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize()


if __name__ == "__main__":
    main()
