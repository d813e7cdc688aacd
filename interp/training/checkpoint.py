"""Training checkpoints as safetensors + JSON: weights, Adam moments and RNG state, never pickled.

A checkpoint directory holds ``step-XXXXXXXX.safetensors`` files and ``state.json``, which names the
newest complete one; ``state.json`` is rewritten (atomically) only after its tensors are on disk, so a
crash at any point leaves a consistent checkpoint.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch

from interp.errors import InterpError
from interp.io import atomic_write_json, load_tensors, read_json, save_tensors
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


def write_checkpoint(
    directory: Path, step: int, tensors: dict[str, torch.Tensor], meta: dict[str, Any]
) -> Path:
    """Save ``tensors`` for ``step``, then point ``state.json`` at them and drop older step files."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"step-{step:08d}.safetensors"
    save_tensors(path, tensors)
    atomic_write_json(directory / STATE, {**meta, "step": step, "file": path.name})
    for old in directory.glob("step-*.safetensors"):
        if old != path:
            old.unlink()
    return path


def read_checkpoint(directory: Path) -> tuple[dict[str, Any], dict[str, torch.Tensor]] | None:
    """(meta, tensors) of the newest checkpoint in ``directory``, or None when there is none."""
    if not (directory / STATE).is_file():
        return None
    meta = read_json(directory / STATE, "checkpoint state")
    return meta, load_tensors(directory / meta["file"])


def save_slots(
    slots: list[Slot], directory: Path, step: int, meta: dict[str, Any], gen: torch.Generator
) -> None:
    tensors: dict[str, torch.Tensor] = {"rng": gen.get_state()}
    for i, s in enumerate(slots):
        tensors.update({f"d{i}/{k}": v.detach().cpu() for k, v in s.dictionary.state_dict().items()})
        tensors.update(optimizer_tensors(s.opt, s.dictionary, f"opt{i}/"))
        tensors[f"since_fired{i}"] = s.since_fired
    write_checkpoint(directory, step, tensors, meta)
    log.info("checkpoint at step %d in %s", step, directory)


def resume_slots(slots: list[Slot], directory: Path, meta: dict[str, Any], gen: torch.Generator) -> int:
    found = read_checkpoint(directory)
    if found is None:
        return 0
    saved, tensors = found
    if saved.get("configs") != meta["configs"]:
        raise InterpError(
            f"{directory} holds a checkpoint of a different training config. Use another out_dir, "
            "or delete the checkpoint to start over."
        )
    gen.set_state(tensors["rng"])
    for i, s in enumerate(slots):
        prefix = f"d{i}/"
        state = {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}
        s.dictionary.load_state_dict(state)
        load_optimizer_tensors(s.opt, s.dictionary, tensors, f"opt{i}/")
        s.since_fired = tensors[f"since_fired{i}"].clone()
    log.info("resuming from step %d (%s)", saved["step"], directory)
    return int(saved["step"])
