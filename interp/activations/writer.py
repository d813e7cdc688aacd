"""How the cache stage writes a store: shards serialised, hashed and listed on one background thread
(:class:`ShardWriter`), the one-writer-per-store lock (:class:`DirectoryLock`), and the digest of the
contexts a shard holds (:func:`contexts_digest`), which lets a resumed run notice a changed corpus."""

from __future__ import annotations

import contextlib
import hashlib
import logging
import math
import os
import queue
import threading
from pathlib import Path
from typing import Any

import torch

from interp.activations.mapping import PAGE
from interp.activations.shard import VERIFIED, VERIFIED_PART, file_identity, write_record
from interp.activations.store import FORMAT, MANIFEST, shard_name
from interp.distributed import any_rank, rank_and_world
from interp.errors import InterpError
from interp.io import TMP_SUFFIX, atomic_write_json, read_json, safetensors_header, save_tensors

log = logging.getLogger(__name__)

ShardTensors = dict[str, torch.Tensor | list[torch.Tensor]]
"""A shard to write: key -> tensor, or its row blocks in order (activations come as their batches)."""


class DirectoryLock:
    """An exclusive ``flock`` on the store directory, held by rank 0 while a job writes the store; another job
    is refused. The lock lives on the directory itself, so it adds no file to the store, and the kernel releases
    it when the process ends, however it ends."""

    def __init__(self, out: Path):
        self.out, self.fd = out, -1

    def acquire_on_rank0(self) -> None:
        """Rank 0 takes the lock (creating the directory) unless it holds it already; every rank raises the same
        InterpError when another job holds it (a collective: every rank calls this at the same point)."""
        refused: InterpError | None = None
        if rank_and_world()[0] == 0 and self.fd < 0:
            try:
                self._acquire()
            except InterpError as e:
                refused = e
        if any_rank(refused is not None):
            raise refused or InterpError(f"Another job is writing the activation store {self.out}; see rank 0.")

    def _acquire(self) -> None:
        try:
            import fcntl
        except ImportError:  # not POSIX: no locking
            return
        self.out.mkdir(parents=True, exist_ok=True)
        self.fd = os.open(self.out, os.O_RDONLY)
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as e:
            self.release()
            raise InterpError(
                f"Another process is writing the activation store {self.out} (it holds the directory's lock). Wait "
                "for it to finish, or stop it and run this command again to resume; or choose another --out."
            ) from e
        except OSError as e:  # a filesystem without flock (some network mounts)
            log.warning("cannot lock %s (%s); make sure only one interp cache writes it", self.out, e)

    def release(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def contexts_digest(tokens: torch.Tensor, doc: torch.Tensor, pos: torch.Tensor) -> str:
    """sha256 of a shard's ``tokens`` (int32), ``doc`` (int64) and ``pos`` (int32) columns, in that order: what
    the corpus gave the shard. Recorded in the shard's manifest entry as ``contexts_sha256``."""
    h = hashlib.sha256()
    for column, dtype in ((tokens, torch.int32), (doc, torch.int64), (pos, torch.int32)):
        h.update(column.to(dtype).contiguous().numpy().data)
    return h.hexdigest()


class ShardStream:
    """A shard written while its batches are computed, so that only its last batch and small columns are left to
    write when the model is done with it.

    The activation tensors come first in the file, from its first page on (the header is padded with spaces), in
    the order the batches give them, then ``pos``, ``tokens`` and ``doc`` (any order is valid safetensors; the
    reader goes by the header, and maps whole shards end to end: ``ShardSpace``). Each batch is written at its
    place as it comes (``pwrite``), the first tensor's bytes are hashed as they come (they are the file's next
    bytes), and every ``SYNC_BYTES`` written the file is flushed to disk, so the last ``fsync`` has little left.
    The header needs the shard's row count first: a shard that ends with another count (the corpus ran out) is
    dropped with :meth:`abort` and written whole instead."""

    SYNC_BYTES = 16 << 20

    def __init__(self, path: Path, spec: dict[str, tuple[tuple[int, ...], torch.dtype]], rows: int):
        self.path, self.rows, self.done = path, rows, 0
        self.keys = list(spec)
        specs = [(k, dtype, (rows, *shape)) for k, (shape, dtype) in spec.items()]
        specs += [("pos", torch.int32, (rows,)), ("tokens", torch.int32, (rows,)), ("doc", torch.int64, (rows,))]
        head, self.offsets = safetensors_header(specs, align=PAGE)  # tensors that start on a page map in place
        self.row_bytes = {k: math.prod(shape) * dtype.itemsize for k, (shape, dtype) in spec.items()}
        self.tmp = path.with_name(path.name + TMP_SUFFIX)
        self.hash = hashlib.sha256(head)
        self.fd = os.open(self.tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o666)
        self.unsynced = 0
        try:
            self._pwrite(memoryview(head), 0)
        except BaseException:
            self.abort()
            raise

    @staticmethod
    def aligned(spec: dict[str, tuple[tuple[int, ...], torch.dtype]], rows: int) -> bool:
        """Whether ``doc`` (int64, last) would start at a multiple of 8 bytes, as readers that map the file need."""
        return (rows * sum(math.prod(shape) * dtype.itemsize for shape, dtype in spec.values())) % 8 == 0

    def add(self, blocks: dict[str, torch.Tensor]) -> None:
        """Write the next rows of every activation tensor (``blocks``: key -> (n, ...) CPU tensor)."""
        n = next(iter(blocks.values())).shape[0]
        if self.done + n > self.rows:
            raise InterpError(f"Shard {self.path.name} was laid out for {self.rows} rows and got more.")
        try:
            for k in self.keys:
                data = _bytes(blocks[k])
                self._pwrite(data, self.offsets[k] + self.done * self.row_bytes[k])
                if k == self.keys[0]:
                    self.hash.update(data)
            self.done += n
            if self.unsynced >= self.SYNC_BYTES:
                os.fdatasync(self.fd)
                self.unsynced = 0
        except BaseException:
            self.abort()
            raise

    def finish(self, tensors: ShardTensors) -> str | None:
        """Write the rest (``tensors``: the shard, as :class:`ShardWriter` gets it), flush it and move the file into
        place; returns its sha256. None (and nothing written) when the shard did not get the rows it was laid
        out for: the caller writes it whole."""
        tokens = tensors["tokens"]
        assert isinstance(tokens, torch.Tensor)
        if self.done != self.rows or tokens.shape[0] != self.rows:
            self.abort()
            return None
        try:
            for k in self.keys[1:]:  # already written; hashed now, in file order
                for block in _blocks(tensors[k]):
                    self.hash.update(_bytes(block))
            for k, dtype in (("pos", torch.int32), ("tokens", torch.int32), ("doc", torch.int64)):
                column = _bytes(torch.cat(_blocks(tensors[k])).to(dtype))
                self._pwrite(column, self.offsets[k])
                self.hash.update(column)
            os.fsync(self.fd)
            os.close(self.fd)
            self.fd = -1
            os.replace(self.tmp, self.path)
        except BaseException:
            self.abort()
            raise
        return self.hash.hexdigest()

    def abort(self) -> None:
        """Close and remove the half-written file."""
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
        with contextlib.suppress(OSError):
            self.tmp.unlink(missing_ok=True)

    def _pwrite(self, view: memoryview, offset: int) -> None:
        while len(view):
            try:
                n = os.pwrite(self.fd, view, offset)
            except OSError as e:  # named, so that a full disk is reported with the file
                raise OSError(e.errno, e.strerror, str(self.path)) from e
            view, offset = view[n:], offset + n
            self.unsynced += n


def _blocks(value: torch.Tensor | list[torch.Tensor]) -> list[torch.Tensor]:
    return value if isinstance(value, list) else [value]


def _bytes(t: torch.Tensor) -> memoryview:
    """A CPU tensor's bytes, without a copy when it is contiguous."""
    return memoryview(t.contiguous().reshape(-1).view(torch.uint8).numpy()).cast("B")  # type: ignore[arg-type]


class ShardWriter:
    """Writes shards on one background thread, in order, and lists each one after it is on disk: in the
    manifest, or (``part`` = this rank, when ranks split the work) in the rank's part file, which rank 0
    merges into the manifest at the end.

    After an error the thread keeps taking (and dropping) items until it is closed, so the main thread never
    waits on a dead writer; the error is raised on the main thread by the next ``put`` or by ``close``.
    """

    def __init__(self, out: Path, manifest: dict[str, Any], part: int | None = None):
        self.out, self.manifest, self.part = out, manifest, part
        self.part_path = out / f"manifest.rank{part}.json"
        self.listed: list[dict[str, Any]] = []
        if part is not None and self.part_path.exists():
            self.listed = list(read_json(self.part_path, "store manifest part")["shards"])
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=1)
        self._error: BaseException | None = None
        self._open: tuple[int, ShardStream] | None = None  # the shard being streamed, on the writer thread
        self._thread = threading.Thread(target=self._loop, name="interp-shard-writer", daemon=True)
        self._thread.start()

    def stream(self, index: int, rows: int, blocks: dict[str, torch.Tensor]) -> None:
        """Queue the next rows of shard ``index``'s activation tensors (the shard is laid out for ``rows`` rows):
        they are written while the model computes the next ones (:class:`ShardStream`). :meth:`put` still gets
        the whole shard, and lists it."""
        self._raise()
        self._queue.put(("stream", index, rows, blocks))

    def put(self, index: int, tensors: ShardTensors, contexts: int, last: bool) -> None:
        """Queue shard ``index`` (a tensor, or a list of row blocks, per key) for writing."""
        self._raise()
        self._queue.put((index, tensors, contexts, last))

    def finish_empty(self) -> None:
        """Mark complete when the corpus ended exactly at a shard boundary."""
        self._raise()
        self._queue.put((None, None, 0, True))

    def _loop(self) -> None:
        while (item := self._queue.get()) is not StopIteration:
            if self._error is not None:
                continue  # drop: the job is ending with the error
            try:
                if item[0] == "stream":
                    self._stream(*item[1:])
                else:
                    self._write(*item)
            except BaseException as e:  # surfaced on the main thread by _raise / close
                self._error = e
                if self._open is not None:
                    self._open[1].abort()
                    self._open = None

    def _stream(self, index: int, rows: int, blocks: dict[str, torch.Tensor]) -> None:
        if self._open is None or self._open[0] != index:
            if self._open is not None:  # a shard that never reached put (not expected): its file goes
                self._open[1].abort()
                self._open = None
            spec = {k: (tuple(v.shape[1:]), v.dtype) for k, v in blocks.items()}
            if not ShardStream.aligned(spec, rows):
                return  # written whole by _write
            self._open = (index, ShardStream(self.out / shard_name(index), spec, rows))
        self._open[1].add(blocks)

    def _write(self, index: int | None, tensors: ShardTensors | None, contexts: int, last: bool) -> None:
        entry = None
        if index is not None and tensors is not None:
            name = shard_name(index)
            sha = None
            if self._open is not None and self._open[0] == index:
                sha = self._open[1].finish(tensors)  # None: it got other rows than it was laid out for
                self._open = None
            if sha is None:
                sha = save_tensors(self.out / name, tensors)  # hashed while it is written
            # recorded as verified, as a reader records a shard it hashed: the first reader skips hashing it, and
            # any later change to the file (or a copy of the store) makes readers hash it again. With several
            # ranks each keeps its own record, and rank 0 merges them when the store is complete.
            write_record(self.out, {name: {"sha256": sha, "identity": file_identity(self.out / name)}},
                         VERIFIED if self.part is None else VERIFIED_PART.format(self.part))
            tokens, doc, pos = (tensors[k] for k in ("tokens", "doc", "pos"))
            assert isinstance(tokens, torch.Tensor) and isinstance(doc, torch.Tensor) and isinstance(pos, torch.Tensor)
            entry = {"file": name, "rows": int(tokens.shape[0]), "contexts": contexts,
                     "bytes": (self.out / name).stat().st_size, "sha256": sha,
                     "contexts_sha256": contexts_digest(tokens, doc, pos)}
        if self.part is not None:
            if entry is not None:
                self.listed.append({**entry, "index": index})
                atomic_write_json(self.part_path, {"format": f"{FORMAT}-part", "shards": self.listed})
            return
        if entry is not None:
            self.manifest["shards"].append(entry)
            self.manifest["n_contexts"] += contexts
        if last:
            self.manifest["complete"] = True
        atomic_write_json(self.out / MANIFEST, self.manifest)

    def _raise(self) -> None:
        if self._error is not None:
            raise self._error

    def close(self) -> None:
        self._queue.put(StopIteration)  # the thread takes items until this one, even after an error
        self._thread.join()
        if self._open is not None:  # the job stopped inside a shard: its half-written file goes
            self._open[1].abort()
            self._open = None
        self._raise()
