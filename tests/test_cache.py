"""The cache stage: exact activations and gradients, crash-safe resume, and clear errors."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from interp.activations.cache import CacheConfig, cache_activations
from interp.activations.shard import VERIFIED
from interp.activations.store import ActivationStore
from interp.errors import InterpError
from interp.model.corpus import CorpusConfig
from interp.model.model import next_token_loss

HOOKS = ("blocks.0.hook_resid_post", "blocks.1.attn.hook_z", "blocks.0.ln2.hook_normalized", "blocks.1.hook_mlp_out")


def _cfg(model_dir: Path, corpus_path: Path, **kw) -> CacheConfig:
    base = dict(model=str(model_dir), hooks=HOOKS, corpus=CorpusConfig(source=str(corpus_path)), n_tokens=2048,
                ctx_len=32, batch_size=4, shard_mb=0.25)
    base.update(kw)
    return CacheConfig(**base)


def _tokens(store: ActivationStore, n_ctx: int) -> torch.Tensor:
    return store.column("tokens")[: n_ctx * store.ctx_len].long().view(n_ctx, store.ctx_len)


def test_activations_equal_run_with_cache(tiny_model_dir, tiny_model, corpus_dir, tmp_path):
    store = cache_activations(_cfg(tiny_model_dir, corpus_dir), tmp_path / "s", progress=False)
    assert store.complete and len(store.shards) > 1
    assert store.n_rows == 64 * 32 and store.manifest["capture"] == "modules"
    n = 6
    _, cache = tiny_model.bridge.run_with_cache(_tokens(store, n))
    for hook in HOOKS:
        rows = torch.cat([store.read(f"act/{hook}", i) for i in range(len(store.shards))])[: n * 32]
        ref = cache[hook].reshape(n * 32, -1)
        # the module path computes the same sums in another order (folded weights, fused q/k/v): float32 rounding
        torch.testing.assert_close(rows, ref, rtol=1e-5, atol=1e-6, msg=hook)
    assert store.hook_shape("blocks.1.attn.hook_z") == [4, 8]


def test_gradients_equal_autograd(tiny_model_dir, tiny_model, corpus_dir, tmp_path):
    hook = "blocks.0.hook_resid_post"
    cfg = _cfg(tiny_model_dir, corpus_dir, hooks=(hook,), n_tokens=256, with_grads=True)
    store = cache_activations(cfg, tmp_path / "g", progress=False)
    tokens = _tokens(store, 4)
    # Reference: TransformerLens backward hook on the same activation, loss summed over every token.
    seen: dict[str, torch.Tensor] = {}
    bridge = tiny_model.bridge
    bridge.add_hook(hook, lambda g, hook: seen.__setitem__("g", g.detach().clone()), dir="bwd")
    params = list(bridge.parameters())
    try:
        for p in params:
            p.requires_grad_(True)
        with torch.enable_grad():
            next_token_loss(bridge(tokens), tokens).sum().backward()
    finally:
        bridge.reset_hooks()
        for p in params:
            p.requires_grad_(False)
            p.grad = None
    cached = store.read(f"grad/{hook}", 0)[: 4 * 32]
    assert torch.allclose(cached, seen["g"].reshape(4 * 32, -1), atol=1e-6, rtol=1e-5)
    assert cached.abs().sum() > 0


def _store_bytes(path: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(path.iterdir()) if p.name != VERIFIED}  # readers write VERIFIED


def _cli(out: Path, model_dir: Path, corpus: Path) -> list[str]:
    return [sys.executable, "-m", "cli.main", "cache", "--model", str(model_dir), "--corpus", str(corpus),
            "--hooks", "blocks.*.hook_resid_post", "blocks.1.attn.hook_z", "--n-tokens", "16384",
            "--ctx-len", "32", "--batch-size", "1", "--shard-mb", "0.2", "--no-progress", "--out", str(out)]


@pytest.fixture(scope="module")
def big_corpus(tmp_path_factory) -> Path:
    """About 60k tokens of made-up code, enough for a cache run that lasts a few seconds."""
    d = tmp_path_factory.mktemp("big-corpus")
    rng = random.Random(0)
    words = ["value", "index", "self", "return", "import", "data", "result", "count", "items", "key"]
    for i in range(300):
        lines = [f"def f{i}_{j}({rng.choice(words)}):\n    return {rng.choice(words)} + {j}\n" for j in range(12)]
        (d / f"d{i:03d}.txt").write_text("".join(lines))
    return d


@pytest.mark.slow
def test_sigkill_then_resume_is_byte_identical(tiny_model_dir, big_corpus, tmp_path):
    corpus_dir = big_corpus
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": str(root)}
    ref = tmp_path / "ref"
    subprocess.run(_cli(ref, tiny_model_dir, corpus_dir), check=True, env=env, cwd=root, capture_output=True)
    reference = _store_bytes(ref)
    assert sum(n.startswith("shard-") for n in reference) >= 4
    rng = random.Random(1234)
    for trial, kill_after_shards in enumerate([0, 5, 20]):
        out = tmp_path / f"run{trial}"
        proc = subprocess.Popen(_cli(out, tiny_model_dir, corpus_dir), env=env, cwd=root,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.time() + 120
        while time.time() < deadline and proc.poll() is None:
            shards = list(out.glob("shard-*.safetensors")) if out.exists() else []
            if len(shards) >= kill_after_shards and (out / "manifest.json").exists():
                break
            time.sleep(0.01)
        time.sleep(rng.uniform(0.0, 0.1))  # land somewhere inside the next shard's compute or write
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        manifest = out / "manifest.json"
        assert not manifest.exists() or '"complete": false' in manifest.read_text(), "killed too late to test"
        subprocess.run(_cli(out, tiny_model_dir, corpus_dir), check=True, env=env, cwd=root, capture_output=True)
        assert _store_bytes(out) == reference, f"trial {trial}"


def test_corrupt_shards_are_refused_by_name(tiny_model_dir, corpus_dir, tmp_path):
    out = tmp_path / "c"
    store = cache_activations(_cfg(tiny_model_dir, corpus_dir), out, progress=False)
    # the writer hashed each shard while writing it and recorded it: its first reader hashes nothing
    assert store._verified == {s.file for s in store.shards}
    shard = sorted(out.glob("shard-*.safetensors"))[1]
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0x01
    shard.write_bytes(bytes(data))
    with pytest.raises(InterpError, match=shard.name):
        list(ActivationStore(out).batches("blocks.0.hook_resid_post", 8))
    shard.write_bytes(bytes(data[:-100]))
    with pytest.raises(InterpError, match=f"{shard.name}.*truncated"):
        ActivationStore(out).verify_all()


@pytest.mark.parametrize(
    "change, match",
    [
        (dict(hooks=("blocks.0.hook_resid_pots",)), "Did you mean: blocks.0.hook_resid_post"),
        (dict(n_tokens=0), "Token budget must be positive"),
        (dict(corpus=CorpusConfig(source="/nonexistent/corpus/dir")), "does not exist"),
        (dict(hooks=("blocks.0.attn.hook_pattern",)), "not a per-token activation"),
    ],
)
def test_bad_input_fails_before_writing(tiny_model_dir, corpus_dir, tmp_path, change, match):
    out = tmp_path / "never"
    with pytest.raises(InterpError, match=match):
        cache_activations(_cfg(tiny_model_dir, corpus_dir, **change), out, progress=False)
    assert not out.exists()


def test_empty_corpus_fails_before_writing(tiny_model_dir, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "a.txt").write_text("")
    (empty / "b.txt").write_text("x")
    out = tmp_path / "never"
    with pytest.raises(InterpError, match="empty"):
        cache_activations(_cfg(tiny_model_dir, empty), out, progress=False)
    assert not out.exists()


def test_out_dir_with_another_store_is_left_alone(tiny_model_dir, corpus_dir, tmp_path):
    out = tmp_path / "s"
    cache_activations(_cfg(tiny_model_dir, corpus_dir, n_tokens=512), out, progress=False)
    before = _store_bytes(out)
    with pytest.raises(InterpError, match="different activation store.*n_tokens"):
        cache_activations(_cfg(tiny_model_dir, corpus_dir, n_tokens=1024), out, progress=False)
    assert _store_bytes(out) == before
    stray = tmp_path / "stray"
    stray.mkdir()
    (stray / "notes.txt").write_text("mine")
    with pytest.raises(InterpError, match="not empty"):
        cache_activations(_cfg(tiny_model_dir, corpus_dir), stray, progress=False)
    assert [p.name for p in stray.iterdir()] == ["notes.txt"]


@pytest.mark.parametrize("shard_mb", [0.25, 64.0])  # several shards; a store smaller than one shard
def test_complete_store_is_not_recomputed(tiny_model_dir, corpus_dir, tmp_path, shard_mb):
    out = tmp_path / "s"
    cfg = _cfg(tiny_model_dir, corpus_dir, n_tokens=512, shard_mb=shard_mb)
    cache_activations(cfg, out, progress=False)
    mtimes = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    cache_activations(cfg, out, progress=False)
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == mtimes


def test_half_precision_dtypes(tiny_model_dir, tiny_model, corpus_dir, tmp_path):
    hook = "blocks.0.hook_resid_post"
    for dtype, torch_dtype in [("bfloat16", torch.bfloat16), ("float16", torch.float16)]:
        store = cache_activations(_cfg(tiny_model_dir, corpus_dir, hooks=(hook,), n_tokens=256, dtype=dtype),
                                  tmp_path / dtype, progress=False)
        raw = store.open_shard(0).read(f"act/{hook}")
        assert raw.dtype == torch_dtype
        _, cache = tiny_model.bridge.run_with_cache(_tokens(store, 2))
        assert torch.equal(raw[:64], cache[hook].reshape(64, -1).to(torch_dtype))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_cache_matches_cpu(tiny_model_dir, corpus_dir, tmp_path):
    hook = "blocks.1.hook_resid_post"
    cpu = cache_activations(_cfg(tiny_model_dir, corpus_dir, hooks=(hook,), n_tokens=512), tmp_path / "cpu",
                            progress=False)
    gpu = cache_activations(_cfg(tiny_model_dir, corpus_dir, hooks=(hook,), n_tokens=512, device="cuda"),
                            tmp_path / "gpu", progress=False)
    assert torch.equal(cpu.column("tokens"), gpu.column("tokens"))
    assert torch.allclose(cpu.read(f"act/{hook}", 0), gpu.read(f"act/{hook}", 0), atol=1e-4, rtol=1e-4)


def test_non_finite_activations_stop_the_job_and_keep_the_shards_before(tiny_model_dir, tmp_path):
    from interp.model.model import load_model

    corpus = tmp_path / "corpus"  # one document, whose second half has words that its first half never uses
    corpus.mkdir()
    (corpus / "doc.txt").write_text("aaa " * 600 + "def value(x): return x\n" * 40)
    hook = "blocks.0.hook_resid_post"
    cfg = _cfg(tiny_model_dir, corpus, hooks=(hook,))
    clean = cache_activations(cfg, tmp_path / "clean", progress=False)
    tokens = [clean.read("tokens", i) for i in range(len(clean.shards))]
    # the first shard after the first one that holds a token no shard before it has
    k, token = next((k, t) for k in range(1, len(tokens)) for t in tokens[k].tolist()
                    if t not in set(torch.cat(tokens[:k]).tolist()))
    model = load_model(str(tiny_model_dir))
    with torch.no_grad():
        model._transformer().embed.weight[token] = float("nan")  # a broken weight: this token's row only
    out = tmp_path / "broken"
    ctx = (sum(len(t) for t in tokens[:k]) + int((tokens[k] == token).nonzero()[0])) // cfg.ctx_len
    with pytest.raises(InterpError, match=rf"Non-finite activations .* at hook {hook} in contexts from "
                                          rf"{ctx // cfg.batch_size * cfg.batch_size}\."):
        cache_activations(cfg, out, progress=False, model=model)
    broken = ActivationStore(out)  # the shards before the broken one are kept, byte for byte
    assert not broken.complete and [s.file for s in broken.shards] == [s.file for s in clean.shards[:k]]
    for s in clean.shards[:k]:
        assert (out / s.file).read_bytes() == (tmp_path / "clean" / s.file).read_bytes()
    assert not list(out.glob("*.tmp"))  # the shard that was being written as it was computed is gone


def _layout(path: Path) -> list[str]:
    import json
    import struct

    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + n])
    return sorted(header, key=lambda k: header[k]["data_offsets"][0])


def test_shards_written_while_computed_hold_what_a_whole_write_holds(tiny_model_dir, corpus_dir, tmp_path,
                                                                      monkeypatch):
    """Each batch's activations are written at their place in the shard while the next batch runs (the tensors
    laid out activations first, the first one hashed as it comes); the shard must hold exactly the tensors of a
    shard written whole at the end, under the sha256 the manifest lists."""
    import hashlib

    from safetensors.torch import load_file

    from interp.activations import writer

    cfg = _cfg(tiny_model_dir, corpus_dir, with_grads=True)
    streamed = cache_activations(cfg, tmp_path / "streamed", progress=False)
    with monkeypatch.context() as m:
        m.setattr(writer.ShardStream, "aligned", staticmethod(lambda spec, rows: False))
        whole = cache_activations(cfg, tmp_path / "whole", progress=False)
    assert len(streamed.shards) == len(whole.shards) > 2
    for a, b in zip(streamed.shards, whole.shards):
        fa, fb = streamed.path / a.file, whole.path / b.file
        assert _layout(fa)[0].startswith("act/") and _layout(fa)[-3:] == ["pos", "tokens", "doc"]
        assert _layout(fb)[0] == "doc"  # safetensors' own order: the other path
        assert a.sha256 == hashlib.sha256(fa.read_bytes()).hexdigest() and a.bytes == fa.stat().st_size
        ta, tb = load_file(str(fa)), load_file(str(fb))
        assert ta.keys() == tb.keys() and all(torch.equal(ta[k], tb[k]) for k in ta)
        assert a.contexts_sha256 == b.contexts_sha256
    assert not list(streamed.path.glob("*.tmp"))


def test_a_shard_cut_short_by_the_corpus_is_written_whole(tiny_model_dir, corpus_dir, tmp_path, caplog):
    """The last shard is laid out for the contexts still wanted; when the corpus ends first it gets fewer rows,
    so the half-streamed file is dropped and the shard is written whole."""
    cfg = _cfg(tiny_model_dir, corpus_dir, n_tokens=10**6, shard_mb=4)
    store = cache_activations(cfg, tmp_path / "s", progress=False)
    assert store.complete and "corpus ran out" in caplog.text
    last = store.shards[-1]
    assert last.rows < cfg.n_contexts * cfg.ctx_len and _layout(store.path / last.file)[0] == "doc"
    ActivationStore(store.path, verify=True).verify_all()
    store.path.joinpath("verified.json").unlink()
    ActivationStore(store.path, verify=True).verify_all()  # every shard hashed: each matches its manifest entry
    assert sum(b.acts[HOOKS[0]].shape[0] for b in store.batches(HOOKS[0], 7, drop_last=False, exclude_bos=False)) \
        == store.n_rows
    assert not list(store.path.glob("*.tmp"))


def test_a_shard_starts_computing_before_its_contexts_are_all_tokenised():
    from interp.activations.feed import shard_groups

    drawn: list[int] = []

    def corpus():
        for i in range(10):
            drawn.append(i)
            yield i

    groups = shard_groups(corpus(), per_shard=4, n_contexts=9)
    first = next(groups)
    batches = first.batches(2)
    assert next(batches) == [0, 1] and drawn == [0, 1]  # the first batch runs before the rest is drawn
    assert first.contexts() == [0, 1, 2, 3] and len(first) == 4
    assert [g.contexts() for g in groups] == [[4, 5, 6, 7], [8]] and drawn == list(range(9))
