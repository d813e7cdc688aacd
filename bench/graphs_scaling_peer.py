"""Attribution graphs against prompt length, interp and circuit-tracer side by side (``bench/graphs.py scaling-peer``).

The same GPT-2-small-shaped random model (``graphs_common.gpt2_small_shaped``: ``--layers``, d_model 768, 12 heads,
d_mlp 3072, the demo tokenizer), the same per-layer ReLU transcoders and the same stdlib tokens cut to each length,
given to interp and to circuit-tracer 0.5 (its side venv, ``--venv``; its TransformerLens backend, loaded offline
as ``bench/graphs.py peer`` does). The transcoders are made once: random directions, ``W_enc`` and ``W_dec`` entries
N(0, 0.03^2), and one encoder bias per layer put at the pre-activation quantile that leaves ``--active`` of the
``--d-sae`` features active per token on average (measured on the longest prompt). They are saved as interp
dictionaries (read by the interp runs with ``interp.load_dictionary``) and written in circuit-tracer's per-layer
format (read by its ``load_transcoders``), from the same tensors.

Settings that both tools have, mapped one to one: ``max_feature_nodes`` (both), interp's ``row_batch_size`` =
circuit-tracer's ``batch_size`` (rows per backward pass), ``max_n_logits`` and ``desired_logit_prob`` (both, interp's
defaults). circuit-tracer's ``update_interval`` stays at its default (4); interp has none.

Each tool and length runs in its own process (one thread), interp then circuit-tracer, ``--runs`` times, each after
a 16-token warm-up graph with the same settings. Per run: wall time of the graph call (interp:
``attribution_graph``, which also scores, prunes and builds the kept graph; circuit-tracer: ``attribute``, the
dense adjacency, no pruning), backward passes (interp: ``Linearised.rows`` calls; circuit-tracer:
``AttributionContext.compute_batch`` calls) and their share of the time, active features, peak RSS and the graph's
own peak (peak RSS minus the resident memory after the warm-up). circuit-tracer runs under an address-space limit
(``--peer-memory-gb``) and a time limit (``--timeout``), so that it fails with its own error instead of pushing a
shared machine out of memory. At ``--agree-length`` the adjacency rows of circuit-tracer's selected features and
logits are compared with interp's rows for the same nodes (``graphs_common.compare``).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, cast

import torch
from graphs_common import CT_SETUP, compare, gpt2_small_shaped, readable_by_peer, stdlib_tokens, write_peer_transcoders

PEER_ONE = r"""
import resource
work, length, agree = Path(sys.argv[1]), int(sys.argv[2]), sys.argv[3] == "1"
spec = json.loads((work / "spec.json").read_text())
torch.set_num_threads(1)
from circuit_tracer import attribute
from circuit_tracer.attribution import context_transformerlens as ctx_mod
rm = replacement_model(spec["model_dir"], work / "transcoders" / "config.yaml")
tokens = torch.tensor(spec["tokens"][:length])
settings = dict(max_n_logits=spec["max_n_logits"], desired_logit_prob=spec["desired_logit_prob"],
                batch_size=spec["batch_size"], max_feature_nodes=spec["max_feature_nodes"])
attribute(tokens[:16], rm, **{**settings, "max_feature_nodes": 8})  # weights loaded, allocator warm
def rss_now():
    line = [l for l in Path("/proc/self/status").read_text().splitlines() if l.startswith("VmRSS:")][0]
    return int(line.split()[1]) / 1024
baseline = rss_now()
spent = {"passes": 0, "seconds": 0.0}
compute_batch = ctx_mod.AttributionContext.compute_batch
def timed(self, *args, **kwargs):
    start = time.perf_counter()
    try:
        return compute_batch(self, *args, **kwargs)
    finally:
        spent["passes"] += 1
        spent["seconds"] += time.perf_counter() - start
