"""Write the backward-compatibility fixtures in ``tests/data/compat/`` (run once, from commit 9386a50).

A store, a dictionary trained on it and a feature store, all tiny, made by the flat-layout code that
preceded the stage packages, plus ``expected.json``: what that code read back from them. ``test_compat.py``
checks that today's readers give the same results. Regenerating them with newer code would defeat the
point; the commit that made them is recorded in ``expected.json``.

    python tests/data/make_compat.py  (from the repository root, at commit 9386a50)
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from conftest import make_tiny_model  # noqa: E402
from interp.cache import CacheConfig, cache_activations  # noqa: E402
from interp.data import CorpusConfig  # noqa: E402
from interp.models import load_model  # noqa: E402
from interp.store import ActivationStore  # noqa: E402
from interp.train import TrainConfig, train_dictionary  # noqa: E402

from interp.dictionaries import load_dictionary  # noqa: E402
from interp.features import AnalyzeConfig, analyze_features, load_feature_store  # noqa: E402

OUT = Path(__file__).resolve().parent / "compat"
HOOK = "blocks.0.hook_resid_post"


def digest(t: torch.Tensor) -> str:
    return hashlib.sha256(t.contiguous().numpy().tobytes()).hexdigest()


def main() -> None:
    torch.manual_seed(0)
    shutil.rmtree(OUT, ignore_errors=True)
    work = OUT.parent / "compat-work"
    shutil.rmtree(work, ignore_errors=True)
    model_dir = make_tiny_model(work / "model", d=16, n_ctx=32)
    corpus = work / "corpus"
    corpus.mkdir()
    for i in range(12):
        (corpus / f"d{i}.txt").write_text(f"def f{i}(x):\n    return x + {i}\n" * 3)
    model = load_model(str(model_dir))
    cache_activations(CacheConfig(model=str(model_dir), hooks=(HOOK,), corpus=CorpusConfig(str(corpus)),
                                  n_tokens=512, ctx_len=32, batch_size=4, shard_mb=0.02), OUT / "store", model=model)
    store = ActivationStore(OUT / "store")
    res = train_dictionary(TrainConfig(architecture="topk", k=4, d_sae=32, n_tokens=2048, batch_size=128),
                           store, OUT / "saes", progress=False)
    sae = load_dictionary(res.dictionaries[0])
    analyze_features(sae, store, OUT / "features", AnalyzeConfig(n_top=3, n_quantiles=2, per_quantile=1,
                                                                   n_random=2, window=8), model=model)
    fs = load_feature_store(OUT / "features")
    batches = list(store.batches(HOOK, 64, epochs=1, seed=3))
    x = store.read(f"act/{HOOK}", 0)[:16]
    commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    expected = {
        "commit": commit,
        "store": {"n_rows": store.n_rows, "hooks": store.hooks, "d": store.d(HOOK),
                  "tokens": digest(store.column("tokens")), "batches_seed3": [digest(b.acts[HOOK]) for b in batches]},
        "dictionary": {"path": str(res.dictionaries[0].relative_to(OUT)), "encode": sae.encode(x).tolist(),
                       "forward": sae(x).tolist()},
        "features": {"n_features": fs.n_features, "feature": [fs.feature(i) for i in range(4)]},
    }
    (OUT / "expected.json").write_text(json.dumps(expected, indent=1, sort_keys=True) + "\n")
    shutil.rmtree(work)
    shutil.rmtree(OUT / "saes" / "checkpoint", ignore_errors=True)


if __name__ == "__main__":
    main()
