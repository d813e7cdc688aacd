"""How the cache stage writes a store: shards serialised, hashed and listed on one background thread
(:class:`ShardWriter`), the one-writer-per-store lock (:class:`DirectoryLock`), and the digest of the
contexts a shard holds (:func:`contexts_digest`), which lets a resumed run notice a changed corpus."""

from __future__ import annotations

import hashlib
import logging
import os
import queue
import threading
from pathlib import Path
from typing import Any

import torch

from interp.activations.shard import file_identity, write_record
from interp.activations.store import FORMAT, MANIFEST, shard_name
from interp.distributed import any_rank, rank_and_world
from interp.errors import InterpError
from interp.io import atomic_write_json, read_json, save_tensors

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
        self._thread = threading.Thread(target=self._loop, name="interp-shard-writer", daemon=True)
        self._thread.start()

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
                self._write(*item)
            except BaseException as e:  # surfaced on the main thread by _raise / close
                self._error = e

    def _write(self, index: int | None, tensors: ShardTensors | None, contexts: int, last: bool) -> None:
        entry = None
        if index is not None and tensors is not None:
            name = shard_name(index)
            sha = save_tensors(self.out / name, tensors)  # hashed while it is written
            # recorded as verified, as a reader records a shard it hashed: the first reader skips hashing it, and
            # any later change to the file (or a copy of the store) makes readers hash it again. Only one process
            # writes the record: with several ranks, the first reader hashes their shards.
            if self.part is None:
                write_record(self.out, {name: {"sha256": sha, "identity": file_identity(self.out / name)}})
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
        self._raise()
