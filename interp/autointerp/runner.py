"""One explain / score run over a feature store: resumable, concurrent, and it loses nothing.

Constraints this module was designed under:
- every feature's record is written atomically as soon as its explanation, and then each of its scores,
  exists; a restarted run reads the records, skips what is finished and never scores a feature twice
  for the same scorer (answers lost in flight are usually in the response cache, so they cost nothing);
- explaining is one phase and scoring the next, so the random-explanation control of a feature is the
  explanation of another feature *of the same run* (same explainer, same style);
- the LLM is kept busy: up to ``feature_slots`` features are in progress at once and their requests
  share the client's concurrency limit; local torch work runs in a worker thread, one job at a time;
- a malformed answer or a request that fails after retries is counted, never raised; only errors that
  would fail every request (a wrong URL, model or key) stop the run.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

from interp.autointerp import explanations as fmt
from interp.autointerp.allatonce import simulation_mode
from interp.autointerp.client import LLMClient, LLMConfig, Usage
from interp.autointerp.config import AutointerpConfig, parse_features
from interp.autointerp.examples import SampleConfig, n_activating, sample_feature
from interp.autointerp.explainers import explain
from interp.autointerp.local import LocalConfig, LocalModels
from interp.autointerp.progress import Progress
from interp.autointerp.scoring import Scoring
from interp.autointerp.summary import summarise
from interp.errors import InterpError
from interp.features import load_feature_store
from interp.io import atomic_write_json, read_json, remove_temporaries

log = logging.getLogger("interp.autointerp")


class RunSummary(NamedTuple):
    """What one call did, and where the run stands."""

    run_dir: Path
    """The run's directory (``<feature store>/explanations/<run>``)."""
    explained: int
    """Features explained by this call."""
    scored: int
    """Features that got at least one new score in this call."""
    skipped: int
    """Features that needed nothing (finished by an earlier call)."""
    failed: int
    """Features whose explanation failed (no answer in the asked-for form); the next run retries them."""
    usage: dict[str, Any]
    """LLM requests, cache hits, retries, tokens (and cost) of this call."""
    failures: dict[str, int]
    """Malformed answers and failed requests of this call, by kind."""
    summary: dict[str, Any]
    """Per scorer over the whole run: mean score and control, with intervals over features."""


@dataclass
class _Run:
    fs: Any
    cfg: AutointerpConfig
    sample: SampleConfig
    path: Path
    client: LLMClient | None
    local: LocalModels
    simulation: str = "chat"
    failures: Counter[str] = field(default_factory=Counter)
    counts: Counter[str] = field(default_factory=Counter)

    def tokens(self) -> int:
        return self.client.usage.tokens if self.client else 0


def run_autointerp(
    feature_store: Any,
    cfg: AutointerpConfig | None = None,
    sample: SampleConfig | None = None,
    llm: LLMConfig | None = None,
    local: LocalConfig | None = None,
    *,
    explain_features: bool = True,
    score_features: bool = True,
    api_key: str | None = None,
    progress: bool = True,
) -> RunSummary:
    """Explain and/or score the features of ``feature_store`` (a directory or an opened store).

    ``llm`` None: no LLM (the n-gram explainer, and detection / fuzzing / simulation on the n-gram
    simulator). Results go to ``<feature store>/explanations/<run>/``; calling again resumes.
    """
    cfg, sample, local = cfg or AutointerpConfig(), sample or SampleConfig(), local or LocalConfig()
    fs = feature_store if hasattr(feature_store, "tensors") else load_feature_store(feature_store)
    if cfg.explainer == "llm" and llm is None:
        raise InterpError("The llm explainer needs an LLM: pass --base-url and --llm (or set INTERP_LLM_BASE_URL "
                          "and INTERP_LLM_MODEL), or use --explainer ngram.")
    path = fmt.run_dir(fs.path, cfg.name())
    _open_run(path, cfg, sample, llm, local)
    return _run_sync(_main(fs, cfg, sample, llm, local, path, explain_features, score_features, api_key,
                           progress))


