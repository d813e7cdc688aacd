"""Every circuit method on one task and model, side by side, as ratios to one forward pass; and how each
method's cost grows with the number of edges, on GPT-2-small-shaped models with random weights.

    python bench/circuits.py                                    # demo model, induction, every method
    python bench/circuits.py --model runs/planted --seq-len 8   # another model
    python bench/circuits.py --scaling 4,8,12                   # + GPT-2-small-shaped models of 4, 8, 12 layers

Reference passes, timed in the same process and rounds as the methods, on the task's clean prompts with the
methods' batching: **F**, one forward (no gradient) to the answer-position logits; **FB**, one forward with the
residual stream at the embeddings as a gradient leaf, plus the backward of the task metric. EAP runs one
corrupted forward and one clean forward + backward, so it should cost about ``F + FB`` (2 forwards + 1
backward). Methods run through ``interp.find_circuit`` with ``evaluate=False``; their runtime and peak memory
are its ``runtime_s`` / ``peak_memory_mb`` (the method alone: task checks excluded; peak memory is the resident
set's growth, sampled every millisecond). Rounds are interleaved (F, FB, every method, then again) and each
figure is the median over rounds; ACDC runs in the first round only (``--acdc-rounds``).

The scaling models are ``GPT2LMHeadModel(GPT2Config(n_embd=768, n_layer=L, n_head=12, vocab_size=4096))``
seeded with 0 and saved with the demo model's tokenizer (cached under ``--cache``). ACDC runs one forward per
visited edge, so above ``--acdc-max-edges`` edges it is skipped and the table says so.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

import interp
from interp.circuits.components import ComponentGraph
from interp.circuits.config import METHODS, CircuitConfig
from interp.circuits.tasks import Task, check_task, task_batches
from interp.model import DEMO_DIR

RESID_IN = "blocks.0.hook_resid_pre"


def make_gpt2_shaped(n_layers: int, cache: Path) -> Path:
    """A GPT-2-small-shaped model of ``n_layers`` blocks with random weights and the demo tokenizer (cached)."""
    from transformers import GPT2Config, GPT2LMHeadModel

    out = cache / f"gpt2-shaped-{n_layers}l"
    if (out / "config.json").exists():
        return out
    torch.manual_seed(0)
    cfg = GPT2Config(n_embd=768, n_layer=n_layers, n_head=12, vocab_size=4096, bos_token_id=0, eos_token_id=0)
    tmp = cache / f".tmp-{n_layers}l"
    GPT2LMHeadModel(cfg).save_pretrained(tmp)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copyfile(DEMO_DIR / name, tmp / name)
    tmp.rename(out)
    return out


def reference_passes(model: Any, task: Task, batch_size: int) -> tuple[Callable[[], None], Callable[[], None]]:
    """``(forward, forward_backward)`` over the task's clean prompts in batches of ``batch_size`` (see the
    module docstring)."""
    base = check_task(model, task, batch_size)
    batches = task_batches(task, base, batch_size, model.device)

    def forward() -> None:
        with torch.no_grad():
            for b in batches:
                model.logits_at(b.clean, b.positions("clean"))

    def leaf(act: torch.Tensor, hook: Any) -> torch.Tensor:
        return act.detach().requires_grad_(True)

    def forward_backward() -> None:
        with torch.enable_grad(), model.hooks([(RESID_IN, leaf)]):
            for b in batches:
                b.values(model.logits_at(b.clean, b.positions("clean"))).sum().backward()

    return forward, forward_backward


def timed(fn: Callable[[], Any]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def bench_model(model: Any, task: Task, methods: list[str], cfg: CircuitConfig, rounds: int, acdc_rounds: int,
                acdc_max_edges: int) -> dict[str, Any]:
    """Interleaved rounds of F, FB and every method; medians, ratios to F, peak memory."""
    forward, forward_backward = reference_passes(model, task, cfg.batch_size)
    forward()  # warm up
    forward_backward()
    n_edges = ComponentGraph.of(model).n_edges
    times: dict[str, list[float]] = {"F": [], "FB": []}
    memory: dict[str, list[float]] = {}
    forwards: list[int] = []
    skipped = {}
    for r in range(rounds):
        times["F"].append(timed(forward))
        times["FB"].append(timed(forward_backward))
        for method in methods:
            if method == "acdc" and n_edges > acdc_max_edges:
                skipped[method] = f"not run: {n_edges} edges > --acdc-max-edges {acdc_max_edges}"
                continue
            if method == "acdc" and r >= acdc_rounds:
                continue
            graph = interp.find_circuit(model, task, method, cfg)
            times.setdefault(method, []).append(graph.metadata["runtime_s"])
            memory.setdefault(method, []).append(graph.metadata["peak_memory_mb"])
            if method == "acdc":
                forwards.append(graph.metadata["forwards"])
    med = {k: statistics.median(v) for k, v in times.items()}
    return {
        "model": model.info.name, "n_layers": model.info.n_layers, "n_heads": model.info.n_heads,
        "d_model": model.info.d_model, "n_edges": n_edges, "n_prompts": task.n, "seq_len": int(task.clean.shape[1]),
        "seconds": med, "ratio_to_forward": {k: v / med["F"] for k, v in med.items()},
        "eap_vs_2F_1B": med["eap"] / (med["F"] + med["FB"]) if "eap" in med else None,
        "peak_memory_mb": {k: max(v) for k, v in memory.items()},
        "acdc_forwards": forwards[0] if forwards else None,
        "skipped": skipped, "rounds": rounds,
    }


def table(results: list[dict[str, Any]], methods: list[str]) -> str:
    """Markdown: one row per model, each method's runtime as a multiple of one forward (seconds below)."""
    head = "| model | layers | edges | F (s) | FB / F | " + " | ".join(methods) + " | EAP / (F + FB) |"
    lines = [head, "|" + "---|" * (6 + len(methods))]
    for res in results:
        cells = []
        for m in methods:
            if m in res["seconds"]:
                cells.append(f"{res['ratio_to_forward'][m]:.1f}× ({res['seconds'][m]:.2f} s)")
            else:
                cells.append("—")
        eap = f"{res['eap_vs_2F_1B']:.2f}" if res["eap_vs_2F_1B"] is not None else "—"
        lines.append(f"| {Path(res['model']).name} | {res['n_layers']} | {res['n_edges']:,} | "
                     f"{res['seconds']['F']:.3f} | {res['ratio_to_forward']['FB']:.1f} | " + " | ".join(cells)
                     + f" | {eap} |")
    return "\n".join(lines) + "\n"


