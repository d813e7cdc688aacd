"""Where an attribution graph's memory goes, phase by phase, against prompt length (issue 12, item 4).

Each length runs in its own process with glibc's mmap threshold pinned at 64 KiB (``MALLOC_MMAP_THRESHOLD_``), so
every tensor larger than that is its own mapping, returned to the system when freed: the resident set then follows
the live tensors instead of the allocator's high-water mark, and a phase's peak is what it really held. A phase's
peak is measured by resetting the kernel's peak-RSS counter (``/proc/self/clear_refs``, 5) when it starts and
reading ``VmHWM`` when it ends, minus ``VmRSS`` when it started (nested phases fold their peak into the outer one).
torch's CPU allocator keeps no statistics and ``tracemalloc`` sees no tensor, so resident memory is the measure.

Phases of :func:`interp.circuits.graph_api.attribution_graph`: ``forward`` (the traced forward pass,
``Model.capture``), ``trace`` (the forward plus the transcoders' encoding), ``rows`` (feature selection and every
transposed pass), ``scores`` (both graph-score calls), ``prune``, ``graph`` (building the kept graph's nodes and
edges); ``total`` is the whole call above the memory before it (weights loaded, after a 16-token warm-up graph).

Models: ``gpt2`` is a GPT-2-small-shaped random model (``--layers``, d_model 768, 12 heads, d_mlp 3072) with
random TopK skip transcoders on every layer (bench/graphs.py's); ``demo`` is the demo model (256 positions) with
random TopK skip transcoders of the same kind.

Usage:
    OMP_NUM_THREADS=1 python bench/attribution_memory.py [--model gpt2] [--lengths 256 512 1024 2048] [--layers 4]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).parent))
from graphs import gpt2_small_shaped, stdlib_tokens  # noqa: E402

PHASES = ("forward", "trace", "rows", "scores", "prune", "graph", "total")


def _status_kb(field: str) -> int:
    text = Path("/proc/self/status").read_text()
    match = re.search(rf"^{field}:\s+(\d+) kB", text, re.M)
    return int(match.group(1)) if match else 0


class Phases:
    """Per-phase peak resident memory above the phase's start (MB) and wall time (s)."""

    def __init__(self) -> None:
        self.peak_mb: dict[str, float] = {}
        self.seconds: dict[str, float] = {}
        self._open: list[list[Any]] = []  # [label, start kB, highest kB seen, start time]

    def _fold(self) -> None:
        hwm = _status_kb("VmHWM")
        for entry in self._open:
            entry[2] = max(entry[2], hwm)

    def enter(self, label: str) -> None:
        self._fold()
        Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
        rss = _status_kb("VmRSS")
        self._open.append([label, rss, rss, time.perf_counter()])

    def leave(self) -> None:
        self._fold()
        label, start, high, t0 = self._open.pop()
        self.peak_mb[label] = max(self.peak_mb.get(label, 0.0), (high - start) / 1024)
        self.seconds[label] = self.seconds.get(label, 0.0) + time.perf_counter() - t0

    def wrap(self, owner: Any, name: str, label: str) -> None:
        fn = getattr(owner, name)

        def wrapped(*args: Any, **kwargs: Any) -> Any:
            self.enter(label)
            try:
                return fn(*args, **kwargs)
            finally:
                self.leave()

        setattr(owner, name, wrapped)


def _transcoders(model: Any, d_sae: int, k: int) -> Any:
    from interp.circuits.replacement import TranscoderSet
    from interp.dictionaries import create

    g = torch.Generator().manual_seed(1)
    d = model.info.d_model
    tcs = []
    for layer in range(model.info.n_layers):
        tc = create("skip_transcoder", d, d_sae, hook_in=f"blocks.{layer}.ln2.hook_normalized",
                    hook_out=f"blocks.{layer}.hook_mlp_out", normalization="none", k=k,
                    model_fingerprint=model.info.fingerprint)
        with torch.no_grad():
            for p in tc.parameters():
                p.copy_(torch.randn(p.shape, generator=g) * 0.03)
        tcs.append(tc)
    return TranscoderSet(tcs, model)


