"""The cache stage: run a model over a corpus and write an activation store (format in ``interp.activations.store``).

Guarantees:
- Everything that can be wrong with the input (hook names, corpus, budget, an output directory that
  holds another store, activations that are not per-token) is detected before the first byte is written.
- Kill the process at any moment and run the same call again: it resumes after the last complete shard,
  and the finished store is byte-identical to one written without interruption. This holds because the
  context sequence is a pure function of the corpus config, shards hold a fixed number of contexts, and
  batches never straddle a shard boundary, so every shard is computed from the same batches either way.
- The forward pass stops after the last hooked block (unless gradients are asked for).
- Shards are serialised, hashed and written on a background thread while the model runs. An error in
  that thread (a full disk, say) ends the job on the main thread with that error; the writer never leaves
  the main thread waiting for it.
- A resumed run checks that the corpus still gives the contexts its finished shards hold (each shard's entry
  keeps a sha256 of its token ids, document indices and positions, ``contexts_sha256``) and refuses a changed
  corpus before it writes anything; a finished store checks its first shard's contexts the same way.
- One job at a time writes a store: rank 0 holds an ``flock`` on the directory (``interp.activations.writer``).
- A write that does not fit on the disk ends in an InterpError that says what to do; the store stays valid
  and the same command resumes it once there is space.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import math
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch

from interp.activations.feed import ShardGroup, prefetch, prepend, shard_groups
from interp.activations.shard import VERIFIED_PART, read_record, write_record
from interp.activations.source import act_key, grad_key, probe_shapes
from interp.activations.store import DTYPES, FORMAT, MANIFEST, VERSION, ActivationStore
from interp.activations.writer import DirectoryLock, ShardWriter, contexts_digest
from interp.distributed import barrier, check_same_everywhere, rank_and_world
from interp.errors import InterpError
from interp.io import atomic_write_json, disk_full_errors, read_json, remove_temporaries
from interp.model.corpus import Context, CorpusConfig, iter_contexts
from interp.model.model import Model, load_model
from interp.progress import progress_bar

log = logging.getLogger(__name__)
PART_GLOB = "manifest.rank*.json"
"""Per-rank lists of finished shards while ranks split the work (merged into the manifest at the end)."""


@dataclass(frozen=True)
class CacheConfig:
    """What to cache. Everything here (except ``device``) determines the store's bytes."""

    model: str = "demo"
    """``demo``, a local Hugging Face checkpoint directory, or a hub / TransformerLens name."""
    hooks: tuple[str, ...] = ("blocks.*.hook_resid_post",)
    """Hook names or fnmatch patterns, e.g. ``blocks.*.hook_resid_post`` or ``blocks.0.attn.hook_z``."""
    corpus: CorpusConfig = field(default_factory=CorpusConfig)
    """Which documents, in which order (see ``interp.model.corpus``)."""
    n_tokens: int = 1_000_000
    """Token budget: contexts are cached until at least this many tokens are stored."""
    ctx_len: int = 128
    """Tokens per context, BOS included."""
    batch_size: int = 32
    """Contexts per forward pass."""
    shard_mb: float = 128
    """Approximate shard size in MB; a shard holds a whole number of batches."""
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    """Stored dtype: float32, bfloat16 or float16."""
    with_grads: bool = False
    """Also store the gradient of the summed next-token loss with respect to each hooked activation."""
    device: str = "cpu"
    """Where the model runs (cpu, cuda, cuda:1 ...)."""
    processing: Literal["default", "transformer_lens", "none"] = "default"
    """Weight processing at load (``interp.model.PROCESSING``): default (SAELens's coordinates, equal to
    the checkpoint's own hidden states), transformer_lens (also centred), or none."""

    def __post_init__(self) -> None:
        if isinstance(self.hooks, str):
            object.__setattr__(self, "hooks", (self.hooks,))
        object.__setattr__(self, "hooks", tuple(self.hooks))
        if not self.hooks:
            raise InterpError("No hooks given. Pass --hooks, e.g. 'blocks.*.hook_resid_post'.")
        if self.n_tokens <= 0:
            raise InterpError(f"Token budget must be positive, got {self.n_tokens}. Pass --n-tokens, e.g. 1000000.")
        if self.ctx_len < 2:
            raise InterpError(f"ctx_len must be at least 2 (BOS + one token), got {self.ctx_len}.")
        if self.batch_size < 1 or self.shard_mb <= 0:
            raise InterpError("batch_size must be at least 1 and shard_mb positive.")
        if self.dtype not in DTYPES:
            raise InterpError(f"dtype must be one of {', '.join(DTYPES)}, got {self.dtype!r}.")

    @property
    def n_contexts(self) -> int:
        return math.ceil(self.n_tokens / self.ctx_len)