def memory_table(results: list[dict[str, Any]], methods: list[str]) -> str:
    lines = ["| model | " + " | ".join(methods) + " |", "|" + "---|" * (1 + len(methods))]
    for res in results:
        mem = res["peak_memory_mb"]
        lines.append(f"| {Path(res['model']).name} | "
                     + " | ".join(f"{mem[m]:.0f}" if m in mem else "—" for m in methods) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="demo")
    p.add_argument("--task", default="induction")
    p.add_argument("--n-prompts", type=int, default=32)
    p.add_argument("--seq-len", type=int, default=16)
    p.add_argument("--methods", default=",".join(METHODS))
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--acdc-rounds", type=int, default=1)
    p.add_argument("--scaling", default="", help="comma-separated layer counts of GPT-2-small-shaped models")
    p.add_argument("--scaling-prompts", type=int, default=8, help="prompt pairs on the scaling models")
    p.add_argument("--scaling-seq-len", type=int, default=8)
    p.add_argument("--scaling-rounds", type=int, default=1)
    p.add_argument("--acdc-max-edges", type=int, default=200,
                   help="skip ACDC above this many edges (one forward per edge: 606 edges took over 15 min on 2 cores)")
    p.add_argument("--cache", default="/tmp/interp-bench-circuits")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default=None, help="write every figure as JSON here")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    methods = [m for m in args.methods.split(",") if m]
    load_before = os.getloadavg()
    results = []
    runs = [(args.model, args.n_prompts, args.seq_len, args.rounds)]
    runs += [(str(make_gpt2_shaped(int(n), Path(args.cache))), args.scaling_prompts, args.scaling_seq_len,
              args.scaling_rounds) for n in args.scaling.split(",") if n]
    for name, n_prompts, seq_len, rounds in runs:
        model = interp.load_model(name)
        cfg = CircuitConfig(task=args.task, n_prompts=n_prompts, seq_len=seq_len, evaluate=False)
        task = interp.make_task(args.task, model, n_prompts=n_prompts, seed=0,
                                **({"seq_len": seq_len} if args.task == "induction" else {}))
        res = bench_model(model, task, methods, cfg, rounds, args.acdc_rounds, args.acdc_max_edges)
        results.append(res)
        print(json.dumps({k: res[k] for k in ("model", "n_edges", "seconds", "skipped")}), flush=True)
    load_after = os.getloadavg()
    print(f"\ntorch threads {args.threads}; load average {load_before[0]:.1f} before, {load_after[0]:.1f} after; "
          f"{os.cpu_count()} CPUs\n")
    print("runtime as a multiple of one forward pass F (median seconds in brackets):\n")
    print(table(results, methods))
    print("peak memory (MiB, resident set growth during the method):\n")
    print(memory_table(results, methods))
    for res in results:
        sec = res["seconds"]
        if "eap" in sec:
            shown = [m for m in ("acdc", "eap", "eap-ig", "discrete-sae") if m in sec]
            print(f"{Path(res['model']).name}: " + " : ".join(shown) + " = "
                  + " : ".join(f"{sec[m] / sec['eap']:.2f}" for m in shown)
                  + (f"  (ACDC ran {res['acdc_forwards']} forwards)" if res["acdc_forwards"] else ""))
        if res["skipped"]:
            print(f"{Path(res['model']).name}: " + "; ".join(f"{m} {why}" for m, why in res["skipped"].items()))
    if args.out:
        Path(args.out).write_text(json.dumps({"results": results, "load": [load_before, load_after],
                                              "threads": args.threads}, indent=1))


if __name__ == "__main__":
    main()
