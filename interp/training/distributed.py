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

from collections.abc import Sequence
from typing import Literal, NamedTuple

import torch
import torch.distributed as dist

from interp.activations.source import Batch
from interp.dictionaries import TrainBatch
from interp.distributed import cat_all, rank_and_world
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


def gather_batch(part: Batch) -> Batch:
    """The global batch from every rank's part, in rank order."""
    return Batch({h: cat_all(v) for h, v in part.acts.items()}, {h: cat_all(v) for h, v in part.grads.items()})


def gather_train_batch(tb: TrainBatch) -> TrainBatch:
    """The whole normalised training batch from every DDP rank's part (for revival)."""
    x = cat_all(tb.x)
    return TrainBatch(x, x if tb.y is tb.x else cat_all(tb.y), cat_all(tb.grad) if tb.grad is not None else None)


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
