"""TopK training throughput vs the encoder matmul alone (the floor for a sparse decoder), and vs the
peer libraries sparsify and SAELens on the same data, same run.

d_in=512, d_sae=8192, k=32, batch 4096, fp32. Prints tokens/s for each and the ratios. Peers run in
side virtualenvs (see bench/peers.py for the setup); one whose venv is absent is skipped with a message.
Reference points on this kind of CPU: sparsify 1.3.3 ~8,500 tok/s, SAELens 6.54 ~2,200 tok/s.
"""

from __future__ import annotations

import argparse
import time

import torch
from peers import DEFAULT_VENVS, measure, venv_for  # bench/ is on sys.path when run as a script

from interp.dictionaries import TrainBatch, TrainState, create


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--d-in", type=int, default=512)
    ap.add_argument("--d-sae", type=int, default=8192)
    ap.add_argument("--k", type=int, default=32)
    ap.add_argument("--batch", type=int, default=4096)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument(
        "--sparsify-venv", default=None, help=f"default $INTERP_SPARSIFY_VENV or {DEFAULT_VENVS['sparsify']}"
    )
    ap.add_argument("--saelens-venv", default=None, help=f"default $INTERP_SAELENS_VENV or {DEFAULT_VENVS['saelens']}")
    ap.add_argument("--no-peers", action="store_true", help="measure interp only")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    x = torch.randn(args.batch, args.d_in)
    d = create("topk", args.d_in, args.d_sae, k=args.k)
    opt = torch.optim.Adam(d.parameters(), lr=1e-4)
    dead = torch.zeros(args.d_sae, dtype=torch.bool)

    def train_step() -> None:
        out = d.training_step(TrainBatch(x, x, None), TrainState(0, 1, dead))
        opt.zero_grad(set_to_none=True)
        out.loss.backward()
        d.constrain_grads()
        opt.step()
        d.constrain_weights()

    def matmul() -> None:
        with torch.no_grad():
            x @ d.W_enc_

    rates = {}
    for name, fn in (("encoder matmul", matmul), ("topk train step", train_step)):
        fn()
        t = time.perf_counter()
        for _ in range(args.steps):
            fn()
        rates[name] = args.batch * args.steps / (time.perf_counter() - t)
        print(f"{name:>16}: {rates[name]:>10,.0f} tok/s")
    print(
        f"ratio (matmul / train): {rates['encoder matmul'] / rates['topk train step']:.2f}x  "
        f"(threads={args.threads}; goal <= 2x)"
    )
    if args.no_peers:
        return
    shape = dict(d_in=args.d_in, d_sae=args.d_sae, k=args.k, batch=args.batch, steps=args.steps)
    for name, given in (("sparsify", args.sparsify_venv), ("saelens", args.saelens_venv)):
        peer = measure(name, venv_for(name, given), threads=args.threads, **shape)
        if peer.tokens_per_s is None:
            print(f"{name:>16}: {peer.detail}")
            continue
        ratio = rates["topk train step"] / peer.tokens_per_s
        print(f"{name:>16}: {peer.tokens_per_s:>10,.0f} tok/s  ({peer.detail}; interp is {ratio:.2f}x its speed)")


if __name__ == "__main__":
    main()