def cache_activations(
    cfg: CacheConfig, out_dir: str | Path, *, progress: bool = True, model: Model | None = None
) -> ActivationStore:
    """Write (or resume, or find complete) the activation store for ``cfg`` in ``out_dir``.

    ``model`` reuses an already loaded model (it must be the one ``cfg.model`` names). Under ``torchrun``
    the ranks split the shards (shard ``s`` is computed by rank ``s % world``), each writes its own, and rank
    0 merges one manifest at the end: the store is byte-identical to one process's, and a rerun with any
    number of processes resumes it.
    """
    out = Path(out_dir)
    rank, world = rank_and_world()
    _check_out_dir(out)
    lock = DirectoryLock(out)
    try:
        if out.is_dir():  # refuse a second job before loading the model
            lock.acquire_on_rank0()
        if model is None:
            model = load_model(cfg.model, device=cfg.device, processing=cfg.processing)
        hooks = model.resolve_hooks(list(cfg.hooks))
        if cfg.ctx_len > model.info.n_ctx:
            raise InterpError(f"ctx_len {cfg.ctx_len} exceeds the model's context of {model.info.n_ctx} tokens.")
        contexts = iter_contexts(cfg.corpus, model.tokenizer, cfg.ctx_len, model.info.bos_token_id)
        first = next(contexts)  # raises InterpError for an empty corpus, before anything is written
        shapes = probe_shapes(model, hooks, first)
        manifest = _new_manifest(cfg, model, hooks, shapes)
        check_same_everywhere({"spec": manifest["spec"], "out": str(out.resolve())}, "cache config")
        with disk_full_errors(DISK_FULL_HINT):
            lock.acquire_on_rank0()
            if rank == 0:
                manifest = _reconcile(out, manifest)
            barrier()  # the other ranks read what rank 0 created or validated
            manifest = manifest if rank == 0 else read_json(out / MANIFEST, "store manifest")
            with contextlib.closing(prefetch(prepend(first, contexts), depth=4 * cfg.batch_size)) as ahead:
                if manifest["complete"]:
                    per_shard = _contexts_per_shard(cfg, shapes)
                    first_shard = shard_groups(ahead, per_shard, cfg.n_contexts)  # small stores: < per_shard
                    next(_checked(enumerate(first_shard), _listed(manifest, 1), out))
                    log.info("store %s is already complete (%d shards)", out, len(manifest["shards"]))
                else:
                    _write(cfg, model, hooks, shapes, ahead, out, manifest, progress and rank == 0)
    finally:
        lock.release()
    return ActivationStore(out)


DISK_FULL_HINT = (
    "The store stays valid with the shards completed so far. Free space there (or pass --out on another disk) "
    "and run the same interp cache command again: it resumes after the last complete shard."
)


