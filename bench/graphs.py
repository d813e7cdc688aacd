"""Attribution graphs against prompt length, and side by side with circuit-tracer.

``scaling``: a GPT-2-small-shaped model (12 layers, d_model 768, 12 heads, d_mlp 3072; random weights, the demo
model's tokenizer) with random per-layer skip transcoders (TopK, ``--k`` active features per token and layer,
``--d-sae`` features), one prompt of stdlib source cut to each length. Each length runs in its own process, so
its peak resident memory is its own. Per length: active features, feature rows computed, transposed passes
(backward passes), wall time, the share spent in the passes, peak RSS, the graph's own peak (peak RSS minus the
resident memory after a 16-token warm-up graph, which loads the weights), the trace's tensors, the adjacency's
size, and the kept graph.

``peer``: the same tiny GPT-2 and per-layer ReLU transcoders given to interp and to circuit-tracer (its side venv,
``--venv``): circuit-tracer's pydantic graph models validate interp's exported JSON, and both tools' adjacency
entries between the same nodes are compared (max relative difference).

``scaling-peer``: interp and circuit-tracer side by side against prompt length, on the ``scaling`` model with
per-layer ReLU transcoders written in circuit-tracer's format (bench/graphs_scaling_peer.py says how).

Usage:
    python bench/graphs.py scaling-peer --venv /tmp/peer-circuit-tracer/venv [--layers 12] [--lengths 64 128 256 512]
    python bench/graphs.py scaling [--lengths 64 128 256 512 1024 2048] [--max-feature-nodes 128]
    python bench/graphs.py peer --venv /tmp/peer-circuit-tracer/venv
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import cast

import torch
from graphs_common import CT_SETUP, compare, gpt2_small_shaped, readable_by_peer, stdlib_tokens, write_peer_transcoders


def _rss_mb() -> float:
    """Peak resident memory of this process so far."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _current_mb() -> float:
    """Resident memory now."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def one(args: argparse.Namespace) -> None:
    """One length, in this process; prints one JSON line."""
    from interp.circuits import attribution
    from interp.circuits.graph_api import AttributionGraphConfig, attribution_graph
    from interp.circuits.replacement import TranscoderSet
    from interp.dictionaries import create, load_dictionary
    from interp.model import load_model

    torch.set_num_threads(args.threads)
    model = load_model(str(args.model_dir))
    if args.transcoders is not None:  # saved interp dictionaries, one directory per layer (``scaling-peer``)
        tcs = [load_dictionary(args.transcoders / f"layer_{layer}") for layer in range(model.info.n_layers)]
    else:
        g = torch.Generator().manual_seed(1)
        tcs = []
        for layer in range(model.info.n_layers):
            d = create("skip_transcoder", 768, args.d_sae, hook_in=f"blocks.{layer}.ln2.hook_normalized",
                       hook_out=f"blocks.{layer}.hook_mlp_out", normalization="none", k=args.k,
                       model_fingerprint=model.info.fingerprint)
            with torch.no_grad():
                for p in d.parameters():
                    p.copy_(torch.randn(p.shape, generator=g) * 0.03)
            tcs.append(d)
    ts = TranscoderSet(tcs, model)
    tokens = stdlib_tokens(model, args.length)
    warm = AttributionGraphConfig(prompt="(tokens)", max_feature_nodes=8, row_batch_size=args.row_batch_size)
    attribution_graph(model, ts, warm, tokens=tokens[:16])  # weights loaded, allocator warm
    baseline = _current_mb()
    spent = {"passes": 0, "seconds": 0.0}
    rows = attribution.Linearised.rows

    def timed(self, targets):
        start = time.perf_counter()
        try:
            return rows(self, targets)
        finally:
            spent["passes"] += 1
            spent["seconds"] += time.perf_counter() - start

    attribution.Linearised.rows = timed  # type: ignore[method-assign]
    cfg = AttributionGraphConfig(prompt="(tokens)", max_feature_nodes=args.max_feature_nodes,
                                 row_batch_size=args.row_batch_size)
    start = time.perf_counter()
    result = attribution_graph(model, ts, cfg, tokens=tokens)
    total = time.perf_counter() - start
    meta = result.graph.metadata
    print(json.dumps({
        "tool": "interp", "length": args.length, "n_layers": model.info.n_layers,
        "active_features": meta["n_active_features"], "feature_rows": meta["n_feature_rows"],
        "rows": meta["n_backward_rows"], "passes": spent["passes"], "seconds": total,
        "pass_seconds": spent["seconds"], "backward_share": spent["seconds"] / total, "peak_rss_mb": _rss_mb(),
        "above_baseline_mb": _rss_mb() - baseline,
        "trace_mb": result.trace.nbytes / 2**20,
        "adjacency_mb": result.rows.edges.numel() * 4 / 2**20, "kept_nodes": len(result.graph.nodes),
        "kept_edges": len(result.graph.edges), "replacement": meta["replacement_score"],
    }))


def scaling(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = gpt2_small_shaped(Path(tmp) / "model", args.layers, max(args.lengths))
        print(f"GPT-2-small-shaped, {args.layers} layers, skip transcoders d_sae {args.d_sae} TopK k={args.k}; "
              f"max_feature_nodes {args.max_feature_nodes}, row batch {args.row_batch_size}, {args.threads} thread(s)")
        print("| tokens | active features | rows | passes | time (s) | in passes | peak RSS (MB) | graph's peak "
              "(MB) | trace (MB) | adjacency (MB) | kept nodes / edges |")
        print("|---|---|---|---|---|---|---|---|---|---|---|")
        for n in args.lengths:
            cmd = [sys.executable, __file__, "one", "--model-dir", str(model_dir), "--length", str(n),
                   "--d-sae", str(args.d_sae), "--k", str(args.k), "--max-feature-nodes", str(args.max_feature_nodes),
                   "--row-batch-size", str(args.row_batch_size), "--threads", str(args.threads)]
            done = subprocess.run(cmd, capture_output=True, text=True, check=False)
            if done.returncode != 0:
                print(f"| {n} | failed: {done.stderr.strip().splitlines()[-1:]} |")
                continue
            r = json.loads(done.stdout.strip().splitlines()[-1])
            print(f"| {n} | {r['active_features']} | {r['rows']} | {r['passes']} | {r['seconds']:.1f} | "
                  f"{100 * r['backward_share']:.0f}% | {r['peak_rss_mb']:.0f} | {r['above_baseline_mb']:.0f} | "
                  f"{r['trace_mb']:.0f} | {r['adjacency_mb']:.1f} | {r['kept_nodes']} / {r['kept_edges']} |",
                  flush=True)


PEER_SCRIPT = CT_SETUP + r"""
work = Path(sys.argv[1])
spec = json.loads((work / "spec.json").read_text())
torch.set_num_threads(1)
out = {}
# 1. circuit-tracer's own pydantic models read interp's exported graph JSON
from circuit_tracer.frontend.graph_models import Model, Link, Node
data = json.loads((work / "export" / "interp.json").read_text())
m = Model.model_validate(data)
links = [Link.model_validate(l) for l in m.links]
index = json.loads((work / "export" / "graph-metadata.json").read_text())
out["validated"] = {"nodes": len(m.nodes), "links": len(links), "index_graphs": len(index["graphs"])}
# 2. circuit-tracer's attribution on the same model, transcoders and tokens
from circuit_tracer import attribute
rm = replacement_model(spec["model_dir"], work / "transcoders" / "config.yaml")
tokens = torch.tensor(spec["tokens"])
t0 = time.perf_counter()
g = attribute(tokens, rm, max_n_logits=spec["max_n_logits"], desired_logit_prob=spec["desired_logit_prob"],
              batch_size=64, max_feature_nodes=None)
