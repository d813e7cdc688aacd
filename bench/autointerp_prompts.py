"""Print the prompts interp sends for one feature, as a server receives them (docs/autointerp.md, "The prompts").

    python bench/autointerp_prompts.py --features runs/demo/features --feature 183 [--n-train 6 --n-test 3
                                       --n-non-activating 2]

Runs interp's pipeline on that one feature, against the loopback server of tests/llm_server.py, on a copy of
the store: the LLM explainer (for its prompt), then the n-gram explanation scored by detection, fuzzing and
simulation, once all at once and once on chat, no control. Prints the first request of each kind exactly as
the server recorded it (messages as ``--- role ---`` blocks; the all-at-once prompt with each tab shown as
``⇥``), and the activations of the text simulated first.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


def messages(body: dict[str, Any]) -> str:
    return "\n".join(f"--- {m['role']} ---\n{m['content']}" for m in body["messages"])


def kind(body: dict[str, Any]) -> str:
    if body.get("echo"):
        return "simulation, all at once"
    system = body["messages"][0]["content"]
    if "[EXPLANATION]" in system:
        return "explainer"
    if "correctly marked" in system:
        return "fuzzing"
    if "integers from 0 to 10" in system:
        return "simulation, chat"
    return "detection"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--features", default="runs/demo/features")
    p.add_argument("--feature", type=int, required=True)
    p.add_argument("--n-train", type=int, default=6)
    p.add_argument("--n-test", type=int, default=3)
    p.add_argument("--n-non-activating", type=int, default=2)
    args = p.parse_args()
    sys.path.insert(0, str(ROOT / "tests"))
    from llm_server import LLMServer

    from interp import load_feature_store
    from interp.autointerp import AutointerpConfig, LLMConfig, SampleConfig, run_autointerp
    from interp.autointerp.allatonce import CHECK_EXPLANATION

    sample = SampleConfig(n_train=args.n_train, n_test=args.n_test, n_non_activating=args.n_non_activating)
    runs = [("llm", "", "chat"), ("ngram", "detection,fuzzing,simulation", "all_at_once"),
            ("ngram", "simulation", "chat")]
    with tempfile.TemporaryDirectory() as tmp, LLMServer() as server:
        store = Path(shutil.copytree(args.features, Path(tmp) / "features",
                                     ignore=shutil.ignore_patterns("explanations")))
        llm = LLMConfig(base_url=server.url, llm="fixture", cache=False)
        for explainer, scorers, simulation in runs:
            cfg = AutointerpConfig(explainer=explainer, scorers=scorers or "detection", control=False,  # type: ignore[arg-type]
                                   feature_ids=str(args.feature), run_name=f"{explainer}-{simulation}",
                                   simulation=simulation)  # type: ignore[arg-type]
            run_autointerp(store, cfg, sample, llm, score_features=bool(scorers), progress=False)
        record_path = store / "explanations" / "ngram-all_at_once" / "features" / f"{args.feature}.json"
        record = json.loads(record_path.read_text())
        explanation = record["explanation"]
        print(f"n-gram explanation: {explanation}")
        seen: set[str] = set()
        for req in server.requests:
            body = req["body"]
            text = body.get("prompt") or messages(body)
            if kind(body) in seen or CHECK_EXPLANATION in text:
                continue  # repeats, and the server check's own small simulation
            seen.add(kind(body))
            extra = {k: body[k] for k in ("echo", "logprobs", "top_logprobs", "max_tokens", "temperature") if k in body}
            print(f"\n### {kind(body)} ({req['path']}, {extra})\n```")
            print(text.replace("\t", "⇥") if body.get("echo") else text)
            print("```")
        first = record["scores"]["simulation"]["examples"][0]
        print(f"\nfirst simulated text ({len(first['tokens'])} tokens), active tokens:",
              [(t, a) for t, a in zip(first["tokens"], first["acts"]) if a > 0],
              f"of a maximum of {float(load_feature_store(store).tensors['max_act'][args.feature]):.2f}")


if __name__ == "__main__":
    main()