def _check_out_dir(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise InterpError(f"Output {out} exists and is not a directory.")
    if out.is_dir() and not (out / MANIFEST).exists():
        leftovers = [p for p in out.iterdir() if not p.name.endswith(".tmp")]
        if leftovers:
            raise InterpError(
                f"Output directory {out} is not empty and holds no activation store "
                f"(found {leftovers[0].name}). Choose a new directory."
            )


def _new_manifest(cfg: CacheConfig, model: Model, hooks: list[str], shapes: dict[str, list[int]]) -> dict[str, Any]:
    spec = {k: v for k, v in asdict(cfg).items() if k not in ("model", "device", "hooks", "processing")}
    spec["hooks"] = hooks
    spec["model_fingerprint"] = model.info.fingerprint
    return {
        "format": FORMAT,
        "version": VERSION,
        "model": model.info.to_dict(),
        "hooks": {h: {"shape": s, "d": math.prod(s)} for h, s in shapes.items()},
        "ctx_len": cfg.ctx_len,
        "dtype": cfg.dtype,
        "with_grads": cfg.with_grads,
        "capture": model.capture_path(hooks),  # the engine that computed the rows: "modules" or "bridge"
        "corpus": asdict(cfg.corpus),
        "spec": spec,
        "shards": [],
        "n_contexts": 0,
        "complete": False,
    }


def _listed(manifest: dict[str, Any], n: int | None = None) -> dict[int, dict[str, Any]]:
    """Shard index -> manifest entry of the first ``n`` (all) shards the manifest lists."""
    return dict(enumerate(manifest["shards"][:n]))


def _checked(
    groups: Iterator[tuple[int, ShardGroup]], done: dict[int, dict[str, Any]], out: Path
) -> Iterator[tuple[int, ShardGroup]]:
    """Pass (index, contexts) pairs through, checking the contexts of every shard in ``done`` against its recorded
    digest; raise InterpError at the first that differs, and when the corpus ends before the last of them."""
    if any("contexts_sha256" not in entry for entry in done.values()):
        log.warning("store %s predates corpus digests; cannot check that the corpus is unchanged", out)
        done = {}
    seen = -1
    for index, group in groups:
        entry, seen = done.get(index), index
        if entry is not None:
            found = contexts_digest(*(torch.cat([c[j] for c in group.contexts()]) for j in range(3)))
            if len(group) != entry["contexts"] or found != entry["contexts_sha256"]:
                _corpus_changed(out, entry["file"], "different tokens")
        yield index, group
    if done and seen < max(done):
        _corpus_changed(out, done[max(done)]["file"], "it ends before them")


def _corpus_changed(out: Path, file: str, how: str) -> None:
    raise InterpError(
        f"The corpus changed since {out} was written: it no longer gives the contexts of {file} ({how}), so "
        "resuming would mix two corpora. Restore the original corpus, or cache this one to a new --out directory."
    )


def _reconcile(out: Path, fresh: dict[str, Any]) -> dict[str, Any]:
    """Return the manifest to continue from: the existing one if it describes the same store."""
    path = out / MANIFEST
    if not path.exists():
        out.mkdir(parents=True, exist_ok=True)
        remove_temporaries(out)
        atomic_write_json(path, fresh)
        return fresh
    old = read_json(path, "store manifest")
    if old.get("format") != FORMAT or old.get("spec") != fresh["spec"]:
        diff = sorted(k for k in set(old.get("spec", {})) | set(fresh["spec"])
                      if old.get("spec", {}).get(k) != fresh["spec"].get(k))
        raise InterpError(
            f"{out} already holds a different activation store (differs in: {', '.join(diff) or 'format'}). "
            "Use a new --out directory, or delete the old store."
        )
    removed = remove_temporaries(out)
    if not old["complete"]:
        log.info("resuming store %s after %d complete shards (%d stale temporaries removed)",
                 out, len(old["shards"]), removed)
    return old


def _contexts_per_shard(cfg: CacheConfig, shapes: dict[str, list[int]]) -> int:
    itemsize = torch.empty((), dtype=DTYPES[cfg.dtype]).element_size()
    row_bytes = sum(math.prod(s) for s in shapes.values()) * itemsize * (2 if cfg.with_grads else 1) + 16
    per_ctx = row_bytes * cfg.ctx_len
    batches = max(1, int(cfg.shard_mb * 2**20) // (per_ctx * cfg.batch_size))
    return int(batches * cfg.batch_size)


def _write(
    cfg: CacheConfig,
    model: Model,
    hooks: list[str],
    shapes: dict[str, list[int]],
    contexts: Iterator[Context],
    out: Path,
    manifest: dict[str, Any],
    progress: bool,
) -> None:
    """Compute and write the shards this rank owns that no earlier run finished; then, with several ranks
    (or parts left by an earlier run with several), merge every rank's shard list into the manifest."""
    rank, world = rank_and_world()
    per_shard = _contexts_per_shard(cfg, shapes)
    done = _shards_done(out, manifest)
    groups: Iterator[tuple[int, ShardGroup]] = enumerate(shard_groups(contexts, per_shard, cfg.n_contexts))
    if set(done) == set(range(len(done))):  # the finished shards come first: check them as they pass
        groups = _checked(groups, done, out)
    else:  # ranks left gaps: check every finished shard before writing anything (tokenising that part twice)
        fresh = iter_contexts(cfg.corpus, model.tokenizer, cfg.ctx_len, model.info.bos_token_id)
        for index, _ in _checked(enumerate(shard_groups(fresh, per_shard, cfg.n_contexts)), done, out):
            if index >= max(done):
                break
    parts = world > 1 or any(i >= len(manifest["shards"]) for i in done)
    writer = ShardWriter(out, manifest, part=rank if parts else None)
    bar = progress_bar(cfg.n_contexts * cfg.ctx_len, "cache", enabled=progress)
    try:
        n_contexts, last = 0, False
        for index, group in groups:
            ours = index not in done and index % world == rank
            stream = functools.partial(writer.stream, index, group.want * cfg.ctx_len)
            tensors = _compute_shard(cfg, model, hooks, group, n_contexts, bar, stream) if ours else None
            last = n_contexts + len(group) >= cfg.n_contexts or len(group) < per_shard  # len: after computing
            if tensors is None:
                bar.update(len(group) * cfg.ctx_len)
            else:
                writer.put(index, tensors, len(group), last)
            n_contexts += len(group)
        if not parts and not last:
            writer.finish_empty()  # the corpus ended exactly at a shard boundary
        if n_contexts < cfg.n_contexts:
            log.warning("corpus ran out after %d of %d contexts; the store is complete with what there was",
                        n_contexts, cfg.n_contexts)
    finally:
        bar.close()
        writer.close()
    if parts:
        _merge_parts(out, manifest, n_contexts)


def _shards_done(out: Path, manifest: dict[str, Any]) -> dict[int, dict[str, Any]]:
    """Shard index -> manifest entry of every shard an earlier run finished: those listed in the manifest,
    and those listed by any rank's part file (``manifest.rank<r>.json``) of an interrupted run."""
    done = {i: entry for i, entry in enumerate(manifest["shards"])}
    for part in sorted(out.glob(PART_GLOB)):
        for entry in read_json(part, "store manifest part")["shards"]:
            done[int(entry["index"])] = {k: v for k, v in entry.items() if k != "index"}
    return done


def _merge_parts(out: Path, manifest: dict[str, Any], n_contexts: int) -> None:
    """Rank 0, once every rank is done: the manifest lists every shard in order, and is complete."""
    barrier()
    if rank_and_world()[0] == 0:
        done = _shards_done(out, manifest)
        missing = sorted(set(range(len(done))) ^ set(done))
        if missing or sum(e["contexts"] for e in done.values()) != n_contexts:
            raise InterpError(f"Store {out} is missing shards {missing[:5]} after every rank finished; rerun the "
                              "same command to compute them.")
        merged = {**manifest, "shards": [done[i] for i in range(len(done))], "n_contexts": n_contexts,
                  "complete": True}
        atomic_write_json(out / MANIFEST, merged)
        for part in out.glob(PART_GLOB):
            part.unlink()
        records = sorted(out.glob(VERIFIED_PART.format("*")))
        write_record(out, {k: v for r in records for k, v in read_record(out, r.name).items()})
        for record in records:
            record.unlink()
    barrier()


def _compute_shard(
    cfg: CacheConfig, model: Model, hooks: list[str], group: ShardGroup, first_ctx: int, bar: Any,
    stream: Callable[[dict[str, torch.Tensor]], None],
) -> dict[str, torch.Tensor | list[torch.Tensor]]:
    """Run the shard's contexts in batches, handing each batch's activations to ``stream`` (the writer writes
    them while the next batch runs); returns the shard's tensors (rows = contexts * ctx_len), each activation
    as its batches' row blocks."""
    dtype = DTYPES[cfg.dtype]
    parts: dict[str, list[torch.Tensor]] = {}
    a = 0
    for batch in group.batches(cfg.batch_size):
        tokens = torch.stack([c.tokens for c in batch])
        cap = model.capture(tokens, hooks, with_grads=cfg.with_grads)
        blocks = {}
        for h in hooks:
            _check_finite(cap.acts[h], h, first_ctx + a, "activations")
            blocks[act_key(h)] = cap.acts[h].reshape(tokens.numel(), -1).to("cpu", dtype).contiguous()
            if cfg.with_grads:
                _check_finite(cap.grads[h], h, first_ctx + a, "gradients")
                blocks[grad_key(h)] = cap.grads[h].reshape(tokens.numel(), -1).to("cpu", dtype).contiguous()
        for k, v in blocks.items():
            parts.setdefault(k, []).append(v)
        stream(blocks)
        bar.update(tokens.numel())
        a += len(batch)
    contexts = group.contexts()
    tensors: dict[str, torch.Tensor | list[torch.Tensor]] = dict(parts)  # batches, written one after another
    tensors["tokens"] = torch.cat([c.tokens for c in contexts]).to(torch.int32)
    tensors["doc"] = torch.cat([c.doc for c in contexts])
    tensors["pos"] = torch.cat([c.pos for c in contexts])
    return tensors


def _check_finite(t: torch.Tensor, hook: str, ctx: int, what: str) -> None:
    # min and max are NaN when any element is, and +-inf when one is: one reduction, no mask (16x faster)
    if t.numel() and not bool(torch.isfinite(torch.stack(torch.aminmax(t))).all()):
        raise InterpError(
            f"Non-finite {what} (NaN or inf) at hook {hook} in contexts from {ctx}. The model or its dtype is "
            "numerically broken on this input; try --dtype float32 on a float32 model, or another corpus."
        )
