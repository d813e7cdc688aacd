"""Backward compatibility: a store, a dictionary and a feature store written by the flat-layout code that
preceded the stage packages (commit in ``tests/data/compat/expected.json``) load with today's readers and
give the results that code gave."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest
import torch

from interp.activations.store import ActivationStore
from interp.dictionaries import load_dictionary, read_metrics
from interp.features import load_feature_store

DATA = Path(__file__).parent / "data" / "compat"
EXPECTED = json.loads((DATA / "expected.json").read_text())
HOOK = "blocks.0.hook_resid_post"


def digest(t: torch.Tensor) -> str:
    return hashlib.sha256(t.contiguous().numpy().tobytes()).hexdigest()


@pytest.fixture()
def data(tmp_path: Path) -> Path:
    """A copy, so nothing a reader might write touches the committed fixtures."""
    return Path(shutil.copytree(DATA, tmp_path / "compat"))


def test_old_store_reads_the_same_rows(data: Path) -> None:
    store, want = ActivationStore(data / "store"), EXPECTED["store"]
    assert (store.n_rows, store.hooks, store.d(HOOK)) == (want["n_rows"], want["hooks"], want["d"])
    assert digest(store.column("tokens")) == want["tokens"]
    assert [digest(b.acts[HOOK]) for b in store.batches(HOOK, 64, epochs=1, seed=3)] == want["batches_seed3"]


def test_old_dictionary_encodes_the_same(data: Path) -> None:
    want = EXPECTED["dictionary"]
    sae = load_dictionary(data / want["path"])
    x = ActivationStore(data / "store").read(f"act/{HOOK}", 0)[:16]
    with torch.no_grad():
        torch.testing.assert_close(sae.encode(x), torch.tensor(want["encode"]), rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(sae(x), torch.tensor(want["forward"]), rtol=1e-6, atol=1e-6)


def test_old_dictionary_metrics_are_read_from_its_cfg(data: Path) -> None:
    metrics = read_metrics(data / EXPECTED["dictionary"]["path"])
    assert {"fvu", "l0", "dead_fraction"} <= set(metrics) and 0 <= metrics["fvu"] < 1


def test_old_feature_store_reads_the_same(data: Path) -> None:
    fs, want = load_feature_store(data / "features"), EXPECTED["features"]
    assert fs.n_features == want["n_features"]
    assert [fs.feature(i) for i in range(4)] == want["feature"]
