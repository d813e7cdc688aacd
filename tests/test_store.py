"""The store reader: shuffled streaming is a deterministic permutation (the same batches as before its buffers
were reworked), BOS rows are dropped wherever they sit, corrupt shards are refused while hashing runs in the
background, buffers are lent per pass, and memory stays flat."""

from __future__ import annotations

import gc
import hashlib
import json
import mmap
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from interp.activations import shard as shard_module
from interp.activations.shard import VERIFIED, ShardRows
from interp.activations.store import FORMAT, MANIFEST, ActivationStore, shard_name
from interp.errors import InterpError
from interp.io import atomic_write_json, save_tensors


def write_store(path: Path, n_shards: int, rows: int, d: int, ctx_len: int = 16, grads: bool = False,
                pos: torch.Tensor | None = None, streamed: bool = False) -> ActivationStore:
    """Row i holds i in every column (grads: -i); ``pos`` defaults to a BOS every ``ctx_len`` rows. ``streamed``:
    shards laid out as the cache writes them (``ShardStream``: tensors on pages, mapped end to end by readers);
    otherwise as safetensors lays them out."""
    path.mkdir(parents=True)
    shards, start = [], 0
    for s in range(n_shards):
        ids = torch.arange(start, start + rows, dtype=torch.float32)
        tensors = {"act/h": ids[:, None].repeat(1, d), "tokens": torch.zeros(rows, dtype=torch.int32),
                   "doc": torch.zeros(rows, dtype=torch.int64),
                   "pos": pos[start : start + rows] if pos is not None
                   else (torch.arange(rows, dtype=torch.int32) % ctx_len) - 1}
        if grads:
            tensors["grad/h"] = -ids[:, None].repeat(1, d)
        if streamed:
            from interp.activations.writer import ShardStream

            keys = ["act/h", "grad/h"] if grads else ["act/h"]
            stream = ShardStream(path / shard_name(s), {k: ((d,), torch.float32) for k in keys}, rows)
            for a in range(0, rows, 97):  # in batches, as the cache hands them over
                stream.add({k: tensors[k][a : a + 97] for k in keys})
            sha = stream.finish(tensors)
        else:
            sha = save_tensors(path / shard_name(s), tensors)
        shards.append({"file": shard_name(s), "rows": rows, "contexts": rows // ctx_len,
                       "bytes": (path / shard_name(s)).stat().st_size, "sha256": sha})
        start += rows
    atomic_write_json(path / MANIFEST, {"format": FORMAT, "version": 1, "model": {"name": "none"},
                                        "hooks": {"h": {"shape": [d], "d": d}}, "ctx_len": ctx_len,
                                        "dtype": "float32", "with_grads": grads, "shards": shards,
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


# sha256 (16 hex digits) of the row-id sequences the reader gave before its buffers were reworked (main at
# 6871f24, same store and configs); rows hold their own index, so a sequence is the order rows come out in.
PINNED = {
    '{"buffer_rows": 700}': ("d4b627615c931a7e", 43),
    '{"buffer_rows": 700, "exclude_bos": false}': ("0a0387ca6a1dee07", 46),
    '{"buffer_rows": 700, "epochs": 2, "drop_last": false}': ("c69b9fa1e0565527", 88),
    '{"buffer_rows": 100, "grads": true, "drop_last": false}': ("d9378b25431c68af", 44),
    "{}": ("5ec5263cac279cef", 43),
    '{"epochs": 3, "exclude_bos": false}': ("94589126b23830b0", 140),
    '{"buffer_rows": 0}': ("3d5fd94a38320b79", 43),
    '{"shuffle": false, "drop_last": false}': ("5ed2fcd7c1c3d03c", 44),
    '{"buffer_rows": 4000, "epochs": 2}': ("fc7a591d334bead1", 87),
}


@pytest.mark.parametrize("config", list(PINNED))
def test_batches_are_those_the_previous_reader_gave(tmp_path, config):
    store = write_store(tmp_path / "s", n_shards=3, rows=1000, d=3, grads=True)
    kw = json.loads(config)
    seq = []
    for b in store.batches("h", 64, seed=3, **kw):
        seq.append([int(v) for v in b.acts["h"][:, 0].tolist()])
        assert b.acts["h"].is_contiguous() and (not kw.get("grads") or torch.equal(b.grads["h"], -b.acts["h"]))
    assert (hashlib.sha256(json.dumps(seq).encode()).hexdigest()[:16], len(seq)) == PINNED[config]


def test_bos_rows_anywhere_are_dropped(tmp_path):
    g = torch.Generator().manual_seed(0)
    pos = torch.randint(0, 50, (2 * 700,), generator=g, dtype=torch.int32)
    pos[torch.rand(2 * 700, generator=g) < 0.2] = -1  # runs of BOS rows of every length, at the shard edges too
    pos[:3] = -1
    pos[697:702] = -1
    store = write_store(tmp_path / "s", n_shards=2, rows=700, d=5, pos=pos)
    got = [int(v) for b in store.batches("h", 37, shuffle=False, drop_last=False) for v in b.acts["h"][:, 0]]
    assert got == [i for i in range(1400) if pos[i] >= 0]
    shuffled = [int(v) for b in store.batches("h", 37, buffer_rows=100, drop_last=False) for v in b.acts["h"][:, 4]]
    assert sorted(shuffled) == got


def test_a_corrupt_shard_is_refused_while_hashing_runs_in_the_background(tmp_path):
    store = write_store(tmp_path / "s", n_shards=3, rows=2000, d=8)
    shard = tmp_path / "s" / shard_name(1)
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0x01  # same size: only the sha256 can tell
    shard.write_bytes(bytes(data))
    with pytest.raises(InterpError, match=f"{shard_name(1)} .*fails its sha256"):
        list(ActivationStore(store.path).batches("h", 64))
    assert len(list(ActivationStore(store.path, verify=False).batches("h", 64))) > 0


def test_passes_borrow_buffers_and_do_not_share_them(tmp_path):
    store = write_store(tmp_path / "s", n_shards=2, rows=900, d=4)
    alone = [b.acts["h"].clone() for b in store.batches("h", 50, seed=1, buffer_rows=300)]
    first = store.batches("h", 50, seed=1, buffer_rows=300)
    second = store.batches("h", 50, seed=1, buffer_rows=300)
    together = [(a.acts["h"], b.acts["h"]) for a, b in zip(first, second)]  # two passes at once
    assert len(together) == len(alone)
    assert all(torch.equal(a, x) and torch.equal(b, x) for (a, b), x in zip(together, alone))
    kept = list(store.batches("h", 50, seed=1, buffer_rows=300))  # batches may be kept: none is overwritten
    assert all(torch.equal(k.acts["h"], x) for k, x in zip(kept, alone))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_pinned_batches_copy_to_the_gpu_without_blocking(tmp_path):
    store = write_store(tmp_path / "s", n_shards=2, rows=4096, d=64)
    want = [b.acts["h"] for b in store.batches("h", 512, seed=2)]
    stream = torch.cuda.Stream()
    with torch.cuda.stream(stream):
        got = []
        for b in store.batches("h", 512, seed=2, pin_memory=True):
            assert b.acts["h"].is_pinned()
            got.append(b.acts["h"].to("cuda", non_blocking=True))
    stream.synchronize()
    assert all(torch.equal(g.cpu(), w) for g, w in zip(got, want))


def test_verified_shards_are_recorded_and_not_hashed_again_until_they_change(tmp_path, monkeypatch):
    store = write_store(tmp_path / "s", n_shards=3, rows=500, d=4)
    hashed = []
    real = shard_module.Shard.sha256

    def counting(self):
        hashed.append(self.path.name)
        return real(self)

    monkeypatch.setattr(shard_module.Shard, "sha256", counting)
    first = [b.acts["h"] for b in ActivationStore(store.path).batches("h", 64, seed=2)]
    assert sorted(hashed) == [shard_name(i) for i in range(3)]
    hashed.clear()
    again = [b.acts["h"] for b in ActivationStore(store.path).batches("h", 64, seed=2)]  # a new reader
    assert hashed == [] and all(torch.equal(a, b) for a, b in zip(first, again))

    shard = store.path / shard_name(1)  # corrupted after it was recorded: same size, new bytes
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0x01
    shard.write_bytes(bytes(data))
    with pytest.raises(InterpError, match=f"{shard_name(1)} .*fails its sha256"):
        ActivationStore(store.path).verify_all()
    assert hashed == [shard_name(1)]  # the unchanged shards are still trusted

    (store.path / VERIFIED).write_text("{not json")  # an unreadable record is ignored: everything is hashed
    hashed.clear()
    ActivationStore(store.path, verify=True).open_shard(0).close()
    assert hashed == [shard_name(0)]


def test_lazy_rows_read_into_place_what_a_plain_read_gives(tmp_path):
    pos = torch.arange(300, dtype=torch.int32) % 7 - 1
    store = write_store(tmp_path / "s", n_shards=1, rows=300, d=6, grads=True, pos=pos)
    shard = store.open_shard(0)
    try:
        keep = shard.read("pos", 40, 250) >= 0
        rows = ShardRows(shard, ["act/h", "grad/h"], 40, 250, keep)
        assert rows.n == int(keep.sum()) and rows.spec["act/h"] == ((6,), torch.float32)
        got = rows.tensors()
        assert torch.equal(got["act/h"], shard.read("act/h", 40, 250)[keep])
        assert torch.equal(got["grad/h"], -got["act/h"])
        with pytest.raises(ValueError, match="contiguous"):
            shard.read("act/h", 40, 250, keep, out=torch.empty(rows.n, 12)[:, :6])
    finally:
        shard.close()


@pytest.mark.parametrize("tensors", [
    {"act/blocks.0.hook_resid_post": torch.randn(100, 16), "grad/blocks.0.hook_resid_post": torch.randn(100, 16),
     "tokens": torch.arange(100, dtype=torch.int32), "doc": torch.arange(100),
     "pos": torch.arange(100, dtype=torch.int32)},
    {"act/a": torch.randn(10, 3).bfloat16(), "act/b": torch.randn(10, 3).half(), "empty": torch.zeros(0, 4),
     "mask": torch.rand(5) > 0.5, "u8": torch.arange(3, dtype=torch.uint8), "i8": -torch.arange(3, dtype=torch.int8),
     "i16": torch.arange(3, dtype=torch.int16), "f64": torch.randn(7, dtype=torch.float64), "é": torch.ones(1),
     "transposed": torch.randn(8, 4).t(), "scalar": torch.tensor(2.5)},
    {},
    # row blocks, as the cache writes a shard's batches: stored as their concatenation
    {"act/h": [torch.randn(4, 3), torch.randn(0, 3), torch.randn(5, 3).t().contiguous().t()],
     "grad/h": [torch.randn(2, 3).bfloat16(), torch.randn(7, 3).bfloat16()], "tokens": torch.arange(9)},
])
def test_shards_are_written_straight_from_memory_as_safetensors_writes_them(tmp_path, tensors):
    """save_tensors writes the tensors' memory with writev and hashes it while writing; the file must be the
    bytes safetensors itself serialises, and the digest theirs."""
    from safetensors.torch import save

    sha = save_tensors(tmp_path / "x.safetensors", tensors)
    want = save({k: torch.cat(v) if isinstance(v, list) else v.contiguous() for k, v in tensors.items()})
    assert (tmp_path / "x.safetensors").read_bytes() == want
    assert sha == hashlib.sha256(want).hexdigest()
    assert not list(tmp_path.glob("*.tmp"))


def test_large_buffers_live_in_huge_page_memory_and_hold_rows_like_any_tensor(tmp_path):
    from interp.activations.shuffle import large_empty

    t = large_empty((4096, 1024), torch.float32)  # 16 MiB
    assert t.shape == (4096, 1024) and t.dtype == torch.float32 and t.is_contiguous()
    if hasattr(mmap, "MADV_HUGEPAGE"):
        assert t.data_ptr() % (2 << 20) == 0  # aligned, so 2 MiB pages can back all of it
    t.fill_(1.5)
    assert float(t.sum()) == 1.5 * t.numel()
    assert large_empty((3, 4), torch.bfloat16).shape == (3, 4)  # small: an ordinary tensor
    # a store whose shuffle buffer is large enough to take this path: every row once per epoch
    store = write_store(tmp_path / "s", n_shards=2, rows=8192, d=256)
    seen = torch.cat([b.acts["h"][:, 0] for b in store.batches("h", 4096, seed=0, exclude_bos=False)])
    assert torch.equal(seen.sort().values, torch.arange(16384, dtype=torch.float32))
    assert not torch.equal(seen, torch.arange(16384, dtype=torch.float32))


@pytest.mark.parametrize(("n_shards", "d"), [(3, 3), (3, 512), (1, 3)])
def test_batches_gathered_from_mapped_shards_are_those_copied_through_the_buffer(tmp_path, monkeypatch, n_shards, d):
    """A float32 store's rows go through the shuffle buffer as numbers and each batch is one gather from the shards
    mapped end to end (``ShardSpace``); the batches must be exactly those of copying
    the rows through the buffer (BOS rows anywhere, several epochs, a buffer that turns over many times,
    gradients, a partial last batch)."""
    from interp.activations.mapping import ShardSpace

    pos = (torch.arange(n_shards * 1024, dtype=torch.int32) % 16) - 1
    pos[torch.randperm(len(pos), generator=torch.Generator().manual_seed(0))[:150]] = -1
    store = write_store(tmp_path / "s", n_shards=n_shards, rows=1024, d=d, grads=True, pos=pos, streamed=True)
    placed: list[int] = []
    real = ShardSpace.place
    monkeypatch.setattr(ShardSpace, "place", lambda self, i, shard: (placed.append(i), real(self, i, shard))[1])
    for kw in [dict(seed=5, buffer_rows=500, epochs=2, drop_last=False, grads=True),
               dict(seed=1, epochs=3, drop_last=False)]:
        assert store._maps_rows(["h"], bool(kw.get("grads"))) == shard_module.MAPS
        placed.clear()
        mapped = [(b.acts["h"], b.grads.get("h")) for b in store.batches("h", 64, **kw)]
        assert sorted(set(placed)) == (list(range(n_shards)) if shard_module.MAPS else [])
        with monkeypatch.context() as m:
            m.setattr(ActivationStore, "_maps_rows", lambda self, hooks, grads: False)
            copied = [(b.acts["h"], b.grads.get("h")) for b in store.batches("h", 64, **kw)]
        assert len(mapped) == len(copied) > 6 * n_shards
        for (a, g), (a2, g2) in zip(mapped, copied):
            assert torch.equal(a, a2) and (g is None or torch.equal(g, g2) and torch.equal(g, -a))
            assert a.is_contiguous() and torch.equal(a, a[:, :1].expand_as(a))  # whole rows
        ids = torch.cat([a[:, 0] for a, _ in mapped]).long()
        assert ids.sort().values.tolist() == sorted(torch.nonzero(pos >= 0).squeeze(1).tolist() * kw["epochs"])


def test_mapped_shards_are_let_go_as_their_last_rows_go_out(tmp_path, monkeypatch):
    """However many shards a pass reads, only those that can still hold rows in flight stay mapped: at most the
    shards that the last two buffer-fulls and a batch came from (a row is surely out by then)."""
    from interp.activations.mapping import ShardSpace

    store = write_store(tmp_path / "s", n_shards=12, rows=300, d=4, streamed=True)
    most, real = [0], ShardSpace.passed

    def counting(self, lag):
        most[0] = max(most[0], len(self._live))
        real(self, lag)

    monkeypatch.setattr(ShardSpace, "passed", counting)
    rows = sum(b.acts["h"].shape[0] for b in store.batches("h", 50, seed=0, buffer_rows=200, exclude_bos=False))
    assert rows == 3600 - 3600 % 50
    assert 2 <= most[0] <= -(-(2 * 200 + 50) // 300) + 1  # the shards of the last 2 buffer-fulls and a batch
    # unmapping never takes rows still in flight: odd sizes, BOS rows dropped, two epochs, the copying path's batches
    for batch, buffer in [(50, 37), (7, 300), (64, 1000)]:
        kw = dict(seed=batch, buffer_rows=buffer, epochs=2, drop_last=False)
        mapped = [b.acts["h"] for b in store.batches("h", batch, **kw)]
        with monkeypatch.context() as m:
            m.setattr(ActivationStore, "_maps_rows", lambda self, hooks, grads: False)
            copied = [b.acts["h"] for b in store.batches("h", batch, **kw)]
        assert len(mapped) == len(copied) and all(torch.equal(a, b) for a, b in zip(mapped, copied))


def test_a_shard_whose_header_points_past_its_end_is_refused_before_it_is_mapped(tmp_path):
    """A header that claims data beyond the file (read without verification, so nothing else catches it) would
    fault the process when its rows were gathered; it gets an InterpError naming the shard instead."""
    import struct

    store = write_store(tmp_path / "s", n_shards=2, rows=1024, d=4, streamed=True)
    path = store.path / shard_name(1)
    raw = bytearray(path.read_bytes())
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + n])
    header["act/h"]["data_offsets"] = [o + (1 << 20) for o in header["act/h"]["data_offsets"]]
    text = json.dumps(header, separators=(",", ":")).encode()
    raw[8 : 8 + n] = text + b" " * (n - len(text))  # same header length, same file size
    path.write_bytes(bytes(raw))
    reader = ActivationStore(store.path, verify=False)
    if shard_module.MAPS:
        with pytest.raises(InterpError, match=f"{shard_name(1)}: act/h lies outside the file"):
            list(reader.batches("h", 64, seed=0))


def test_stores_whose_shards_cannot_be_mapped_end_to_end_copy_their_rows(tmp_path):
    """Shards laid out as safetensors lays them out (the small columns first) are not on pages: a store of them
    copies its rows through the buffer, however many shards it has; the cache writer's layout is mapped."""
    several = write_store(tmp_path / "several", n_shards=3, rows=1024, d=4)
    one = write_store(tmp_path / "one", n_shards=1, rows=1024, d=4)
    streamed = write_store(tmp_path / "streamed", n_shards=1, rows=1024, d=4, streamed=True)
    assert not several._maps_rows(["h"], False) and not one._maps_rows(["h"], False)
    assert streamed._maps_rows(["h"], False) == shard_module.MAPS


@pytest.mark.skipif(not shard_module.MAPS or not Path("/proc/self/maps").exists(), reason="maps shards on Linux")
def test_a_placed_shard_reads_what_a_plain_read_gives_and_is_unmapped_when_the_space_goes(tmp_path):
    from interp.activations.mapping import ShardSpace

    store = write_store(tmp_path / "s", n_shards=2, rows=512, d=8, grads=True, streamed=True)  # grads on a page too
    space = ShardSpace([512, 512], {k: ((8,), torch.float32) for k in ("act/h", "grad/h")})
    shard = store.open_shard(1)
    assert space.place(1, shard)
    shard.close()  # the mapping holds no file descriptor

    def mapped() -> int:
        return Path("/proc/self/maps").read_text().count(str(store.path / shard_name(1)))

    rows = slice(space.stride, space.stride + 512)
    assert torch.equal(space.tensors["act/h"][rows], store.read("act/h", 1))
    assert torch.equal(space.tensors["grad/h"][rows], -space.tensors["act/h"][rows])
    assert mapped() == 2  # one mapping per tensor
    del space
    gc.collect()
    assert mapped() == 0


def test_row_tables_hold_plain_blocks_in_memory_with_the_same_batches(tmp_path):
    """Blocks that cannot name their rows (tensors, or a shard whose data is not aligned) are held in memory by the
    row table until their last row goes out: the batches are those of the copying buffer."""
    from interp.activations.source import shuffled_batches

    g = torch.Generator().manual_seed(0)
    blocks = [{"act/h": torch.randn(n, 5, generator=g)} for n in (70, 3, 128, 0, 250, 64)]

    def run(by_number: bool) -> list[torch.Tensor]:
        return [b.acts["h"] for b in shuffled_batches(lambda: iter(blocks), ["h"], [5], 32, epochs=2,
                                                      gen=torch.Generator().manual_seed(4), buffer_rows=100,
                                                      grads=False, drop_last=False, by_number=by_number)]

    numbered, copied = run(True), run(False)
    assert len(numbered) == len(copied) == (2 * 515 + 31) // 32
    assert all(torch.equal(a, b) for a, b in zip(numbered, copied))