ctx_mod.AttributionContext.compute_batch = timed
t0 = time.perf_counter()
g = attribute(tokens, rm, **settings)
seconds = time.perf_counter() - t0
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
out = {"tool": "circuit-tracer", "length": length, "n_layers": g.cfg.n_layers, "seconds": seconds,
       "passes": spent["passes"], "pass_seconds": spent["seconds"], "backward_share": spent["seconds"] / seconds,
       "active_features": int(g.active_features.shape[0]), "feature_rows": int(len(g.selected_features)),
       "rows": int(len(g.selected_features)) + len(g.logit_targets), "peak_rss_mb": peak,
       "above_baseline_mb": peak - baseline}
if agree:
    from safetensors.torch import save_file
    save_file({"adjacency": g.adjacency_matrix.contiguous()}, str(work / "ct_adjacency.safetensors"))
    (work / "ct.json").write_text(json.dumps({
        "active_features": g.active_features[g.selected_features].tolist(),
        "logit_tokens": [int(t.vocab_idx) for t in g.logit_targets], "n_layers": g.cfg.n_layers, "seconds": seconds}))
print(json.dumps(out))
"""


def make_transcoders(model: Any, tokens: torch.Tensor, d_sae: int, active: float) -> tuple[Any, list[Any]]:
    """Random per-layer ReLU transcoders on ``model`` (TranscoderSet, dictionaries) whose encoder bias leaves about
    ``active`` features per token active on ``tokens`` (it is lowered by the (1 - active / d_sae) quantile of the
    pre-activations there)."""
    from interp.circuits.replacement import TranscoderSet
    from interp.dictionaries import create

    g = torch.Generator().manual_seed(1)
    layers = range(model.info.n_layers)
    hooks = [f"blocks.{layer}.ln2.hook_normalized" for layer in layers]
    tcs = []
    for layer in layers:
        d = create("transcoder", model.info.d_model, d_sae, hook_in=hooks[layer],
                   hook_out=f"blocks.{layer}.hook_mlp_out", normalization="none",
                   model_fingerprint=model.info.fingerprint)
        with torch.no_grad():
            for p in d.parameters():
                p.copy_(torch.randn(p.shape, generator=g) * 0.03)
        tcs.append(d)
    acts = model.capture(tokens[None], hooks).acts
    first = TranscoderSet(tcs, model)
    with torch.no_grad():
        for layer in layers:
            W, b = first.encoder(layer)
            pre = (acts[hooks[layer]][0] @ W + b).flatten()
            cast(torch.Tensor, tcs[layer].b_enc).sub_(float(torch.quantile(pre, 1 - active / d_sae)))
    return TranscoderSet(tcs, model), tcs


def prepare(args: argparse.Namespace) -> None:
    """The model, the tokens and both tools' copies of the transcoders, in ``args.work`` (``spec.json`` lists them)."""
    from interp.dictionaries import save_dictionary
    from interp.model import load_model

    torch.set_num_threads(1)
    work = Path(args.work)
    model_dir = gpt2_small_shaped(work / "model", args.layers, max(args.lengths))
    readable_by_peer(model_dir)
    model = load_model(str(model_dir))
    tokens = stdlib_tokens(model, max(args.lengths))
    ts, tcs = make_transcoders(model, tokens, args.d_sae, args.active)
    for layer, d in enumerate(tcs):
        save_dictionary(d, work / "interp_transcoders" / f"layer_{layer}")
    write_peer_transcoders(ts, work / "transcoders", "interp-scaling-peer")
    (work / "spec.json").write_text(json.dumps({
        "model_dir": str(model_dir), "tokens": tokens.tolist(), "max_n_logits": 10, "desired_logit_prob": 0.95,
        "batch_size": args.row_batch_size, "max_feature_nodes": args.max_feature_nodes}))


