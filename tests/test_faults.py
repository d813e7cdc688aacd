"""Faults beyond SIGKILL, in-process: a corpus that changes between a crash and the resume, a shard writer that
dies (slow writes, then a full disk), a file-size limit (EFBIG), a reader opening a store that is being written.

The same faults on a real small filesystem, and two ``interp cache`` processes on one store, are in
``tests/test_disk_full.py``.
"""

from __future__ import annotations

import errno
import os
import resource
import shutil
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

import interp.activations.writer as writer_module
from interp.activations.cache import CacheConfig, cache_activations
from interp.activations.shard import VERIFIED
from interp.activations.store import ActivationStore
from interp.errors import InterpError
from interp.io import DiskFullError
from interp.model.corpus import CorpusConfig

TORCH_THREADS = 1
HOOK = "blocks.0.hook_resid_post"


def _cfg(model_dir: Path, corpus: Path) -> CacheConfig:
    """One batch of 4 contexts per shard (about 20 KB), 8 shards."""
    return CacheConfig(model=str(model_dir), hooks=(HOOK,), corpus=CorpusConfig(source=str(corpus)), n_tokens=1024,
                       ctx_len=32, batch_size=4, shard_mb=0.02)


def _store_bytes(path: Path, corpus: Path | None = None, as_corpus: Path | None = None) -> dict[str, bytes]:
    """Every file's bytes; with ``corpus``, that path in the manifest reads as ``as_corpus``."""
    files = {p.name: p.read_bytes() for p in sorted(path.iterdir()) if p.name != VERIFIED}  # written by readers
    if corpus is not None and as_corpus is not None:
        files["manifest.json"] = files["manifest.json"].replace(str(corpus).encode(), str(as_corpus).encode())
    return files


@pytest.fixture(scope="module")
def reference(tiny_model_dir, corpus_dir, tmp_path_factory) -> dict[str, bytes]:
    """The bytes of the store written without any fault."""
    out = tmp_path_factory.mktemp("faults") / "reference"
    store = cache_activations(_cfg(tiny_model_dir, corpus_dir), out, progress=False)
    assert store.complete and len(store.shards) == 8
    return _store_bytes(out)


def _interrupted(cfg: CacheConfig, out: Path, model, monkeypatch, after_batches: int) -> None:
    """Run the cache until the forward pass of batch ``after_batches`` raises KeyboardInterrupt (Ctrl-C)."""
    calls = []
    capture = model.capture

    def interrupt(*args, **kwargs):
        calls.append(1)
        if len(calls) > after_batches:
            raise KeyboardInterrupt
        return capture(*args, **kwargs)

    monkeypatch.setattr(model, "capture", interrupt)
    with pytest.raises(KeyboardInterrupt):
        cache_activations(cfg, out, progress=False, model=model)
    monkeypatch.setattr(model, "capture", capture)


def test_resume_refuses_a_changed_corpus(tiny_model_dir, tiny_model, corpus_dir, reference, tmp_path, monkeypatch):
    corpus = tmp_path / "corpus"
    shutil.copytree(corpus_dir, corpus)
    cfg, out = _cfg(tiny_model_dir, corpus), tmp_path / "store"
    _interrupted(cfg, out, tiny_model, monkeypatch, after_batches=3)
    partial = _store_bytes(out)
    assert '"complete": false' in partial["manifest.json"].decode() and "shard-00000.safetensors" in partial

    for f in corpus.iterdir():  # the same files, edited: each document changes a little
        f.write_text(f.read_text().replace("return", "yield"))
    with pytest.raises(InterpError, match="corpus changed.*shard-00000.*different tokens"):
        cache_activations(cfg, out, progress=False, model=tiny_model)
    assert _store_bytes(out) == partial, "nothing may be written before the change is found"

    shutil.rmtree(corpus)
    shutil.copytree(corpus_dir, corpus)  # the original corpus back: the resume goes on, byte-identical
    cache_activations(cfg, out, progress=False, model=tiny_model)
    assert _store_bytes(out, corpus, corpus_dir) == reference


def test_complete_store_refuses_a_changed_corpus(tiny_model_dir, tiny_model, corpus_dir, tmp_path):
    corpus = tmp_path / "corpus"
    shutil.copytree(corpus_dir, corpus)
    cfg, out = _cfg(tiny_model_dir, corpus), tmp_path / "store"
    cache_activations(cfg, out, progress=False, model=tiny_model)
    next(iter(sorted(corpus.iterdir()))).unlink()  # a document fewer: every later context shifts
    with pytest.raises(InterpError, match="corpus changed"):
        cache_activations(cfg, out, progress=False, model=tiny_model)


