"""The activation store: the on-disk format written by ``interp cache`` and its streaming reader.

Layout of a store directory::

    manifest.json             what is in the store (see below); rewritten atomically after each shard
    shard-00000.safetensors   one tensor per hook, rows aligned across tensors:
        act/<hook>   (rows, d)  activations, flattened per token (hook_z: n_heads * d_head)
        grad/<hook>  (rows, d)  d(summed next-token loss)/d(activation), only with --with-grads
        tokens       (rows,)    int32 token id of the row
        doc          (rows,)    int64 index of the source document in corpus order
        pos          (rows,)    int32 position in that document, -1 for inserted BOS tokens

Rows are whole contexts in order: row ``r`` is position ``r % ctx_len`` of context ``r // ctx_len``.
The manifest lists each shard with its rows, contexts, byte size and sha256. A shard is listed only
once it is completely on disk, so a listed shard that fails its size or checksum is corrupt, and the
reader refuses it with an :class:`InterpError` that names it.

    verified.json             written by the cache writer (each shard is hashed while it is written) and by
                              readers: shards whose sha256 matched, and the file identity they had then
                              (``interp.activations.shard``), so readers skip hashing them again

The reader opens one shard at a time. Shuffled rows of a float32 store go through a bounded shuffle buffer
as row numbers and are gathered from the mapped shards (one copy per row); a shard is unmapped once its last
row is out, so at most the shards the last two buffer-fulls came from are mapped, whatever the size of the
store. Other stores copy rows through the buffer. Either way memory does not grow with the size of the store.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, NamedTuple

import torch

from interp.activations.mapping import PAGE, ShardSpace
from interp.activations.shard import (
    MAPS,
    Shard,
    ShardRows,
    digest,
    file_identity,
    read_record,
    verify_pool,
    write_record,
)
from interp.activations.shuffle import Block
from interp.activations.source import RowSource, act_key, grad_key
from interp.errors import InterpError, close_matches
from interp.io import read_json

log = logging.getLogger(__name__)

FORMAT = "interp-activation-store"
VERSION = 1
MANIFEST = "manifest.json"
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def shard_name(index: int) -> str:
    return f"shard-{index:05d}.safetensors"


@dataclass(frozen=True)
class ShardInfo:
    """One entry of ``manifest["shards"]``."""

    file: str
    rows: int
    contexts: int
    bytes: int
    sha256: str
    contexts_sha256: str | None = None
    """sha256 of the shard's tokens, doc and pos columns (what the corpus gave it); None in older stores."""


class Chunk(NamedTuple):
    """Consecutive rows ``[start, start + len)`` in store order, for sequential passes."""

    start: int
    acts: dict[str, torch.Tensor]
    tokens: torch.Tensor
    doc: torch.Tensor
    pos: torch.Tensor


