"""Training across processes with ``torch.distributed``, launched by ``torchrun``: no distribution layer of
interp's own, only torch's process group, DDP and collectives.

Two plans, chosen by the number of dictionaries in the run:

- **one dictionary, DDP** (``plan.mode == "ddp"``): every rank holds the dictionary, wrapped in
  ``DistributedDataParallel``; each global batch is split into equal parts, one per rank, and gradients are
  all-reduced (averaged) in the backward pass. Buffers (normalisation constants, BatchTopK's threshold) are
  broadcast from rank 0 before every step, dead-latent counters are reduced across ranks, and revival runs on
  the gathered global batch, so every rank keeps identical weights (checked at the end of the run).
- **several dictionaries, spread** (``plan.mode == "spread"``): dictionaries are assigned to ranks by cost
  (longest-processing-time first, no divisibility or equal-width rule); each rank reads its part of every
  batch, the parts are all-gathered, and each rank trains its own dictionaries on the whole batch, exactly as
  one process would.

A world of one process is the ``single`` plan and touches no collective.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from typing import Any, Literal, NamedTuple

import torch
import torch.distributed as dist

from interp.activations.source import Batch
from interp.dictionaries import TrainBatch
from interp.errors import InterpError


class Plan(NamedTuple):
    """How a run's dictionaries map onto the processes of the world."""

    mode: Literal["single", "ddp", "spread"]
    """``single``: one process; ``ddp``: one dictionary on every rank; ``spread``: dictionaries on ranks."""
    rank: int
    """This process's rank."""
    world: int
    """Number of processes."""
    owner: tuple[int, ...]
    """For each config (in order), the rank that trains it (every rank, i.e. -1, under DDP)."""

    def mine(self, index: int) -> bool:
        """True when this rank trains config ``index``."""
        return self.owner[index] in (-1, self.rank)


def init_from_env(device: str = "cpu") -> None:
    """Join the process group that ``torchrun`` describes in the environment (``WORLD_SIZE`` > 1); a plain
    process does nothing. gloo on CPU, nccl on CUDA."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or dist.is_initialized():
        return
    backend = "nccl" if device.startswith("cuda") and dist.is_nccl_available() else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group(backend)


def rank_and_world() -> tuple[int, int]:
    """(rank, world size) of the initialised process group, (0, 1) without one."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def make_plan(costs: Sequence[float], batch_size: int) -> Plan:
    """The plan for configs with these relative ``costs`` in the current world; InterpError for a world the
    work cannot use (explicit rules: a DDP batch splits evenly, and there are at least as many dictionaries
    as processes when several are spread)."""
    rank, world = rank_and_world()
    n = len(costs)
    if world == 1:
        return Plan("single", 0, 1, (0,) * n)
    if n == 1:
        if batch_size % world:
            raise InterpError(
                f"DDP splits every batch of {batch_size} rows evenly over {world} processes: make batch_size a "
                f"multiple of {world}, or launch {_divisors(batch_size, world)} processes."
            )
        return Plan("ddp", rank, world, (-1,))
    if n < world:
        raise InterpError(
            f"{world} processes for {n} dictionaries: each dictionary is trained by one process, so at most "
            f"{n} can work. Launch at most {n} processes, or train one dictionary per run to use DDP on all."
        )
    return Plan("spread", rank, world, tuple(assign_by_cost(costs, world)))


def _divisors(batch_size: int, world: int) -> str:
    fits = [w for w in range(1, world) if batch_size % w == 0]
    return f"at most {fits[-1]}" if fits else "fewer"


def assign_by_cost(costs: Sequence[float], n_ranks: int) -> list[int]:
    """The rank of each item: the most expensive first, each to the least loaded rank (LPT scheduling; ties
    go to the lower rank). Deterministic, so every rank computes the same assignment."""
    load = [0.0] * n_ranks
    owner = [0] * len(costs)
    for i in sorted(range(len(costs)), key=lambda j: (-costs[j], j)):
        r = min(range(n_ranks), key=lambda k: (load[k], k))
        owner[i] = r
        load[r] += costs[i]
    return owner


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


def _cat_all(t: torch.Tensor) -> torch.Tensor:
    """Every rank's ``t`` (same shape everywhere), concatenated in rank order along the first dimension."""
    pieces = [torch.empty_like(t) for _ in range(dist.get_world_size())]
    dist.all_gather(pieces, t.contiguous())
    return torch.cat(pieces)


def gather_batch(part: Batch) -> Batch:
    """The global batch from every rank's part, in rank order."""
    return Batch({h: _cat_all(v) for h, v in part.acts.items()}, {h: _cat_all(v) for h, v in part.grads.items()})


def gather_train_batch(tb: TrainBatch) -> TrainBatch:
    """The whole normalised training batch from every DDP rank's part (for revival)."""
    x = _cat_all(tb.x)
    return TrainBatch(x, x if tb.y is tb.x else _cat_all(tb.y), _cat_all(tb.grad) if tb.grad is not None else None)


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


def fired_everywhere(fired: torch.Tensor) -> torch.Tensor:
    """(d_sae,) bool: latents that fired on any rank's part of the batch."""
    t = fired.to(torch.uint8).cpu()
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return t.bool().to(fired.device)


def check_identical(module: torch.nn.Module, what: str) -> None:
    """InterpError unless ``module``'s parameters and buffers are bit-identical on every rank (DDP's
    invariant; checked once at the end of a run by comparing checksums)."""
    state = [v.detach().double().cpu() for v in module.state_dict().values()]
    mine = torch.stack([s.sum() for s in state] + [s.abs().sum() for s in state])
    pieces = [torch.empty_like(mine) for _ in range(dist.get_world_size())]
    dist.all_gather(pieces, mine)
    if not all(torch.equal(p, mine) for p in pieces):
        raise InterpError(f"The DDP replicas of {what} diverged between ranks; this is a bug in interp.")
