"""Atomic file writes, JSON and safetensors helpers shared by every stage.

Every artifact interp writes goes through here: bytes land in a temporary file in the destination's
directory, are flushed to disk, and are renamed into place, so a reader sees the old file or the new
one, never half of one. Nothing is pickled.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

from interp.errors import InterpError

if TYPE_CHECKING:  # torch is imported only by the tensor helpers, so JSON readers stay light
    import torch

TMP_SUFFIX = ".tmp"

DISK_FULL = {
    errno.ENOSPC: "no space is left on the device",
    errno.EDQUOT: "the disk quota is exceeded",
    errno.EFBIG: "the file size limit is exceeded (ulimit -f, i.e. RLIMIT_FSIZE, or the filesystem's largest file)",
}
"""The errno values that mean "this write does not fit", with what each means."""

RERUN = "Free space there (or write to another disk) and run the same command again."


class DiskFullError(InterpError):
    """A write did not fit on its disk. Raised after the half-written temporary file is removed, so
    the files written before are intact; ``hint`` says how the stage that was writing continues."""

    def __init__(self, path: str | Path, reason: str, hint: str = RERUN):
        self.path, self.reason = Path(path), reason
        super().__init__(f"Could not write {self.path}: {reason}. Nothing half-written was kept. {hint}")


@contextlib.contextmanager
def disk_full_errors(hint: str = RERUN) -> Iterator[None]:
    """Inside the block, a write that does not fit (ENOSPC, EDQUOT, EFBIG) raises :class:`DiskFullError`
    ending with ``hint`` (what the stage does when run again) instead of a bare ``OSError``."""
    try:
        yield
    except DiskFullError as e:
        raise DiskFullError(e.path, e.reason, hint) from e.__cause__
    except OSError as e:
        if e.errno not in DISK_FULL:
            raise
        raise DiskFullError(e.filename or "a file", DISK_FULL[e.errno], hint) from e


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (temporary file, fsync, rename). When the write fails the
    temporary file is removed (it would hold disk space) and ``path`` is left as it was; a write that
    does not fit raises :class:`DiskFullError`."""
    atomic_write_parts(path, [data])


def atomic_write_parts(path: str | Path, parts: Sequence[Any], sha256: bool = False) -> str | None:
    """Write the concatenation of ``parts`` (bytes, memoryviews of tensors ...) to ``path`` atomically, as
    :func:`atomic_write_bytes` does, without joining them first (``writev``). With ``sha256`` the file's
    digest is computed on a second thread while the bytes are written, and returned."""
    path = Path(path)
    tmp = path.with_name(path.name + TMP_SUFFIX)
    views = [v for v in (memoryview(p).cast("B") for p in parts) if len(v)]
    pool = ThreadPoolExecutor(1, thread_name_prefix="interp-sha256") if sha256 else None
    try:
        digest = pool.submit(_sha256, views) if pool is not None else None
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o666)
        try:
            _write_all(fd, list(views))
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
        return digest.result() if digest is not None else None
    except BaseException as e:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        if isinstance(e, OSError) and e.errno in DISK_FULL:
            size = sum(len(v) for v in views)
            raise DiskFullError(path, f"{DISK_FULL[e.errno]} ({size:,} bytes to write)") from e
        raise
    finally:
        if pool is not None:
            pool.shutdown(wait=True)


def _write_all(fd: int, views: list[memoryview]) -> None:
    """``writev`` until every view is written (a call may write part of them)."""
    while views:
        n = os.writev(fd, views[:IOV_MAX])
        while views and n >= len(views[0]):
            n -= len(views.pop(0))
        if n:
            views[0] = views[0][n:]


def _sha256(views: Sequence[memoryview]) -> str:
    h = hashlib.sha256()
    for v in views:
        h.update(v)  # hashlib releases the GIL for large buffers
    return h.hexdigest()


IOV_MAX = os.sysconf("SC_IOV_MAX") if hasattr(os, "sysconf") and "SC_IOV_MAX" in os.sysconf_names else 16
"""The most buffers one ``readv`` / ``writev`` call takes here."""


def atomic_write_json(path: str | Path, obj: Any) -> None:
    """Write ``obj`` as indented, key-sorted JSON, atomically. Same object, same bytes."""
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode())


def read_json(path: str | Path, what: str = "file") -> Any:
    """Parse a JSON file, raising :class:`InterpError` naming ``what`` if it is missing or malformed."""
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except FileNotFoundError as e:
        raise InterpError(f"No {what} at {path}.") from e
    except json.JSONDecodeError as e:
        raise InterpError(f"The {what} at {path} is not valid JSON ({e}); it may be corrupted.") from e


def save_tensors(path: str | Path, tensors: Mapping[str, torch.Tensor | Sequence[torch.Tensor]],
                 metadata: dict[str, str] | None = None) -> str:
    """Save tensors as safetensors atomically; returns the file's sha256 hex digest.

    A value may be a list of tensors, stored as their concatenation along the first dimension (never made).
    CPU tensors of the common dtypes (and no metadata) are written straight from their memory, hashed while
    they are written: the same bytes as ``safetensors.torch.save`` gives (the tests compare them), without its
    serialised copy. Anything else goes through ``safetensors``."""
    import torch

    blocks: dict[str, list[torch.Tensor]] = {k: list(v) if isinstance(v, (list, tuple)) else [v]  # type: ignore[list-item]
                                             for k, v in tensors.items()}
    parts = _safetensors_parts(blocks) if metadata is None else None
    if parts is None:
        from safetensors.torch import save

        data = save({k: torch.cat(v).contiguous() if len(v) > 1 else v[0].contiguous() for k, v in blocks.items()},
                    metadata=metadata)
        atomic_write_bytes(path, data)
        return hashlib.sha256(data).hexdigest()
    sha = atomic_write_parts(path, parts, sha256=True)
    assert sha is not None
    return sha