def _in_thread(fn, timeout: float = 120.0) -> BaseException | None:
    """Run ``fn`` on a thread; fail the test if it is still running after ``timeout`` seconds (a hang)."""
    box: list[BaseException | None] = [None]

    def target() -> None:
        try:
            fn()
        except BaseException as e:
            box[0] = e

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(timeout)
    assert not thread.is_alive(), f"still running after {timeout}s: the job hangs"
    return box[0]


def test_writer_dying_under_slow_writes_ends_the_job(tiny_model_dir, tiny_model, corpus_dir, reference, tmp_path,
                                                     monkeypatch):
    """Writes slower than compute, then the disk fills: the main thread is waiting to hand the writer the next
    shard when the writer fails. The job must end with the writer's error, not wait forever."""
    writes: list[str] = []

    def slow_then_full(path: Path) -> None:
        writes.append(path.name)
        time.sleep(0.4)
        if len(writes) >= 3:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))

    with monkeypatch.context() as m:
        _before_shard_writes(m, slow_then_full)
        cfg, out = _cfg(tiny_model_dir, corpus_dir), tmp_path / "store"
        error = _in_thread(lambda: cache_activations(cfg, out, progress=False, model=tiny_model))
    assert isinstance(error, DiskFullError), error
    assert "no space is left" in str(error) and "run the same interp cache command again" in str(error)
    store = ActivationStore(out)
    store.verify_all()
    assert not store.complete and len(store.shards) == 2
    assert not list(out.glob("*.tmp")), "the half-written shard must not be left behind"
    cache_activations(cfg, out, progress=False, model=tiny_model)
    assert _store_bytes(out) == reference


def _before_shard_writes(m: pytest.MonkeyPatch, before: Callable[[Path], None]) -> None:
    """Call ``before(path)`` as the writer thread finishes each shard, whichever way it writes it: the end of a
    shard written as it was computed (``ShardStream.finish``), or a shard written whole (``save_tensors``)."""
    save, finish = writer_module.save_tensors, writer_module.ShardStream.finish

    def save_after(path, tensors, metadata=None):
        before(Path(path))
        return save(path, tensors, metadata)

    def finish_after(self, tensors):
        before(self.path)
        return finish(self, tensors)

    m.setattr(writer_module, "save_tensors", save_after)
    m.setattr(writer_module.ShardStream, "finish", finish_after)


def test_file_size_limit_ends_in_a_clear_error(tiny_model_dir, tiny_model, corpus_dir, reference, tmp_path):
    """RLIMIT_FSIZE (``ulimit -f``) below a shard's size: writes fail with EFBIG (Python ignores SIGXFSZ)."""
    cfg, out = _cfg(tiny_model_dir, corpus_dir), tmp_path / "store"
    shard_bytes = len(reference["shard-00000.safetensors"])
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (shard_bytes // 2, hard))
    try:
        with pytest.raises(DiskFullError, match="file size limit") as caught:
            cache_activations(cfg, out, progress=False, model=tiny_model)
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
    assert "shard-00000.safetensors" in str(caught.value)
    assert not list(out.glob("*.tmp")), "the half-written shard must not be left behind"
    assert not ActivationStore(out).complete
    cache_activations(cfg, out, progress=False, model=tiny_model)
    assert _store_bytes(out) == reference


def test_reader_of_a_store_being_written_sees_only_complete_shards(tiny_model_dir, tiny_model, corpus_dir, reference,
                                                                   tmp_path, monkeypatch, caplog):
    _before_shard_writes(monkeypatch, lambda path: time.sleep(0.3))
    cfg, out = _cfg(tiny_model_dir, corpus_dir), tmp_path / "store"
    with pytest.raises(InterpError, match="not an activation store"):
        ActivationStore(out)
    seen = []
    thread = threading.Thread(target=lambda: cache_activations(cfg, out, progress=False, model=tiny_model))
    thread.start()
    try:
        while thread.is_alive():
            if (out / "manifest.json").exists():
                store = ActivationStore(out)  # verifies every shard it reads
                if store.shards and not store.complete:
                    rows = torch.cat([c.acts[f"act/{HOOK}"] for c in store.chunks(HOOK)])
                    seen.append((len(store.shards), rows))
            time.sleep(0.05)
    finally:
        thread.join()
    assert seen, "the reader never saw the store half-written"
    final = ActivationStore(out)
    everything = torch.cat([c.acts[f"act/{HOOK}"] for c in final.chunks(HOOK)])
    for n_shards, rows in seen:
        assert n_shards < len(final.shards)
        assert torch.equal(rows, everything[: sum(s.rows for s in final.shards[:n_shards])])
    assert "is incomplete" in caplog.text
    assert _store_bytes(out) == reference