def _run_sync(coro: Any) -> Any:
    """Run a coroutine to completion, also from a thread that already runs an event loop (Jupyter)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coro).result()


def _open_run(path: Path, cfg: AutointerpConfig, sample: SampleConfig, llm: LLMConfig | None,
              local: LocalConfig) -> None:
    """Create run.json, or check that an existing run was made with the same explainer and sampling."""
    meta_path = path / "run.json"
    (path / "features").mkdir(parents=True, exist_ok=True)
    remove_temporaries(path / "features")
    if meta_path.is_file():
        old = read_json(meta_path, "explanations run manifest")
        if old.get("explainer") != cfg.explainer or old.get("sample") != asdict(sample):
            raise InterpError(f"Run {path.name} was made with another explainer or sampling config; resume it "
                              "with the same flags, or start a new run with --run-name NAME.")
        return
    atomic_write_json(meta_path, {"format": fmt.RUN_FORMAT, "version": fmt.VERSION, "run": path.name,
                                  "explainer": cfg.explainer, "config": asdict(cfg), "sample": asdict(sample),
                                  "llm": asdict(llm) if llm else None, "local": asdict(local),
                                  "created": fmt.now(), "updated": fmt.now()})


def select_features(fs: Any, cfg: AutointerpConfig, sample: SampleConfig) -> list[int]:
    """The features a run covers: the requested ones that have at least ``min_examples`` activating contexts."""
    wanted = parse_features(cfg.feature_ids, fs.n_features)
    pool = wanted if wanted is not None else range(fs.n_features)
    out = [i for i in pool if int(fs.tensors["count"][i]) > 0 and n_activating(fs, i) >= sample.min_examples]
    return out[: cfg.max_features] if cfg.max_features is not None else out


async def _main(fs: Any, cfg: AutointerpConfig, sample: SampleConfig, llm: LLMConfig | None, local: LocalConfig,
                path: Path, do_explain: bool, do_score: bool, api_key: str | None, progress: bool) -> RunSummary:
    features = select_features(fs, cfg, sample)
    if not features:
        raise InterpError(f"No feature of {fs.path} has {sample.min_examples} or more activating examples; "
                          "lower --min-examples or analyze more tokens.")
    client = LLMClient(llm, api_key=api_key, cache_dir=fs.path / fmt.DIRNAME / "llm-cache") if llm else None
    run = _Run(fs, cfg, sample, path, client, LocalModels(fs, local))
    slots = cfg.feature_slots or (2 * client.cfg.concurrency if client else 4)
    try:
        if do_score and "simulation" in cfg.scorer_list():
            run.simulation = await simulation_mode(client, cfg)  # checks the server before any work
        if do_explain:
            await _explain_phase(run, features, slots, progress, count_skips=not do_score)
        if do_score:
            await _score_phase(run, features, slots, progress)
    finally:
        if client is not None:
            await client.__aexit__(None, None, None)
    usage = client.usage.to_json(client.cfg) if client else Usage().to_json()
    summary = summarise(path, cfg.scorer_list())
    _update_manifest(path, usage, run.failures, summary)
    return RunSummary(path, run.counts["explained"], run.counts["scored"], run.counts["skipped"],
                      run.counts["failed"], usage, dict(run.failures), summary)


async def _each(run: _Run, features: list[int], desc: str, one: Callable[[int], Awaitable[None]], slots: int,
                progress: bool) -> None:
    """``one(i)`` for every feature, ``slots`` at a time, with a progress bar (or log lines) in features/s."""
    sem = asyncio.Semaphore(slots)
    bar = Progress(len(features), desc, run.tokens, progress)

    async def bounded(i: int) -> None:
        async with sem:
            await one(i)
            bar.update()

    try:
        await asyncio.gather(*(bounded(i) for i in features))
    finally:
        bar.close()


async def _explain_phase(run: _Run, features: list[int], slots: int, progress: bool, count_skips: bool) -> None:
    todo = [i for i in features if ((fmt.read_record(run.path, i) or {}).get("explanation")) is None]
    if count_skips:
        run.counts["skipped"] += len(features) - len(todo)
    if not todo:
        return

    async def one(i: int) -> None:
        ex = sample_feature(run.fs, i, run.sample)
        got = await explain(run.client, run.cfg, ex)
        run.failures.update(got["failures"] if got else {})
        if got is None or got["explanation"] is None:
            run.counts["failed"] += 1
            return
        fmt.write_record(run.path, {"feature": i, "run": run.path.name, "explainer": run.cfg.explainer,
                                    "explanation": got["explanation"],
                                    "explain": {"train": got["train"], "raw": got["raw"]}, "scores": {}})
        run.counts["explained"] += 1

    await _each(run, todo, "explain", one, slots, progress)


async def _score_phase(run: _Run, features: list[int], slots: int, progress: bool) -> None:
    scorers = run.cfg.scorer_list()
    records = {i: r for i in features if (r := fmt.read_record(run.path, i)) and r.get("explanation") is not None}
    todo = [i for i, r in records.items() if any(s not in r.get("scores", {}) for s in scorers)]
    run.counts["skipped"] += len(records) - len(todo)
    if "simulation" in scorers:
        other = Counter(m for r in records.values() if (m := r.get("scores", {}).get("simulation", {}).get("mode"))
                        and m != run.simulation)
        if other:
            log.warning("%s of run %s were simulated %s, not %s; they are kept (start a new run with --run-name "
                        "to simulate every feature one way)", _count(sum(other.values()), "feature"), run.path.name,
                        " / ".join(sorted(other)), run.simulation)
    if not todo:
        return
    hard = await asyncio.to_thread(_hard_negatives, run, todo)
    scoring = Scoring(run.client, run.cfg, run.local, scorers, run.simulation)
    await asyncio.to_thread(scoring.prepare)
    controls = _controls(run, records, features)

    async def one(i: int) -> None:
        ex = sample_feature(run.fs, i, run.sample, hard.get(i, []))
        rec = records[i]
        for name in scorers:
            if name in rec.get("scores", {}):
                continue
            result = await scoring.score(name, ex, rec["explanation"], controls.get(i))
            if result is None:
                continue
            run.failures.update(result.get("failures", {}))
            rec.setdefault("scores", {})[name] = result
            await asyncio.to_thread(fmt.write_record, run.path, rec)
        run.counts["scored"] += 1

    await _each(run, todo, "score", one, slots, progress)


def _count(n: int, what: str) -> str:
    return f"{n} {what}" + ("" if n == 1 else "s")


def _hard_negatives(run: _Run, features: list[int]) -> dict[int, list]:
    n = round(run.sample.n_non_activating * run.sample.hard_negatives)
    if n <= 0:
        return {}
    why = run.local.available()
    if why is not None:
        log.warning("hard negatives are off (random non-activating windows only): %s", why)
        return {}
    with run.local.lock:
        return run.local.hard_negatives(features, n)


def _controls(run: _Run, records: dict[int, dict[str, Any]], features: list[int]) -> dict[int, tuple[int, str]]:
    """Feature -> (source feature, its explanation in this run): a random other explained feature."""
    if not run.cfg.control:
        return {}
    explained = sorted(records)
    out = {}
    for i in features:
        others = [j for j in explained if j != i]
        if others:
            j = random.Random(f"{run.sample.seed}:control:{i}").choice(others)
            out[i] = (j, str(records[j]["explanation"]))
    if len(explained) < 2:
        log.warning("only %d explained feature(s): no random-explanation control", len(explained))
    return out


def _update_manifest(path: Path, usage: dict[str, Any], failures: Counter[str], summary: dict[str, Any]) -> None:
    meta = read_json(path / "run.json", "explanations run manifest")
    totals = meta.get("totals") or {}
    for key in ("requests", "cache_hits", "retries", "prompt_tokens", "completion_tokens"):
        totals[key] = int(totals.get(key, 0)) + int(usage.get(key, 0))
    totals["cost_usd"] = round(float(totals.get("cost_usd", 0.0)) + float(usage.get("cost_usd", 0.0)), 6)
    fails = Counter(meta.get("failures") or {})
    fails.update(failures)
    meta.update(updated=fmt.now(), last_call=usage, totals=totals, failures=dict(fails), summary=summary)
    atomic_write_json(path / "run.json", meta)