@functools.cache
def safetensors_dtypes() -> dict[str, torch.dtype]:
    """safetensors' dtype name -> torch dtype, for every dtype interp writes itself (and reads back)."""
    import torch

    return {"BOOL": torch.bool, "U8": torch.uint8, "I8": torch.int8, "I16": torch.int16, "F16": torch.float16,
            "BF16": torch.bfloat16, "I32": torch.int32, "F32": torch.float32, "F64": torch.float64,
            "I64": torch.int64}


# safetensors' dtype names, ranked as the format orders tensors in a file: by dtype, larger ranks first, then
# by name (the ranks follow safetensors' own dtype order; the other dtypes go through the library itself)
_ST_RANK = {"BOOL": 0, "U8": 1, "I8": 2, "I16": 4, "F16": 6, "BF16": 7, "I32": 8, "F32": 10, "F64": 12, "I64": 13}


def _safetensors_parts(blocks: dict[str, list[torch.Tensor]]) -> list[Any] | None:
    """The bytes of a safetensors file holding each key's blocks concatenated, as a header and one zero-copy
    view per block; None when a block is not on the CPU, has a dtype not in ``_ST_RANK``, or does not stack
    with the key's other blocks."""
    import torch

    names = {dtype: name for name, dtype in safetensors_dtypes().items()}
    for v in blocks.values():
        if any(t.device.type != "cpu" or t.dtype not in names for t in v):
            return None
        if len(v) > 1 and any(t.dtype != v[0].dtype or t.dim() == 0 or t.shape[1:] != v[0].shape[1:] for t in v):
            return None
    order = sorted(blocks, key=lambda k: (-_ST_RANK[names[blocks[k][0].dtype]], k))
    specs, views = [], []
    for k in order:
        ts = [t.detach().contiguous() for t in blocks[k]]
        shape = [sum(t.shape[0] for t in ts), *ts[0].shape[1:]] if len(ts) > 1 else list(ts[0].shape)
        specs.append((k, ts[0].dtype, shape))
        views += [t.reshape(-1).view(torch.uint8).numpy() for t in ts if t.numel()]
    head, _ = safetensors_header(specs)
    return [head, *views]


def safetensors_header(specs: Sequence[tuple[str, torch.dtype, Sequence[int]]],
                       align: int = 8) -> tuple[bytes, dict[str, int]]:
    """The start of a safetensors file holding tensors of these (name, dtype, shape), stored in this order: the
    8-byte header length and the JSON header, padded with spaces so that the data starts at a multiple of
    ``align`` bytes (8, as safetensors writes it; a page, for data that is mapped in place), and where each
    tensor's data starts in the file."""
    import math

    names = {dtype: name for name, dtype in safetensors_dtypes().items()}
    header: dict[str, Any] = {}
    offset = 0
    for name, dtype, shape in specs:
        size = math.prod(shape) * dtype.itemsize
        header[name] = {"dtype": names[dtype], "shape": list(shape), "data_offsets": [offset, offset + size]}
        offset += size
    text = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode()
    text += b" " * (-(8 + len(text)) % align)
    base = 8 + len(text)
    return len(text).to_bytes(8, "little") + text, {k: base + v["data_offsets"][0] for k, v in header.items()}


def load_tensors(path: str | Path, device: str = "cpu") -> dict[str, torch.Tensor]:
    """Load a safetensors file (never a pickle)."""
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise InterpError(f"No weights file at {path}.")
    try:
        return load_file(str(path), device=device)
    except Exception as e:  # safetensors raises its own error types for bad headers
        raise InterpError(f"{path} is not a readable safetensors file ({e}); it may be truncated.") from e


def sha256_file(path: str | Path, chunk: int = 1 << 24) -> str:
    """sha256 hex digest of a file, read in chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def remove_temporaries(directory: str | Path) -> int:
    """Delete leftover ``*.tmp`` files of an interrupted write; returns how many were removed."""
    directory = Path(directory)
    n = 0
    if directory.is_dir():
        for tmp in directory.glob(f"*{TMP_SUFFIX}"):
            tmp.unlink()
            n += 1
    return n


@contextlib.contextmanager
def atomic_directory(out_dir: str | Path) -> Iterator[Path]:
    """Yield a new empty directory beside ``out_dir``; when the ``with`` block ends without an error it
    replaces ``out_dir`` (by renames on one filesystem, so a reader sees the old directory or the new one,
    never half of one). On an error it is removed and ``out_dir`` is left as it was."""
    out = Path(out_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=TMP_SUFFIX, dir=out.parent))
    try:
        yield tmp
        tmp.chmod(0o755)  # mkdtemp makes it private; the result is an ordinary directory
        if out.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old.", suffix=TMP_SUFFIX, dir=out.parent))
            os.replace(out, old / out.name)
            os.replace(tmp, out)
            shutil.rmtree(old)
        else:
            os.replace(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)

