"""Auto-interpretation throughput against an OpenAI-compatible server on loopback with a fixed latency.

    python bench/autointerp.py --features runs/demo/features [--latency 0.2] [--delphi-venv /tmp/peer-delphi]
                               [--simulation chat|all_at_once]

Part A, interp's whole pipeline (LLM explainer; detection, fuzzing and simulation, each with its random
control): features explained and scored per second at concurrency 1 and 32, their ratio (goal: >= 0.8 x
32), and tokens per feature for each purpose (as the server counts them: ~4 characters a prompt token).
``--simulation all_at_once`` simulates with echo + prompt logprobs on /completions instead of chat.

Part B, side by side with delphi (eai-delphi in a side virtualenv, never in interp's): detection and
fuzzing of the same explanations on the same examples, 5 texts per prompt, no control, at concurrency 1
and 32 (delphi: that many records scored at once, its own per-record batching), on the same server.

The server (tests/llm_server.py) runs in its own process and answers every request after ``--latency``
seconds. Numbers depend on the machine's load: each ratio is measured within one run.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DELPHI_SETUP = """\
python3 -m venv /tmp/peer-delphi && /tmp/peer-delphi/bin/pip install torch==2.13.0
echo torch==2.13.0 > /tmp/peer-delphi/constraints.txt
/tmp/peer-delphi/bin/pip install --no-deps eai-delphi==0.1.3     # its vllm dependency pulls CUDA
/tmp/peer-delphi/bin/pip install -c /tmp/peer-delphi/constraints.txt datasets transformers orjson eai-sparsify \\
    safetensors simple_parsing jaxtyping fire blobfile flask aiofiles sentence_transformers "anyio>=4.8.0" \\
    faiss-cpu "asyncer>=0.0.8" beartype httpx tiktoken"""

DELPHI_SCRIPT = r'''
import asyncio, json, sys, time, types
for n in ["vllm", "vllm.distributed", "vllm.distributed.parallel_state", "vllm.inputs"]:
    sys.modules[n] = types.ModuleType(n)      # delphi.clients imports vllm eagerly; only its offline client uses it
sys.modules["vllm"].LLM = sys.modules["vllm"].SamplingParams = object
sys.modules["vllm.distributed.parallel_state"].destroy_distributed_environment = lambda: None
sys.modules["vllm.distributed.parallel_state"].destroy_model_parallel = lambda: None
sys.modules["vllm.inputs"].TokensPrompt = dict
import torch
from delphi.clients import OpenRouter
from delphi.latents import ActivatingExample, Latent, LatentRecord, NonActivatingExample
from delphi.scorers import DetectionScorer, FuzzingScorer

url, data_path, concurrency = sys.argv[1], sys.argv[2], int(sys.argv[3])
data = json.load(open(data_path))
client = OpenRouter("fixture", api_key="none", base_url=url + "/chat/completions", max_tokens=50)

def record(f):
    ex = lambda e, cls, **kw: cls(tokens=torch.arange(len(e["tokens"])), activations=torch.tensor(e["acts"]),
                                   str_tokens=e["tokens"], **kw)
    test = [ex(e, ActivatingExample, quantile=0) for e in f["test"]]
    non = [ex(e, NonActivatingExample, distance=-1) for e in f["negatives"]]
    return LatentRecord(latent=Latent("h", f["feature"]), examples=test, test=test, not_active=non,
                        explanation=f["explanation"])

async def main():
    sem = asyncio.Semaphore(concurrency)
    scorers = [DetectionScorer(client, n_examples_shown=5), FuzzingScorer(client, n_examples_shown=5)]
    async def one(f):
        async with sem:
            for s in scorers:
                await s(record(f))
    t = time.perf_counter()
    await asyncio.gather(*(one(f) for f in data))
    return time.perf_counter() - t

print(json.dumps({"seconds": asyncio.run(main()), "features": len(data)}))
'''


def start_server(latency: float) -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen([sys.executable, str(ROOT / "tests" / "llm_server.py"), "--latency", str(latency)],
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    return proc, proc.stdout.readline().strip()


def fresh_store(src: Path, dest: Path) -> Path:
    shutil.copytree(src, dest, ignore=shutil.ignore_patterns("explanations"))
    return dest


def cpu_seconds(pid: int | None = None) -> float:
    """User + system CPU seconds of this process (or of ``pid``, read from /proc)."""
    if pid is None:
        t = os.times()
        return t.user + t.system
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def pipeline(store: Path, url: str, concurrency: int, n: int, scorers: str, explainer: str = "llm",
             control: bool = True, run_name: str | None = None, simulation: str = "chat"):
    from interp.autointerp import AutointerpConfig, LLMConfig, SampleConfig, run_autointerp

    cfg = AutointerpConfig(explainer=explainer, scorers=scorers, max_features=n, control=control,
                           run_name=run_name or f"bench-{concurrency}", simulation=simulation)  # type: ignore[arg-type]
    llm = LLMConfig(base_url=url, llm="fixture", concurrency=concurrency, cache=False)
    t = time.perf_counter()
    s = run_autointerp(store, cfg, SampleConfig(hard_negatives=0), llm, explain_features=explainer == "llm",
                       progress=False)
    return s, time.perf_counter() - t


def part_a(src: Path, url: str, work: Path, n1: int, n32: int, server_pid: int, simulation: str) -> dict:
    import interp.autointerp.runner  # noqa: F401  (imports, ~5 s here, are not part of either timing)

    out = {}
    for conc, n in ((1, n1), (32, n32)):
        store = fresh_store(src, work / f"a{conc}")
        cpu, server_cpu = cpu_seconds(), cpu_seconds(server_pid)
        s, sec = pipeline(store, url, conc, n, "detection,fuzzing,simulation", simulation=simulation)
        cpu, server_cpu = cpu_seconds() - cpu, cpu_seconds(server_pid) - server_cpu
        assert s.explained == n and s.scored == n, s
        req = s.usage["requests"]
        out[conc] = {"features": n, "seconds": sec, "features_per_s": n / sec, "requests": req, "usage": s.usage}
        print(f"interp, concurrency {conc:2d}: {n} features explained + scored in {sec:.1f} s = "
              f"{n / sec:.3f} features/s ({req} requests, {req / sec:.1f}/s; CPU per request: interp "
              f"{1000 * cpu / req:.1f} ms, server {1000 * server_cpu / req:.1f} ms)")
    ratio = out[32]["features_per_s"] / out[1]["features_per_s"]
    print(f"ratio 32 / 1: {ratio:.1f} (goal >= {0.8 * 32:.1f})")
    print("tokens per feature (prompt + completion; with the control, i.e. two explanations scored):")
    n = out[32]["features"]
    for purpose, u in sorted(out[32]["usage"]["by_purpose"].items()):
        print(f"  {purpose:11s} {(u['prompt_tokens'] + u['completion_tokens']) / n:8.0f}  "
              f"({u['requests'] / n:.1f} requests)")
    out["ratio"] = ratio
    return out


def export_examples(store: Path, n: int, path: Path) -> None:
    """The explanations of the n-gram run and the examples interp scores, for delphi to score too."""
    from interp.autointerp import SampleConfig, sample_feature
    from interp.autointerp.explanations import iter_records
    from interp.features import load_feature_store

    fs = load_feature_store(store)
    feats = []
    for rec in list(iter_records(store / "explanations" / "ngram"))[:n]:
        ex = sample_feature(fs, rec["feature"], SampleConfig(hard_negatives=0))
        dump = [{"tokens": list(e.tokens), "acts": list(e.acts)} for e in ex.test], \
            [{"tokens": list(e.tokens), "acts": list(e.acts)} for e in ex.negatives]
        feats.append({"feature": rec["feature"], "explanation": rec["explanation"], "test": dump[0],
                      "negatives": dump[1]})
    path.write_text(json.dumps(feats))


def part_b(src: Path, url: str, work: Path, n1: int, n32: int, venv: Path) -> None:
    store = fresh_store(src, work / "b")
    from interp.autointerp import AutointerpConfig, SampleConfig, run_autointerp

    run_autointerp(store, AutointerpConfig(max_features=n32, scorers="detection"), SampleConfig(hard_negatives=0),
                   progress=False, score_features=False)  # n-gram explanations for both libraries
    export_examples(store, n32, work / "delphi.json")
    python = venv / "bin" / "python"
    for conc, n in ((1, n1), (32, n32)):
        _, sec = pipeline(store, url, conc, n, "detection,fuzzing", explainer="ngram", control=False,
                          run_name="ngram")
        line = f"concurrency {conc:2d}, {n} features, detection + fuzzing: interp {n / sec:.3f} features/s"
        shutil.rmtree(store / "explanations" / "ngram", ignore_errors=True)
        run_autointerp(store, AutointerpConfig(max_features=n32, scorers="detection"),
                       SampleConfig(hard_negatives=0), progress=False, score_features=False)
        if not python.exists():
            print(line + f"; delphi skipped: no venv at {venv} (make it with:\n{DELPHI_SETUP})")
            continue
        data = json.loads((work / "delphi.json").read_text())[:n]
        (work / f"delphi-{conc}.json").write_text(json.dumps(data))
        (work / "delphi_run.py").write_text(DELPHI_SCRIPT)
        r = subprocess.run([str(python), str(work / "delphi_run.py"), url, str(work / f"delphi-{conc}.json"),
                            str(conc)], capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
        if r.returncode != 0:
            print(line + f"; delphi failed: {r.stderr.strip().splitlines()[-1] if r.stderr.strip() else r.returncode}")
            continue
        d = json.loads(r.stdout.strip().splitlines()[-1])
        print(line + f", delphi {d['features'] / d['seconds']:.3f} features/s "
              f"(interp / delphi = {(n / sec) / (d['features'] / d['seconds']):.2f})")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--features", default="runs/demo/features", help="feature store (make demo writes one)")
    p.add_argument("--latency", type=float, default=0.2, help="seconds the server takes per answer")
    p.add_argument("--n1", type=int, default=2, help="features at concurrency 1")
    p.add_argument("--n32", type=int, default=64, help="features at concurrency 32")
    p.add_argument("--delphi-venv", default=os.environ.get("INTERP_DELPHI_VENV", "/tmp/peer-delphi"))
    p.add_argument("--simulation", choices=("chat", "all_at_once"), default="chat",
                   help="how part A simulates (all_at_once: /completions with echo + prompt logprobs)")
    p.add_argument("--skip-delphi", action="store_true")
    p.add_argument("--only-delphi", action="store_true", help="part B only")
    args = p.parse_args()
    src = Path(args.features)
    if not (src / "manifest.json").is_file():
        sys.exit(f"No feature store at {src}: run `make demo` (it writes runs/demo/features) or pass --features.")
    server, url = start_server(args.latency)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            print(f"server {url}, latency {args.latency * 1000:.0f} ms per request; load average "
                  f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
            if not args.only_delphi:
                print(f"simulation: {args.simulation}")
                part_a(src, url, Path(tmp), args.n1, args.n32, server.pid, args.simulation)
            if not args.skip_delphi:
                part_b(src, url, Path(tmp), max(args.n1, 4), args.n32, Path(args.delphi_venv))
    finally:
        server.terminate()
        server.wait()
    print(f"load average at the end {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