def one(args: argparse.Namespace) -> None:
    """One length in this process; prints one JSON line."""
    from interp.circuits import graph_api
    from interp.model import Model, load_model

    torch.set_num_threads(args.threads)
    model = load_model(str(args.model_dir))
    ts = _transcoders(model, args.d_sae, args.k)
    tokens = stdlib_tokens(model, args.length)
    cfg = graph_api.AttributionGraphConfig(prompt="(tokens)", max_feature_nodes=args.max_feature_nodes,
                                           row_batch_size=args.row_batch_size)
    warm = graph_api.AttributionGraphConfig(prompt="(tokens)", max_feature_nodes=8)
    graph_api.attribution_graph(model, ts, warm, tokens=tokens[:16])  # weights loaded, engines booted
    phases = Phases()
    phases.wrap(Model, "capture", "forward")
    for name, label in (("trace", "trace"), ("select_features", "rows"), ("graph_scores", "scores"),
                        ("prune", "prune"), ("_to_graph", "graph")):
        phases.wrap(graph_api, name, label)
    phases.enter("total")
    result = graph_api.attribution_graph(model, ts, cfg, tokens=tokens)
    phases.leave()
    tr = result.trace
    meta = result.graph.metadata
    print(json.dumps({
        "length": args.length, "path": model.capture_path(list(tr.acts)), "active": meta["n_active_features"],
        "rows": meta["n_backward_rows"], "peak_mb": phases.peak_mb, "seconds": phases.seconds,
        "trace_mb": tr.nbytes / 2**20,
        "adjacency_mb": result.rows.edges.numel() * 4 / 2**20,
        "kept": [len(result.graph.nodes), len(result.graph.edges)],
    }))


def _ratio(now: float, before: float | None) -> str:
    return f" ({now / before:.1f}x)" if before and before > 1 and now > 1 else ""


def run(args: argparse.Namespace, model_dir: Path) -> None:
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536", "OMP_NUM_THREADS": str(args.threads)}
    print("| tokens | path | active features | rows | " + " | ".join(f"{p} (MB)" for p in PHASES)
          + " | trace kept (MB) | adjacency (MB) | kept nodes / edges | time (s) |")
    print("|---" * (len(PHASES) + 8) + "|")
    before: dict[str, float] = {}
    for n in args.lengths:
        cmd = [sys.executable, __file__, "one", "--model-dir", str(model_dir), "--length", str(n),
               "--d-sae", str(args.d_sae), "--k", str(args.k), "--max-feature-nodes", str(args.max_feature_nodes),
               "--row-batch-size", str(args.row_batch_size), "--threads", str(args.threads)]
        done = subprocess.run(cmd, capture_output=True, text=True, check=False, env=env)
        if done.returncode != 0:
            print(f"| {n} | failed: {done.stderr.strip().splitlines()[-1:]} |", flush=True)
            continue
        r = json.loads(done.stdout.strip().splitlines()[-1])
        cells = [f"{r['peak_mb'].get(p, 0):.0f}{_ratio(r['peak_mb'].get(p, 0), before.get(p))}" for p in PHASES]
        before = dict(r["peak_mb"])
        print(f"| {n} | {r['path']} | {r['active']} | {r['rows']} | " + " | ".join(cells)
              + f" | {r['trace_mb']:.0f} | {r['adjacency_mb']:.1f} | {r['kept'][0]} / {r['kept'][1]} | "
              f"{r['seconds']['total']:.1f} |", flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("cmd", nargs="?", default="scaling", choices=["scaling", "one"])
    p.add_argument("--model", choices=["gpt2", "demo"], default="gpt2")
    p.add_argument("--model-dir", type=Path)
    p.add_argument("--length", type=int)
    p.add_argument("--lengths", type=int, nargs="+", default=[256, 512, 1024, 2048])
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--d-sae", type=int, default=3072)
    p.add_argument("--k", type=int, default=8)
    p.add_argument("--max-feature-nodes", type=int, default=128)
    p.add_argument("--row-batch-size", type=int, default=32)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    if args.cmd == "one":
        one(args)
        return
    print(f"model {args.model} ({args.layers if args.model == 'gpt2' else 2} layers), skip transcoders d_sae "
          f"{args.d_sae} TopK k={args.k}; max_feature_nodes {args.max_feature_nodes}, row batch "
          f"{args.row_batch_size}, {args.threads} thread(s); load average {os.getloadavg()[0]:.1f}", flush=True)
    if args.model == "demo":
        from interp.model import DEMO_DIR

        run(args, Path(DEMO_DIR))
        return
    with tempfile.TemporaryDirectory() as tmp:
        run(args, gpt2_small_shaped(Path(tmp) / "model", args.layers, max(args.lengths)))
    print(f"load average at the end {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
