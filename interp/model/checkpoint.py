"""A local Hugging Face checkpoint, opened for the module path without importing transformers.

What needs transformers to compute (the model fingerprint, which hashes the config as ``transformers`` fills it
in, and whether the checkpoint's ``tokenizer.json`` encodes as its Hugging Face tokenizer does) is computed once
per checkpoint and kept in a small JSON record under the user cache directory (``$INTERP_CACHE_DIR``, else
``$XDG_CACHE_HOME/interp``, else ``~/.cache/interp``), keyed by the bytes of the checkpoint's config and tokenizer
files, the processing and the versions of transformers and transformer-lens. A record that cannot be read is
computed again; one that cannot be written is only logged.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any, NamedTuple

from interp.io import atomic_write_json
from interp.model.info import fingerprint
from interp.model.tokenizer import hf_tokenizer, load_fast
from interp.model.transformer import Spec, spec_from_config
from interp.model.weights import safetensors_files

log = logging.getLogger(__name__)

_RECORD_SCHEME = 1
_KEYED_FILES = ("config.json", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                "added_tokens.json")
_PIPELINE = ("normalizer", "pre_tokenizer", "model", "added_tokens")


class Record(NamedTuple):
    """Facts about a checkpoint that need transformers to compute."""

    fingerprint: str
    """``ModelInfo.fingerprint``, as the bridge path computes it."""
    bos_token_id: int | None
    eos_token_id: int | None
    native_tokenizer: bool
    """``tokenizer.json`` runs the Hugging Face tokenizer's pipeline (corpora are then encoded without it)."""


@dataclass(frozen=True)
class Checkpoint:
    """A checkpoint the module path can run."""

    path: Path
    spec: Spec
    files: list[Path]
    """Its safetensors weight files."""
    record: Record


def open_checkpoint(path: Path, processing: str) -> Checkpoint | str:
    """The :class:`Checkpoint` at ``path``, or the reason the module path cannot run it."""
    try:
        config = json.loads((path / "config.json").read_text())
    except ValueError as e:
        return f"its config.json does not parse ({e})"
    spec = spec_from_config(config)
    if isinstance(spec, str):
        return spec
    files = safetensors_files(path)
    if files is None:
        return "its weights are not in safetensors files"
    if not (path / "tokenizer.json").is_file():
        return "it has no tokenizer.json"
    rec = checkpoint_record(path, processing)
    if rec is None:
        return "its tokenizer has no EOS token"
    return Checkpoint(path, spec, files, rec)


def cache_dir() -> Path:
    """Where interp keeps per-checkpoint records."""
    if os.environ.get("INTERP_CACHE_DIR"):
        return Path(os.environ["INTERP_CACHE_DIR"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "interp"


def checkpoint_record(path: Path, processing: str) -> Record | None:
    """The checkpoint's :class:`Record`, from the cache or computed (and cached); None when the bridge has to
    run it (a tokenizer without EOS token)."""
    file = cache_dir() / "checkpoints" / f"{_record_key(path, processing)}.json"
    try:
        data = json.loads(file.read_text())
        return Record(**data) if data is not None else None
    except (OSError, ValueError, TypeError):
        pass
    rec = _compute_record(path, processing)
    try:
        file.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_json(file, rec._asdict() if rec is not None else None)
    except OSError as e:
        log.debug("could not cache the record of %s in %s: %s", path, file, e)
    return rec


def _record_key(path: Path, processing: str) -> str:
    h = hashlib.sha256(json.dumps([_RECORD_SCHEME, processing, _version("transformers"),
                                   _version("transformer-lens")]).encode())
    for name in _KEYED_FILES:
        f = path / name
        if f.is_file():
            h.update(name.encode() + b"\0" + f.read_bytes())
    return h.hexdigest()[:32]


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def _compute_record(path: Path, processing: str) -> Record | None:
    from transformers import AutoConfig

    log.debug("computing the fingerprint of %s (cached afterwards)", path)
    tok = hf_tokenizer(path)
    if tok is None:
        return None
    config = AutoConfig.from_pretrained(str(path))
    config.output_attentions = True  # the bridge switches it on in the config it loads, and hashes that config
    native = _same_pipeline(tok, path)
    return Record(fingerprint(config.to_dict(), tok.get_vocab(), processing), tok.bos_token_id, tok.eos_token_id,
                  native)


def _same_pipeline(tok: Any, path: Path) -> bool:
    backend = getattr(tok, "backend_tokenizer", None)
    if backend is None:
        return False
    theirs, ours = json.loads(backend.to_str()), json.loads(load_fast(path).to_str())
    return all(theirs.get(k) == ours.get(k) for k in _PIPELINE)
