"""The store reader: shuffled streaming is a deterministic permutation, and memory stays flat."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from interp.activations.store import FORMAT, MANIFEST, ActivationStore, shard_name
from interp.io import atomic_write_json, save_tensors


def write_store(path: Path, n_shards: int, rows: int, d: int, ctx_len: int = 16, seed: int = 0) -> ActivationStore:
    """A store in the on-disk format whose row i holds the value i in every column (so rows are traceable)."""
    path.mkdir(parents=True)
    shards = []
    start = 0
    for s in range(n_shards):
        ids = torch.arange(start, start + rows, dtype=torch.float32)
        pos = (torch.arange(rows, dtype=torch.int32) % ctx_len) - 1
        tensors = {"act/h": ids[:, None].repeat(1, d), "tokens": torch.zeros(rows, dtype=torch.int32),
                   "doc": torch.zeros(rows, dtype=torch.int64), "pos": pos}
        sha = save_tensors(path / shard_name(s), tensors)
        shards.append({"file": shard_name(s), "rows": rows, "contexts": rows // ctx_len,
                       "bytes": (path / shard_name(s)).stat().st_size, "sha256": sha})
        start += rows
    atomic_write_json(path / MANIFEST, {"format": FORMAT, "version": 1, "model": {"name": "none"},
                                        "hooks": {"h": {"shape": [d], "d": d}}, "ctx_len": ctx_len,
                                        "dtype": "float32", "with_grads": False, "shards": shards,
                                        "n_contexts": start // ctx_len, "complete": True})
    return ActivationStore(path)


def _ids(batches) -> list[int]:
    return [int(v) for b in batches for v in b.acts["h"][:, 0].tolist()]


def test_batches_are_a_seeded_permutation(tmp_path):
    store = write_store(tmp_path / "s", n_shards=5, rows=1000, d=4)
    kw = dict(buffer_rows=700, exclude_bos=False, drop_last=False)
    first = _ids(store.batches("h", 64, seed=3, **kw))
    assert sorted(first) == list(range(5000))
    assert first != list(range(5000))
    assert first == _ids(store.batches("h", 64, seed=3, **kw))
    assert first != _ids(store.batches("h", 64, seed=4, **kw))
    two = _ids(store.batches("h", 64, seed=3, epochs=2, **kw))
    assert sorted(two) == sorted(list(range(5000)) * 2)
    assert all(b.acts["h"].shape[0] == 64 for b in store.batches("h", 64, seed=0))


def test_exclude_bos_drops_exactly_the_bos_rows(tmp_path):
    store = write_store(tmp_path / "s", n_shards=2, rows=320, d=2, ctx_len=16)
    got = sorted(_ids(store.batches("h", 10, drop_last=False)))
    assert got == [i for i in range(640) if i % 16 != 0]


def test_unshuffled_order_and_chunks(tmp_path):
    store = write_store(tmp_path / "s", n_shards=3, rows=100, d=2)
    assert _ids(store.batches("h", 10, shuffle=False, exclude_bos=False, buffer_rows=20)) == list(range(300))
    starts = [c.start for c in store.chunks("h", chunk_rows=40)]
    assert starts == [0, 40, 80, 100, 140, 180, 200, 240, 280]


_PEAK = """
import resource, sys
from interp.activations.store import ActivationStore
s = ActivationStore(sys.argv[1])
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
n = sum(b.acts["h"].shape[0] for b in s.batches("h", 512, buffer_rows=8192))
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base, n)
"""


@pytest.mark.slow
def test_reader_memory_does_not_grow_with_store(tmp_path):
    small = write_store(tmp_path / "small", n_shards=2, rows=32768, d=64)  # 16 MiB
    big = write_store(tmp_path / "big", n_shards=16, rows=32768, d=64)  # 128 MiB
    peaks = {}
    for name, store in [("small", small), ("big", big)]:
        out = subprocess.run([sys.executable, "-c", _PEAK, str(store.path)], capture_output=True, text=True,
                             check=True)
        kib, rows = map(int, out.stdout.split())
        assert rows > 0
        peaks[name] = kib
    grown_mib = (peaks["big"] - peaks["small"]) / 1024
    assert grown_mib < 16, f"peak RSS grew {grown_mib:.1f} MiB for 112 MiB more data: {json.dumps(peaks)}"
