"""Scaling from 1 to N processes (torchrun, gloo on CPU; nccl on GPUs): training and caching throughput.

Every figure comes from the run's own rate (tokens per second of the training loop, from ``metrics.json``;
tokens per second of caching, from the cache's wall time after start-up), so process start-up and imports are
left out. Scaling efficiency = throughput with N processes / (N x throughput with one), each measured in this
run, one thread per process (``OMP_NUM_THREADS=1``), so N processes use N cores.

    python bench/scale.py                      # training (DDP and spread) and caching, 1 vs 2 processes
    python bench/scale.py --procs 4 --d 512    # more processes, a wider input
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
from analyze import synthetic_store  # noqa: E402  (bench/ is on sys.path when run as a script)


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def interp(args: list[str], procs: int) -> float:
    """Run ``interp ARGS`` in ``procs`` processes; returns the wall time in seconds."""
    launcher = [sys.executable, "-m", "cli.main"] if procs == 1 else [
        sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={procs}", "--master-addr=127.0.0.1",
        f"--master-port={_port()}", "-m", "cli.main"]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    t0 = time.perf_counter()
    done = subprocess.run([*launcher, *args], env=env, cwd=ROOT, capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(done.stdout + done.stderr)
    return time.perf_counter() - t0


def train_rate(store: Path, out: Path, configs: list[dict], procs: int) -> float:
    """Training tokens per second (each dictionary's training-loop rate, summed over dictionaries for a sweep
    that shares one pass: every dictionary sees every token)."""
    (out / "cfg.json").parent.mkdir(parents=True, exist_ok=True)
    (out / "cfg.json").write_text(json.dumps(configs))
    interp(["train", "--store", str(store), "--out", str(out / "run"), "--config", str(out / "cfg.json"),
            "--no-progress"], procs)
    return min(json.loads((out / "run" / c["name"] / "metrics.json").read_text())["tokens_per_s"] for c in configs)


def cache_rate(root: Path, model: str, n_tokens: int, procs: int, repeats: int = 2) -> float:
    """Caching tokens per second with start-up cancelled out: (N - N/4) tokens over the difference of the
    wall times of caching N and N/4 tokens, each the fastest of ``repeats`` runs (each into a fresh directory,
    removed after it is timed)."""
    def run(n: int, name: str) -> float:
        out = root / f"{name}-{procs}"
        seconds = interp(["cache", "--model", model, "--hooks", "blocks.*.hook_resid_post", "--n-tokens", str(n),
                          "--ctx-len", "128", "--batch-size", "8", "--shard-mb", "8", "--no-progress", "--out",
                          str(out)], procs)
        shutil.rmtree(out)
        return seconds

    small, big = n_tokens // 4, n_tokens
    t_big = min(run(big, f"big{i}") for i in range(repeats))
    t_small = min(run(small, f"small{i}") for i in range(repeats))
    if t_big <= t_small:
        raise SystemExit(f"caching {big} tokens was not slower than {small}: start-up dominates; raise --cache-tokens")
    return (big - small) / (t_big - t_small)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--procs", type=int, default=2)
    p.add_argument("--d", type=int, default=256, help="input width of the synthetic store")
    p.add_argument("--rows", type=int, default=1 << 17)
    p.add_argument("--d-sae", type=int, default=4096)
    p.add_argument("--batch", type=int, default=2048)
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--model", default="demo", help="model for the caching figures")
    p.add_argument("--cache-tokens", type=int, default=1 << 19)
    args = p.parse_args()
    base = {"architecture": "topk", "hook": "h", "k": 32, "d_sae": args.d_sae, "batch_size": args.batch,
            "n_tokens": args.batch * args.steps, "init_tokens": args.batch, "log_every": args.steps}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / "store").mkdir()
        synthetic_store(root / "store", args.rows, args.d, 128, 4096)
        print(f"synthetic store: {args.rows} rows x d {args.d}; TopK d_sae {args.d_sae}, k 32, batch {args.batch}, "
              f"{args.steps} steps; one thread per process")
        one = [{**base, "name": "a"}]
        r1 = train_rate(root / "store", root / "ddp1", one, 1)
        rn = train_rate(root / "store", root / f"ddp{args.procs}", one, args.procs)
        print(f"DDP, one dictionary : 1 proc {r1:9.0f} tok/s | {args.procs} procs {rn:9.0f} tok/s | "
              f"efficiency {rn / (args.procs * r1):.2f}")
        many = [{**base, "name": f"d{i}"} for i in range(args.procs)]
        s1 = train_rate(root / "store", root / "spread1", many, 1) * len(many)
        sn = train_rate(root / "store", root / f"spread{args.procs}", many, args.procs) * len(many)
        print(f"spread, {len(many)} dictionaries: 1 proc {s1:9.0f} dict-tok/s | {args.procs} procs {sn:9.0f} "
              f"dict-tok/s | efficiency {sn / (args.procs * s1):.2f}")
        c1 = cache_rate(root, args.model, args.cache_tokens, 1)
        cn = cache_rate(root, args.model, args.cache_tokens, args.procs)
        print(f"caching {args.model}, every resid_post: 1 proc {c1:9.0f} tok/s | {args.procs} procs {cn:9.0f} tok/s | "
              f"efficiency {cn / (args.procs * c1):.2f}")


if __name__ == "__main__":
    main()