out["seconds"] = time.perf_counter() - t0
out["active_features"] = g.active_features[g.selected_features].tolist()
out["logit_tokens"] = [int(t.vocab_idx) for t in g.logit_targets]
out["n_layers"] = g.cfg.n_layers
from safetensors.torch import save_file
save_file({"adjacency": g.adjacency_matrix.contiguous()}, str(work / "ct_adjacency.safetensors"))
(work / "ct.json").write_text(json.dumps(out))
"""


def peer(args: argparse.Namespace) -> None:
    """interp and circuit-tracer on one tiny GPT-2, per-layer ReLU transcoders and prompt (module docstring)."""
    from safetensors.torch import load_file

    from interp.circuits.graph_api import AttributionGraphConfig, attribution_graph
    from interp.circuits.replacement import TranscoderSet
    from interp.dictionaries import create
    from interp.formats.circuit_tracer import export_circuit_tracer
    from interp.model import DEMO_DIR, load_model

    torch.set_num_threads(1)
    python = Path(args.venv) / "bin" / "python"
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel

        tok = AutoTokenizer.from_pretrained(DEMO_DIR)
        torch.manual_seed(0)
        GPT2LMHeadModel(GPT2Config(n_layer=2, n_embd=64, n_head=4, vocab_size=len(tok), n_positions=128,
                                   bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
                        ).save_pretrained(work / "model")
        tok.save_pretrained(work / "model")
        readable_by_peer(work / "model")
        model = load_model(str(work / "model"))
        g = torch.Generator().manual_seed(1)
        tcs = []
        for layer in range(2):
            d = create("transcoder", 64, 128, hook_in=f"blocks.{layer}.ln2.hook_normalized",
                       hook_out=f"blocks.{layer}.hook_mlp_out", normalization="none",
                       model_fingerprint=model.info.fingerprint)
            with torch.no_grad():
                for p in d.parameters():
                    p.copy_(torch.randn(p.shape, generator=g) * 0.2)
                cast(torch.Tensor, d.b_enc).sub_(0.5)  # sparse codes
            tcs.append(d)
        ts = TranscoderSet(tcs, model)
        write_peer_transcoders(ts, work / "transcoders", "interp-peer-check")
        prompt = "def add(a, b):\n    return a + b\n\nclass Point:\n    def __init__(self, x, y):\n"
        tokens = model.to_tokens(prompt)[0]
        cfg = AttributionGraphConfig(prompt=prompt, max_feature_nodes=10**6, row_batch_size=64)  # as the peer's
        start = time.perf_counter()
        result = attribution_graph(model, ts, cfg)
        ours_s = time.perf_counter() - start
        export_circuit_tracer(result.graph, work / "export", slug="interp")
        (work / "spec.json").write_text(json.dumps({"model_dir": str(work / "model"), "tokens": tokens.tolist(),
                                                    "max_n_logits": cfg.max_n_logits,
                                                    "desired_logit_prob": cfg.desired_logit_prob}))
        done = subprocess.run([str(python), "-c", PEER_SCRIPT, str(work)], capture_output=True, text=True, check=False)
        if done.returncode != 0:
            print("circuit-tracer failed:\n" + done.stderr[-3000:])
            return
        ct = json.loads((work / "ct.json").read_text())
        A_ct = load_file(str(work / "ct_adjacency.safetensors"))["adjacency"]
        print(f"circuit-tracer validated interp's JSON: {ct['validated']}")
        compare(model, ts, tokens, ct, A_ct, ours_s)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    for name in ("scaling", "one"):
        s = sub.add_parser(name)
        s.add_argument("--d-sae", type=int, default=3072)
        s.add_argument("--k", type=int, default=8)
        s.add_argument("--max-feature-nodes", type=int, default=128)
        s.add_argument("--row-batch-size", type=int, default=32)
        s.add_argument("--threads", type=int, default=1)
    sub.choices["scaling"].add_argument("--lengths", type=int, nargs="+", default=[64, 128, 256, 512, 1024, 2048])
    sub.choices["scaling"].add_argument("--layers", type=int, default=12)
    sub.choices["one"].add_argument("--model-dir", type=Path, required=True)
    sub.choices["one"].add_argument("--length", type=int, required=True)
    sub.choices["one"].add_argument("--transcoders", type=Path, help="saved interp dictionaries, layer_<i> each")
    peer_parser = sub.add_parser("peer")
    peer_parser.add_argument("--venv", default="/tmp/peer-circuit-tracer/venv")
    import graphs_scaling_peer

    graphs_scaling_peer.add_arguments(sub.add_parser("scaling-peer"))
    args = p.parse_args()
    {"scaling": scaling, "one": one, "peer": peer, "scaling-peer": graphs_scaling_peer.scaling_peer}[args.cmd](args)


if __name__ == "__main__":
    main()