class ActivationStore(RowSource):
    """Read access to a store directory written by :func:`interp.activations.cache_activations`."""

    path: Path

    def __init__(self, path: str | Path, verify: bool = True):
        """Open ``path``. With ``verify`` every shard's sha256 is checked the first time it is read, unless the
        store's ``verified.json`` records that it matched and the file has not changed since."""
        self.path = Path(path)
        if not (self.path / MANIFEST).is_file():
            raise InterpError(f"{self.path} is not an activation store (no {MANIFEST}). Create one with interp cache.")
        self.manifest: dict[str, Any] = read_json(self.path / MANIFEST, "store manifest")
        if self.manifest.get("format") != FORMAT:
            raise InterpError(f"{self.path / MANIFEST} is not an interp activation store manifest.")
        if self.manifest.get("version", 0) > VERSION:
            raise InterpError(f"Store {self.path} has format version {self.manifest['version']}; upgrade interp.")
        known = {f.name for f in fields(ShardInfo)}
        self.shards = [ShardInfo(**{k: v for k, v in s.items() if k in known}) for s in self.manifest["shards"]]
        if not self.complete:
            log.warning("store %s is incomplete (being written, or interrupted): reading its %d complete shards; "
                        "run the same interp cache command to finish it", self.path, len(self.shards))
        self.verify = verify
        self._verified: set[str] = set()
        if verify:
            self._trust_record()

    def _trust_record(self) -> None:
        """Mark as verified the shards the record vouches for: same sha256 as the manifest, same file identity."""
        for info, entry in ((s, read_record(self.path).get(s.file)) for s in self.shards):
            try:
                if entry and entry.get("sha256") == info.sha256 and \
                        entry.get("identity") == file_identity(self.path / info.file):
                    self._verified.add(info.file)
            except OSError:
                continue

    # ---- description ------------------------------------------------------------------------
    @property
    def hooks(self) -> list[str]:
        return list(self.manifest["hooks"])

    @property
    def complete(self) -> bool:
        return bool(self.manifest.get("complete"))

    @property
    def ctx_len(self) -> int:
        return int(self.manifest["ctx_len"])

    @property
    def n_rows(self) -> int:
        return sum(s.rows for s in self.shards)

    @property
    def has_grads(self) -> bool:
        return bool(self.manifest.get("with_grads"))

    def _max_rows(self) -> int:
        return self.n_rows

    def _maps_rows(self, hooks: list[str], grads: bool) -> bool:
        """A float32 store has its shuffled batches gathered straight from its shards mapped end to end
        (:class:`ShardSpace`: one gather for a batch whose rows come from any shards) when they can be: each
        tensor on a page of its file, as the cache writes them (checked on the first shard). Stores written
        before that (safetensors' order) copy rows through the buffer."""
        if not MAPS or self.manifest.get("dtype") != "float32" or not self.shards:
            return False
        first = Shard(self.path / self.shards[0].file)
        try:
            return all(k in first.header and first.data_start(k) % PAGE == 0 for k in self._keys(hooks, grads))
        finally:
            first.close()

    def _keys(self, hooks: list[str], grads: bool) -> list[str]:
        return [act_key(h) for h in hooks] + ([grad_key(h) for h in hooks] if grads else [])

    @property
    def model(self) -> dict[str, Any]:
        """The :class:`interp.model.ModelInfo` of the model that made the store, as a dict."""
        return dict(self.manifest["model"])

    @property
    def dtype(self) -> torch.dtype:
        return DTYPES[self.manifest["dtype"]]

    def d(self, hook: str) -> int:
        """Row width of ``hook`` (its activation flattened per token)."""
        return int(self.check_hook(hook)["d"])

    def hook_shape(self, hook: str) -> list[int]:
        """Per-token shape before flattening, e.g. ``[n_heads, d_head]`` for ``attn.hook_z``."""
        return list(self.check_hook(hook)["shape"])

    def check_hook(self, hook: str) -> dict[str, Any]:
        hooks = self.manifest["hooks"]
        if hook not in hooks:
            near = close_matches(hook, hooks)
            raise InterpError(
                f"Store {self.path} has no hook {hook!r}. It holds: {', '.join(hooks)}."
                + (f" Did you mean {near[0]!r}?" if near else "")
            )
        return dict(hooks[hook])

    # ---- shard access -----------------------------------------------------------------------
    def open_shard(self, index: int, check: bool = True) -> Shard:
        """Open shard ``index`` after checking its size and (with ``check``, the first time) its sha256."""
        info = self.shards[index]
        path = self.path / info.file
        if not path.is_file():
            raise InterpError(f"Shard {info.file} of store {self.path} is missing. Re-run interp cache to rebuild it.")
        size = path.stat().st_size
        if size != info.bytes:
            raise InterpError(
                f"Shard {info.file} of store {self.path} is {size} bytes, the manifest says {info.bytes}: it is "
                "truncated or was overwritten. Delete it and re-run the same interp cache command to rebuild it."
            )
        shard = Shard(path)
        if check and self.verify and info.file not in self._verified:
            try:
                self._check_digests({info.file: shard.sha256()})
            except BaseException:
                shard.close()
                raise
        return shard

    def _check_digests(self, digests: dict[str, str]) -> None:
        """Compare hashes with the manifest (raises for the first mismatch) and record the ones that match."""
        by_file = {s.file: s for s in self.shards}
        fresh = {}
        try:
            for file, found in digests.items():
                if found != by_file[file].sha256:
                    raise InterpError(
                        f"Shard {file} of store {self.path} fails its sha256 check: it is corrupted. Delete it and "
                        "re-run the same interp cache command to rebuild it."
                    )
                self._verified.add(file)
                fresh[file] = {"sha256": found, "identity": file_identity(self.path / file)}
        finally:
            if fresh:
                write_record(self.path, fresh)

    def _verify_in_background(self, order: list[int]) -> dict[str, Future[str]]:
        """Start hashing the shards of ``order`` not yet verified, on the shared verification threads."""
        if not self.verify:
            return {}
        pool = verify_pool()
        return {self.shards[i].file: pool.submit(digest, self.path / self.shards[i].file)
                for i in order if self.shards[i].file not in self._verified}

    def _collect(self, pending: dict[str, Future[str]], wait: bool) -> None:
        """Check the hashes that are done (all of them with ``wait``); raises for a corrupt shard."""
        done = {file: fut for file, fut in pending.items() if wait or fut.done()}
        for file in done:
            del pending[file]
        if done:
            self._check_digests({file: fut.result() for file, fut in done.items()})

    def verify_all(self) -> None:
        """Check every shard's size and checksum now (raises on the first bad one)."""
        for i in range(len(self.shards)):
            self.open_shard(i).close()

    def read(self, key: str, shard: int) -> torch.Tensor:
        """A whole tensor (``act/<hook>``, ``grad/<hook>``, ``tokens``, ``doc``, ``pos``) of one shard, copied."""
        s = self.open_shard(shard)
        try:
            return s.read(key)
        finally:
            s.close()

    def column(self, key: str) -> torch.Tensor:
        """``tokens``, ``doc`` or ``pos`` for every row of the store (small: one number per row)."""
        if key not in ("tokens", "doc", "pos"):
            raise InterpError(f"column() reads tokens, doc or pos, not {key!r}; stream activations with batches().")
        return torch.cat([self.read(key, i) for i in range(len(self.shards))]) if self.shards else torch.empty(0)

    # ---- streaming --------------------------------------------------------------------------
    def chunks(self, hooks: str | Sequence[str], chunk_rows: int = 8192, grads: bool = False) -> Iterator[Chunk]:
        """Every row in store order, ``chunk_rows`` at a time (the last chunk of a shard may be shorter)."""
        hooks = [hooks] if isinstance(hooks, str) else list(hooks)
        for h in hooks:
            self.check_hook(h)
        if grads and not self.has_grads:
            raise InterpError(f"Store {self.path} has no gradients. Re-cache with --with-grads.")
        keys = [act_key(h) for h in hooks] + ([grad_key(h) for h in hooks] if grads else [])
        start = 0
        for i, info in enumerate(self.shards):
            shard = self.open_shard(i)
            try:
                for a in range(0, info.rows, chunk_rows):
                    b = min(a + chunk_rows, info.rows)
                    acts = {k: shard.read(k, a, b).float() for k in keys}
                    yield Chunk(start + a, acts, shard.read("tokens", a, b), shard.read("doc", a, b),
                                shard.read("pos", a, b))
            finally:
                shard.close()
            start += info.rows

    def _epoch(
        self, hooks: list[str], grads: bool, block: int, gen: torch.Generator | None, exclude_bos: bool
    ) -> Iterator[Block]:
        """One epoch of contiguous row blocks, float32: shards, and blocks in them, in seeded order
        (rows then pass through a shuffle buffer of about 256 MiB unless the caller sizes it); BOS rows
        (``pos == -1``), whose activations are outliers, are dropped with ``exclude_bos``.

        Unverified shards are hashed on background threads while the epoch reads them; a shard that fails its
        sha256 raises as soon as its hash is done, at the latest when the epoch ends. Blocks of shards stored in
        float32 are lazy (:class:`ShardRows`): they name their rows in the store's shards mapped end to end
        (:class:`ShardSpace`; see :meth:`_maps_rows`), or a filling shuffle buffer reads them straight into its
        slots."""
        keys = self._keys(hooks, grads)
        n = len(self.shards)
        rows = [s.rows for s in self.shards]
        spec: dict[str, tuple[tuple[int, ...], torch.dtype]] = {k: ((self.d(k.split("/", 1)[1]),), torch.float32)
                                                                for k in keys}
        place_key = ("store", id(self), tuple(keys))  # one space per pass (each pass's table makes its own)
        shard_order = (torch.randperm(n, generator=gen) if gen is not None else torch.arange(n)).tolist()
        pending = self._verify_in_background(shard_order)
        for i in shard_order:
            info = self.shards[i]
            shard = self.open_shard(i, check=False)
            lazy = all(shard.dtype(k) == torch.float32 for k in keys)
            try:
                n_blocks = (info.rows + block - 1) // block
                order = torch.randperm(n_blocks, generator=gen) if gen is not None else torch.arange(n_blocks)
                for j in order.tolist():
                    a, b = j * block, min((j + 1) * block, info.rows)
                    keep = shard.read("pos", a, b) >= 0 if exclude_bos else None
                    if keep is not None and bool(keep.all()):
                        keep = None
                    yield ShardRows(shard, keys, a, b, keep, (place_key, lambda: ShardSpace(rows, spec), i)) \
                        if lazy else {k: shard.read(k, a, b, keep).float() for k in keys}
                    self._collect(pending, wait=False)
            finally:
                shard.close()
        self._collect(pending, wait=True)
