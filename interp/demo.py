"""The whole pipeline on the embedded demo model: cache -> train -> evaluate -> analyze -> dashboard.

This is what ``make demo`` / ``interp demo`` runs. Each step writes its own directory under ``out`` and
is resumable, so running the demo again reuses what is already complete.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

from interp.errors import InterpError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DemoConfig:
    """Sizes of the demo run; the defaults finish in a few minutes on 2 CPU cores."""

    model: str = "demo"
    """The model to take apart (the embedded demo model by default)."""
    corpus: str = "stdlib"
    """The corpus (see ``interp.model.corpus``): the standard library's own source by default."""
    hook: str | None = None
    """Where the dictionary reads the model; None: the residual stream after the middle block."""
    n_tokens: int = 262_144
    """Tokens cached from the standard-library corpus."""
    train_tokens: int = 1_048_576
    """Tokens the SAE trains on (several epochs over the cache)."""
    expansion: int = 8
    """Latents per residual-stream dimension."""
    k: int = 16
    """Active latents per token (TopK)."""
    seed: int = 0
    """Seed for corpus order, initialisation and data order."""

    def __post_init__(self) -> None:
        if self.n_tokens < 1024 or self.train_tokens < 1024:
            raise InterpError("The demo needs at least 1024 cached and training tokens.")


class DemoResult(NamedTuple):
    """Where the demo put things, and what it measured."""

    index_html: Path
    """The dashboard's entry page; open it in a browser (works from file://)."""
    metrics: dict[str, float]
    """Evaluation of the trained SAE (L0, FVU, dead fraction, CE loss recovered ...)."""


def run_demo(out: str | Path, cfg: DemoConfig | None = None, *, progress: bool = True) -> DemoResult:
    """Run the pipeline into ``out`` and return the dashboard path and the SAE's metrics."""
    from interp.activations.cache import CacheConfig, cache_activations
    from interp.dictionaries import load_dictionary
    from interp.features import AnalyzeConfig, analyze_features
    from interp.model.corpus import CorpusConfig
    from interp.model.model import load_model
    from interp.site.build import build_dashboard
    from interp.training import TrainConfig, train_dictionary
    from interp.training.evals import evaluate

    cfg = cfg or DemoConfig()
    out = Path(out)
    timings: dict[str, float] = {}
    t = time.perf_counter()
    model = load_model(cfg.model)
    hook = cfg.hook or f"blocks.{max(model.info.n_layers // 2 - 1, 0)}.hook_resid_post"
    cache_cfg = CacheConfig(model=cfg.model, hooks=(hook,), corpus=CorpusConfig(source=cfg.corpus, seed=cfg.seed),
                            n_tokens=cfg.n_tokens, ctx_len=min(128, model.info.n_ctx), batch_size=32)
    store = cache_activations(cache_cfg, out / "store", progress=progress, model=model)
    timings["cache_s"] = time.perf_counter() - t

    t = time.perf_counter()
    train_cfg = TrainConfig(architecture="topk", hook=hook, expansion=cfg.expansion, k=cfg.k,
                            n_tokens=cfg.train_tokens, batch_size=1024, seed=cfg.seed, name="topk")
    result = train_dictionary(train_cfg, store, out / "saes", progress=progress)
    dictionary_dir = result.dictionaries[0]
    dictionary = load_dictionary(dictionary_dir)
    timings["train_s"] = time.perf_counter() - t

    t = time.perf_counter()
    metrics = evaluate(dictionary, store, model=model).to_dict()
    (out / "eval.json").write_text(json.dumps(metrics, indent=2, default=float) + "\n")
    timings["eval_s"] = time.perf_counter() - t

    t = time.perf_counter()
    features = analyze_features(dictionary, store, out / "features", AnalyzeConfig(), model=model,
                                dictionary_path=str(dictionary_dir), progress=progress)
    timings["analyze_s"] = time.perf_counter() - t

    t = time.perf_counter()
    index = build_dashboard(features, out / "dashboard")
    timings["dashboard_s"] = time.perf_counter() - t
    log.info("demo timings: %s", ", ".join(f"{k}={v:.1f}" for k, v in timings.items()))
    return DemoResult(Path(index), {**{k: v for k, v in metrics.items() if isinstance(v, (int, float))},
                                    **timings})