def agree(args: argparse.Namespace) -> None:
    """Adjacency agreement at one length: circuit-tracer's saved rows against interp's (``graphs_common.compare``)."""
    from safetensors.torch import load_file

    from interp.circuits.attribution import Linearised, active_nodes
    from interp.circuits.graph_api import AttributionGraphConfig, select_features
    from interp.circuits.replacement import TranscoderSet, trace
    from interp.dictionaries import load_dictionary
    from interp.model import load_model

    torch.set_num_threads(1)
    work = Path(args.work)
    spec = json.loads((work / "spec.json").read_text())
    model = load_model(spec["model_dir"])
    tcs = [load_dictionary(work / "interp_transcoders" / f"layer_{layer}") for layer in range(model.info.n_layers)]
    ct = json.loads((work / "ct.json").read_text())
    A_ct = load_file(str(work / "ct_adjacency.safetensors"))["adjacency"]
    ts, tokens = TranscoderSet(tcs, model), torch.tensor(spec["tokens"][:args.length])
    compare(model, ts, tokens, ct, A_ct, args.ours_seconds)
    tr = trace(model, tokens, ts)
    nodes = active_nodes(model, tr)
    cfg = AttributionGraphConfig(prompt="(tokens)", max_feature_nodes=spec["max_feature_nodes"],
                                 row_batch_size=spec["batch_size"])
    picked = select_features(Linearised(model, tr, nodes), cfg)[0]
    ours = {tuple(f) for f in nodes.features[picked].tolist()}
    theirs = {tuple(f) for f in ct["active_features"]}
    print(f"selected features: interp {len(ours)}, circuit-tracer {len(theirs)}, in both {len(ours & theirs)} "
          f"(interp's at position 0: {sum(f[1] == 0 for f in ours)})")


def _limited(gb: float) -> Any:
    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (int(gb * 2**30), int(gb * 2**30)))
    return limit


