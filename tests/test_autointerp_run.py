"""Auto-interpretation end to end on the demo model: offline and against a loopback LLM server, the
random-explanation control, resuming, and a real `interp explain --score` process killed with SIGKILL."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from llm_server import LLMServer

from interp.autointerp import AutointerpConfig, LLMConfig, SampleConfig, load_explanations, run_autointerp
from interp.autointerp.explanations import iter_records, run_dir

SECRET = "sk-e2e-5b1d0a77-never-log-me"


def _means(summary, name):
    return summary[name]["explanation"]["mean"], summary[name]["control"]


def test_offline_explanations_beat_the_random_control(demo_features):
    cfg = AutointerpConfig(max_features=60, scorers="detection,fuzzing,simulation,intervention")
    s = run_autointerp(demo_features, cfg, progress=False)
    assert s.explained == 60 and s.scored == 60 and s.usage["requests"] == 0
    det, det_c = _means(s.summary, "detection")
    # chance: the random control's mean balanced accuracy, with its 95% interval over features, sits at 0.5
    assert det_c["n"] >= 40 and 0.4 <= det_c["mean"] <= 0.6 and det_c["ci95"][0] <= 0.5 + 0.05
    assert det >= det_c["mean"] + 0.08
    sim, sim_c = _means(s.summary, "simulation")
    assert sim >= sim_c["mean"] + 0.2 and abs(sim_c["mean"]) < 0.15
    fuzz, fuzz_c = _means(s.summary, "fuzzing")
    assert fuzz > fuzz_c["mean"] + 0.03
    iv, iv_c = _means(s.summary, "intervention")
    assert iv > iv_c["mean"]
    rec = next(iter_records(s.run_dir))
    assert rec["format"] == "interp-autointerp-feature" and rec["explanation"].startswith("Tokens: ")
    assert set(rec["scores"]) == {"detection", "fuzzing", "simulation", "intervention"}
    groups = {e["group"] for e in rec["scores"]["detection"]["examples"]}
    assert "neighbour" in groups and "random" in groups  # hard negatives were verified and used
    assert rec["scores"]["intervention"]["changed"] > 0  # steering changed some continuations
    again = run_autointerp(demo_features, cfg, progress=False)
    assert (again.explained, again.scored, again.skipped) == (0, 0, 60)
    expl = load_explanations(demo_features)
    assert len(expl) == 60 and expl[rec["feature"]]["scores"]["detection"] == rec["scores"]["detection"]["score"]


def test_surprisal_runs_on_the_base_model(demo_features):
    cfg = AutointerpConfig(run_name="surprisal", max_features=3, scorers="surprisal,embedding")
    s = run_autointerp(demo_features, cfg, SampleConfig(hard_negatives=0), progress=False)
    rec = next(iter_records(s.run_dir))
    m = rec["scores"]["surprisal"]["metrics"]
    assert m["auroc"] is not None and m["mean_gain_activating"] is not None
    assert all(e["loss"] > 0 for e in rec["scores"]["surprisal"]["examples"])
    from interp.autointerp.localscorers import find_embedding_model

    if find_embedding_model(None) is None:  # the optional extra is absent: skipped, and nothing written
        assert "embedding" not in rec["scores"]


def test_llm_pipeline_against_a_loopback_server(demo_features):
    with LLMServer() as server:
        s = run_autointerp(demo_features, AutointerpConfig(explainer="llm", max_features=12),
                           SampleConfig(hard_negatives=0), LLMConfig(base_url=server.url, llm="fixture", concurrency=8),
                           progress=False)
    assert s.explained == 12 and s.scored == 12 and s.failed == 0 and not s.failures
    assert s.usage["requests"] == len(server.requests) and s.usage["by_purpose"]["explain"]["requests"] == 12
    assert all(r["body"].get("top_logprobs") for r in server.requests if "integers" in json.dumps(r["body"]))
    rec = next(iter_records(s.run_dir))
    assert rec["explainer"] == "llm" and rec["explanation"].startswith("The token")
    assert rec["scores"]["detection"]["metrics"]["auroc_from"] == "logprobs"
    det, det_c = _means(s.summary, "detection")
    assert det > det_c["mean"] + 0.05


def _interp(*args: str, env: dict[str, str], log: Path) -> subprocess.Popen:
    """``interp ARGS`` in a new process, its output to ``log`` (a pipe nobody reads would block it)."""
    return subprocess.Popen([sys.executable, "-m", "cli.main", *args], cwd=Path(__file__).resolve().parents[1],
                            env=env, stdout=log.open("w"), stderr=subprocess.STDOUT, text=True)


def _finished(path: Path, n_scorers: int) -> dict[int, tuple[bytes, int]]:
    out = {}
    for f in (path / "features").glob("*.json"):
        rec = json.loads(f.read_bytes())
        if len(rec.get("scores", {})) == n_scorers:
            out[int(f.stem)] = (f.read_bytes(), f.stat().st_mtime_ns)
    return out


def test_sigkill_loses_nothing_and_scores_nothing_twice(demo_features, tmp_path):
    run = run_dir(demo_features, "killed")
    with LLMServer(latency=0.05) as server:
        env = {**os.environ, "INTERP_LLM_API_KEY": SECRET, "OMP_NUM_THREADS": "1"}
        args = ("-v", "explain", "--score", "--features", str(demo_features), "--explainer", "llm",
                "--run-name", "killed", "--base-url", server.url, "--llm", "fixture", "--max-features", "16",
                "--concurrency", "2", "--hard-negatives", "0")
        first = _interp(*args, env=env, log=tmp_path / "first.log")
        deadline = time.time() + 120
        while len(_finished(run, 3)) < 4 and first.poll() is None and time.time() < deadline:
            time.sleep(0.05)
        first.send_signal(signal.SIGKILL)
        first.wait()
        assert first.returncode == -signal.SIGKILL
        before = _finished(run, 3)
        assert 4 <= len(before) < 16
        n_first = len(server.requests)
        second = _interp(*args, env=env, log=tmp_path / "second.log")
        second.wait(timeout=300)
    out1, out2 = (tmp_path / "first.log").read_text(), (tmp_path / "second.log").read_text()
    assert second.returncode == 0, out2
    after = _finished(run, 3)
    assert sorted(after) == sorted(json.loads(f.read_text())["feature"] for f in (run / "features").glob("*.json"))
    assert len(after) == 16  # no feature lost
    assert all(after[i] == before[i] for i in before)  # finished records were not written again
    assert f"{16 - len(before)} scored, {len(before)} already done" in out2
    assert f"score: {16 - len(before)}/{16 - len(before)} features (" in out2 and "feat/s), " in out2  # log lines
    assert " tokens" in out2.split("feat/s), ")[1].splitlines()[0]  # ... with the running token count
    # nothing asked twice: answers of the first run came from the cache; only requests in flight at the
    # kill (at most the concurrency, 2) can be sent again
    asked = [json.dumps(r["body"], sort_keys=True) for r in server.requests]
    assert len(set(asked[:n_first]) & set(asked[n_first:])) <= 2
    assert not list((run / "features").glob("*.tmp"))
    for text in (out1, out2):
        assert SECRET not in text
    assert "Bearer " + SECRET == server.requests[0]["headers"]["Authorization"]
    for f in Path(demo_features).rglob("*"):
        if f.is_file() and f.suffix == ".json":
            assert SECRET not in f.read_text(errors="replace"), f
