"""Processes working together under ``torchrun`` (``torch.distributed``): joining the process group, and the
few collectives every stage needs. No distribution layer of interp's own: these are thin uses of torch's
process group; a plain process (no group) makes every function a no-op that returns the one-process answer.

Objects travel between ranks as JSON bytes in tensors, never pickled (torch's ``*_object`` collectives
would pickle).
"""

from __future__ import annotations

import atexit
import json
import os
from typing import Any

import torch
import torch.distributed as dist

from interp.errors import InterpError


def init_from_env(device: str = "cpu") -> None:
    """Join the process group that ``torchrun`` describes in the environment (``WORLD_SIZE`` > 1); a plain
    process does nothing. gloo on CPU, nccl on CUDA."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or dist.is_initialized():
        return
    backend = "nccl" if device.startswith("cuda") and dist.is_nccl_available() else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group(backend)
    atexit.register(leave)


def leave() -> None:
    """Destroy the process group before the interpreter tears down: left to static destructors, gloo's
    threads can abort the process at exit ("terminate called without an active exception", SIGABRT) after
    all its work succeeded."""
    if dist.is_initialized():
        dist.destroy_process_group()


def rank_and_world() -> tuple[int, int]:
    """(rank, world size) of the initialised process group, (0, 1) without one."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def check_same_everywhere(obj: dict[str, Any], what: str) -> None:
    """Raise InterpError on every rank, naming the first field that differs, unless ``obj`` is equal on all
    ranks (a torchrun job where ranks were given different flags or files)."""
    rank, world = rank_and_world()
    if world == 1:
        return
    everyone = gather_json(obj)
    for other_rank, other in enumerate(everyone):
        if other != obj:
            field = _first_difference(obj, other)
            raise InterpError(
                f"The {what} differs between rank {rank} and rank {other_rank}: {field} is "
                f"{_get(obj, field)!r} on rank {rank} and {_get(other, field)!r} on rank {other_rank}. "
                "Every rank must be started with the same command and files."
            )


def gather_json(obj: Any) -> list[Any]:
    """``obj`` (JSON-serialisable) from every rank, in rank order. Sent as JSON bytes in tensors, so nothing
    is pickled (torch's ``all_gather_object`` would pickle)."""
    _, world = rank_and_world()
    if world == 1:
        return [json.loads(json.dumps(obj, default=str))]
    data = torch.tensor(list(json.dumps(obj, sort_keys=True, default=str).encode()), dtype=torch.uint8)
    size = torch.tensor([data.numel()])
    sizes = [torch.zeros_like(size) for _ in range(world)]
    dist.all_gather(sizes, size)
    padded = torch.zeros(int(max(sizes).item()), dtype=torch.uint8)
    padded[: data.numel()] = data
    pieces = [torch.empty_like(padded) for _ in range(world)]
    dist.all_gather(pieces, padded)
    return [json.loads(bytes(p[: int(n.item())].tolist())) for p, n in zip(pieces, sizes)]


def _first_difference(a: Any, b: Any, path: str = "") -> str:
    if isinstance(a, dict) and isinstance(b, dict):
        for key in sorted(set(a) | set(b), key=str):
            if a.get(key) != b.get(key):
                return _first_difference(a.get(key), b.get(key), f"{path}.{key}" if path else str(key))
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        for i, (x, y) in enumerate(zip(a, b)):
            if x != y:
                return _first_difference(x, y, f"{path}[{i}]")
    return path or "the value"


def _get(obj: Any, path: str) -> Any:
    for part in path.replace("[", ".").replace("]", "").split("."):
        if part in ("", "the value"):
            continue
        obj = obj[int(part)] if isinstance(obj, list) else obj.get(part) if isinstance(obj, dict) else obj
    return obj


def cat_all(t: torch.Tensor) -> torch.Tensor:
    """Every rank's ``t`` (same shape everywhere), concatenated in rank order along the first dimension."""
    pieces = [torch.empty_like(t) for _ in range(dist.get_world_size())]
    dist.all_gather(pieces, t.contiguous())
    return torch.cat(pieces)


def barrier() -> None:
    """Wait for every rank (no-op in a single process)."""
    if rank_and_world()[1] > 1:
        dist.barrier()


def any_rank(flag: bool) -> bool:
    """True on every rank when ``flag`` is true on any rank (so all ranks stop or skip together)."""
    _, world = rank_and_world()
    if world == 1:
        return flag
    t = torch.tensor([1.0 if flag else 0.0])
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item() > 0)