def _run(cmd: list[str], args: argparse.Namespace) -> dict[str, Any]:
    """One tool at one length in its own process: its JSON line, or ``{"error": ...}``."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    start = time.perf_counter()
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, check=False, env=env, timeout=args.timeout,
                              preexec_fn=_limited(args.memory_gb))
    except subprocess.TimeoutExpired:
        return {"error": f"no graph after {args.timeout} s (time limit)"}
    if done.returncode != 0:  # the error, not circuit-tracer's harmless exit-time noise that follows it
        lines = [line for line in done.stderr.split("Exception ignored in")[0].splitlines() if line.strip()]
        return {"error": f"exit {done.returncode} after {time.perf_counter() - start:.0f} s: "
                         + (lines[-1] if lines else "no message")[:300]}
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


def _span(values: list[float], fmt: str) -> str:
    lo, hi = min(values), max(values)
    return format(lo, fmt) if format(lo, fmt) == format(hi, fmt) else f"{format(lo, fmt)}-{format(hi, fmt)}"


def _row(n: int, tool: str, runs: list[dict[str, Any]], n_layers: int) -> str:
    ok = [r for r in runs if "error" not in r]
    if not ok:
        return f"| {n} | {tool} | failed: {runs[0]['error']} |"
    r = ok[0]
    per = r["active_features"] / (n * n_layers)
    return (f"| {n} | {tool} | {r['active_features']} ({per:.0f}) | {r['rows']} | {r['passes']} | "
            f"{_span([x['seconds'] for x in ok], '.1f')} | {_span([100 * x['backward_share'] for x in ok], '.0f')}% | "
            f"{_span([x['peak_rss_mb'] for x in ok], '.0f')} | {_span([x['above_baseline_mb'] for x in ok], '.0f')} |"
            + ("" if len(ok) == len(runs) else f" ({len(runs) - len(ok)} run(s) failed: {runs[-1].get('error')})"))


def _ratios(pairs: list[tuple[dict[str, Any], dict[str, Any]]]) -> str:
    ok = [(a, b) for a, b in pairs if "error" not in a and "error" not in b]
    if not ok:
        return "-"
    time_r = [a["seconds"] / b["seconds"] for a, b in ok]
    mem_r = [a["above_baseline_mb"] / b["above_baseline_mb"] for a, b in ok if b["above_baseline_mb"] > 1]
    return f"time {_span(time_r, '.2f')}x, graph's peak " + (_span(mem_r, ".2f") + "x" if mem_r else "-")


def scaling_peer(args: argparse.Namespace) -> None:
    """The side-by-side table (module docstring), printed as Markdown as the runs finish."""
    here = Path(__file__).parent
    peer_python = str(Path(args.venv) / "bin" / "python")
    print(f"GPT-2-small-shaped, {args.layers} layers; ReLU transcoders d_sae {args.d_sae}, ~{args.active:g} active per "
          f"token and layer; max_feature_nodes {args.max_feature_nodes}, rows per backward pass {args.row_batch_size}; "
          f"one thread; {args.runs} run(s); load average {os.getloadavg()[0]:.1f}", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        subprocess.run([sys.executable, __file__, "prepare", "--work", tmp, "--layers", str(args.layers),
                        "--lengths", *map(str, args.lengths), "--d-sae", str(args.d_sae), "--active", str(args.active),
                        "--max-feature-nodes", str(args.max_feature_nodes),
                        "--row-batch-size", str(args.row_batch_size)], check=True)
        spec = json.loads((work / "spec.json").read_text())
        print("| tokens | tool | active features (per token and layer) | rows | backward passes | time (s) | in passes "
              "| peak RSS (MB) | graph's peak (MB) |\n|---|---|---|---|---|---|---|---|---|", flush=True)
        ratios = []
        for n in args.lengths:
            ours: list[dict[str, Any]] = []
            theirs: list[dict[str, Any]] = []
            for _ in range(args.runs):
                if "interp" not in args.tools:
                    ours.append({"error": "not run (--tools)"})
                else:
                    ours.append(_run([sys.executable, str(here / "graphs.py"), "one", "--model-dir",
                                      spec["model_dir"], "--transcoders", str(work / "interp_transcoders"),
                                      "--length", str(n), "--max-feature-nodes", str(args.max_feature_nodes),
                                      "--row-batch-size", str(args.row_batch_size), "--threads", "1"], args))
                peer_cmd = [peer_python, "-c", CT_SETUP + PEER_ONE, tmp, str(n), "1" if n == args.agree_length else "0"]
                skipped = {"error": "not run (--tools)"}
                theirs.append(_run(peer_cmd, args) if "circuit-tracer" in args.tools else skipped)
            print(_row(n, "interp", ours, args.layers), flush=True)
            print(_row(n, "circuit-tracer", theirs, args.layers), flush=True)
            ratios.append(f"- {n} tokens, interp / circuit-tracer: {_ratios(list(zip(ours, theirs)))}")
            if n == args.agree_length and (work / "ct.json").exists() and "error" not in ours[0]:
                done = subprocess.run([sys.executable, __file__, "agree", "--work", tmp, "--length", str(n),
                                       "--ours-seconds", str(ours[0]["seconds"])], capture_output=True, text=True,
                                      check=False, env={**os.environ, "OMP_NUM_THREADS": "1"})
                ratios.append(f"- adjacency agreement at {n} tokens:\n" + (done.stdout or done.stderr[-2000:]))
        print("\n".join(ratios))
    print(f"load average at the end {os.getloadavg()[0]:.1f}")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--venv", default="/tmp/peer-circuit-tracer/venv")
    p.add_argument("--layers", type=int, default=12)
    p.add_argument("--lengths", type=int, nargs="+", default=[64, 128, 256, 512])
    p.add_argument("--d-sae", type=int, default=3072)
    p.add_argument("--active", type=float, default=32, help="features active per token and layer, on average")
    p.add_argument("--max-feature-nodes", type=int, default=128)
    p.add_argument("--row-batch-size", type=int, default=32)
    p.add_argument("--runs", type=int, default=2)
    p.add_argument("--agree-length", type=int, default=64)
    p.add_argument("--tools", nargs="+", choices=["interp", "circuit-tracer"], default=["interp", "circuit-tracer"])
    p.add_argument("--timeout", type=float, default=900, help="seconds per tool and length")
    p.add_argument("--memory-gb", type=float, default=12, help="address-space limit per tool and length")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    add_arguments(sub.add_parser("scaling-peer"))
    prep = sub.add_parser("prepare")
    add_arguments(prep)
    prep.add_argument("--work", required=True)
    check = sub.add_parser("agree")
    check.add_argument("--work", required=True)
    check.add_argument("--length", type=int, required=True)
    check.add_argument("--ours-seconds", type=float, required=True)
    args = p.parse_args()
    {"scaling-peer": scaling_peer, "prepare": prepare, "agree": agree}[args.cmd](args)


if __name__ == "__main__":
    main()
