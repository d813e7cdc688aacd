"""Training checkpoints as safetensors + JSON: weights, Adam moments and RNG state, never pickled.

A checkpoint directory holds one ``step-XXXXXXXX-<dictionary>.safetensors`` file per dictionary and
``state.json``, which names the newest complete set; ``state.json`` is rewritten (atomically) only after
every file of its step is on disk, so a crash at any point leaves a consistent checkpoint.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch

from interp.distributed import barrier
from interp.errors import InterpError
from interp.io import atomic_write_json, load_tensors, read_json, save_tensors
from interp.training.distributed import Plan
from interp.training.slot import Slot

log = logging.getLogger(__name__)

STATE = "state.json"


def optimizer_tensors(
    opt: torch.optim.Optimizer, module: torch.nn.Module, prefix: str
) -> dict[str, torch.Tensor]:
    """Adam's per-parameter state keyed ``<prefix><param name>/<state key>``."""
    out: dict[str, torch.Tensor] = {}
    for name, p in module.named_parameters():
        for key, value in opt.state.get(p, {}).items():
            out[f"{prefix}{name}/{key}"] = torch.as_tensor(value).detach().cpu().clone()
    return out


def load_optimizer_tensors(
    opt: torch.optim.Optimizer, module: torch.nn.Module, tensors: dict[str, torch.Tensor], prefix: str
) -> None:
    """Inverse of :func:`optimizer_tensors` (parameters without saved state keep none)."""
    for name, p in module.named_parameters():
        state = {
            k[len(prefix) + len(name) + 1 :]: v.to(p.device)
            for k, v in tensors.items()
            if k.startswith(f"{prefix}{name}/")
        }
        if state:
            opt.state[p] = state


def reset_moments(
    opt: torch.optim.Optimizer, module: torch.nn.Module, resets: dict[str, tuple[int, torch.Tensor]]
) -> None:
    """Zero Adam's moments for the slices a revival rewrote: ``{param name: (dim, indices)}``."""
    params = dict(module.named_parameters())
    for name, (dim, idx) in resets.items():
        state = opt.state.get(params[name], {})
        for key in ("exp_avg", "exp_avg_sq"):
            if key in state:
                state[key].index_fill_(dim, idx.to(state[key].device), 0.0)


def slot_tensors(s: Slot) -> dict[str, torch.Tensor]:
    """Everything exact resume needs of one dictionary: weights and buffers, Adam moments, dead-latent
    counters and its revival RNG."""
    tensors = {f"d/{k}": v.detach().cpu() for k, v in s.dictionary.state_dict().items()}
    tensors.update(optimizer_tensors(s.opt, s.dictionary, "opt/"))
    tensors["since_fired"] = s.since_fired
    tensors["rng"] = s.gen.get_state()
    return tensors


def save_slots(slots: list[Slot], directory: Path, step: int, meta: dict[str, Any], plan: Plan) -> None:
    """Checkpoint at ``step``: each rank writes the dictionaries it owns (one file each; under DDP rank 0
    writes for all), then rank 0 points ``state.json`` at the step's files, then older files are dropped. A
    crash at any moment leaves the previous checkpoint complete, and any world size can resume it (files
    are found by dictionary name)."""
    directory.mkdir(parents=True, exist_ok=True)
    if plan.mode != "ddp" or plan.rank == 0:
        for s in slots:
            save_tensors(directory / _file(step, s.name), slot_tensors(s))
    barrier()
    if plan.rank == 0:
        files = {name: _file(step, name) for name in meta["configs"]}
        atomic_write_json(directory / STATE, {**meta, "step": step, "files": files})
    barrier()
    if plan.rank == 0:
        for old in directory.glob("step-*.safetensors"):
            if not old.name.startswith(f"step-{step:08d}-"):
                old.unlink(missing_ok=True)
    log.info("checkpoint at step %d in %s", step, directory)


def resume_slots(slots: list[Slot], directory: Path, meta: dict[str, Any]) -> int:
    """Load this rank's dictionaries from the checkpoint in ``directory``; returns its step (0: none)."""
    if not (directory / STATE).is_file():
        return 0
    saved = read_json(directory / STATE, "checkpoint state")
    if saved.get("configs") != meta["configs"] or "files" not in saved:
        raise InterpError(
            f"{directory} holds a checkpoint of a different training config. Use another out_dir, "
            "or delete the checkpoint to start over."
        )
    for s in slots:
        tensors = load_tensors(directory / saved["files"][s.name])
        s.dictionary.load_state_dict({k[2:]: v for k, v in tensors.items() if k.startswith("d/")})
        load_optimizer_tensors(s.opt, s.dictionary, tensors, "opt/")
        s.since_fired = tensors["since_fired"].clone()
        s.gen.set_state(tensors["rng"])
    log.info("resuming from step %d (%s)", saved["step"], directory)
    return int(saved["step"])


def remove_checkpoint(directory: Path, plan: Plan) -> None:
    """Drop the checkpoint of a finished run (rank 0, after every rank has saved its dictionaries)."""
    barrier()
    if plan.rank == 0 and directory.is_dir():
        for f in directory.glob("*"):
            f.unlink()
        directory.rmdir()


def _file(step: int, name: str) -> str:
    return f"step-{step:08d}-{name}.safetensors"
