"""``interp explain``: explain every feature of a feature store in words (and, with --score, score them).

Without an LLM the n-gram explainer runs offline. With one (--base-url and --llm, or INTERP_LLM_BASE_URL
and INTERP_LLM_MODEL; the key from the environment variable named by --api-key-env), --explainer llm asks
it. Results go into the feature store (explanations/<run>/), where interp dashboard shows them. The run
resumes: run the same command again after any interruption.
"""

from __future__ import annotations

import argparse

from cli.config_flags import add_config_flags, config_kwargs

CONFIGS = (
    ("interp.autointerp.config", "AutointerpConfig", "run"),
    ("interp.autointerp.examples", "SampleConfig", "examples"),
    ("interp.autointerp.client", "LLMConfig", "LLM server"),
    ("interp.autointerp.local", "LocalConfig", "local models"),
)


def add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--features", required=True, help="feature store directory (from interp analyze)")
    p.add_argument("--api-key", default=None,
                   help="API key (prefer the environment variable named by --api-key-env: flags show in ps)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar or progress log lines")
    for module, name, title in CONFIGS:
        add_config_flags(p.add_argument_group(f"{title} ({name})"), module, name)


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("explain", help="explain features in words (LLM or offline n-grams)",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--score", action="store_true", help="also score the explanations (see interp score)")
    add_common(p)
    p.set_defaults(run=run)


def configs(args: argparse.Namespace) -> tuple:
    from interp.autointerp import AutointerpConfig, LLMConfig, LocalConfig, SampleConfig

    cfg, sample, llm, local = (cls(**config_kwargs(args, module, name)) for (module, name, _), cls in zip(
        CONFIGS, (AutointerpConfig, SampleConfig, LLMConfig, LocalConfig)))
    if not llm.configured():
        if llm.base_url or llm.llm or cfg.explainer == "llm":
            llm.resolved()  # raises with what is missing
        llm = None
    return cfg, sample, llm, local


def report(summary: object) -> None:
    from interp.autointerp import RunSummary

    assert isinstance(summary, RunSummary)
    s = summary
    print(f"{s.run_dir}: {s.explained} explained, {s.scored} scored, {s.skipped} already done, {s.failed} failed")
    u = s.usage
    print(f"LLM: {u['requests']} requests, {u['cache_hits']} cache hits, {u['retries']} retries, "
          f"{u['prompt_tokens'] + u['completion_tokens']:,} tokens" + (
              f", ${u['cost_usd']:.4f}" if u.get("cost_usd") else ""))
    if s.failures:
        print("malformed or failed answers: " + ", ".join(f"{k} {v}" for k, v in sorted(s.failures.items())))
    for name, stats in s.summary.items():
        e, c = stats["explanation"], stats["control"]
        if not e.get("n"):
            continue
        line = f"  {name:13s} {e['mean']:.3f} [{e['ci95'][0]:.3f}, {e['ci95'][1]:.3f}] over {e['n']} features"
        if c.get("n"):
            line += f"; random control {c['mean']:.3f} (5-95%: {c['p5_p95'][0]:.3f} to {c['p5_p95'][1]:.3f})"
        print(line)


def quiet_http(args: argparse.Namespace) -> None:
    """One log line per HTTP request is noise at INFO; keep it for -v."""
    import logging

    if not getattr(args, "verbose", False):
        logging.getLogger("httpx").setLevel(logging.WARNING)


def run(args: argparse.Namespace) -> int:
    from interp.autointerp import run_autointerp

    quiet_http(args)
    cfg, sample, llm, local = configs(args)
    summary = run_autointerp(args.features, cfg, sample, llm, local, explain_features=True,
                             score_features=bool(args.score), api_key=args.api_key, progress=not args.no_progress)
    report(summary)
    return 0
