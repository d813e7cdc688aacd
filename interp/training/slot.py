"""One dictionary being trained: its config, model, optimiser and dead-latent counters (:class:`Slot`)."""

from __future__ import annotations

import fnmatch
import math
import re
from dataclasses import dataclass, field
from typing import Any

import torch

from interp.activations.source import ActivationSource
from interp.dictionaries import Dictionary, create
from interp.dictionaries.registry import lookup
from interp.errors import InterpError
from interp.training.config import TrainConfig


@dataclass
class Slot:
    """One dictionary being trained and everything the loop keeps for it."""

    cfg: TrainConfig
    name: str
    dictionary: Dictionary
    opt: torch.optim.Adam
    since_fired: torch.Tensor
    lr: float
    dead_tokens: int
    resample_every: int
    gen: torch.Generator
    """This dictionary's own RNG (data-dependent init, revival), seeded by ``cfg.seed``: a dictionary trains
    the same whatever else shares its pass over the data, and on whichever rank."""
    recent: list[dict[str, float]] = field(default_factory=list)


def make_slot(cfg: TrainConfig, source: ActivationSource, index: int) -> Slot:
    hook = cfg.hook or _only_hook(source)
    hook_out = cfg.hook_out
    hooks_in, hooks_out = expand_hooks(hook, source), expand_hooks(hook_out, source) if hook_out else []
    d_in = sum(source.d(h) for h in hooks_in)
    if cfg.d_in is not None and d_in != cfg.d_in:
        raise InterpError(
            f"Hook {hook!r} has width {d_in} in the store, but the config expects d_in={cfg.d_in}. "
            "Use a store cached from the right model/hook, or fix d_in."
        )
    d_out = sum(source.d(h) for h in hooks_out) if hook_out else d_in
    d_sae = cfg.d_sae or cfg.expansion * d_in
    model = dict(source.model)
    params = cfg.arch_params()
    accepted = lookup(cfg.architecture).param_defaults
    if hook_out and "transcoder" in accepted:
        params.setdefault("transcoder", True)
    if "init_seed" in accepted:
        params.setdefault("init_seed", cfg.seed)
    d = create(
        cfg.architecture,
        d_in,
        d_sae,
        d_out=d_out,
        hook_in=hook,
        hook_out=hook_out,
        hooks_in=tuple(hooks_in) if len(hooks_in) > 1 else (),
        hooks_out=tuple(hooks_out) if len(hooks_out) > 1 else (),
        normalization=cfg.normalization,
        model_name=model.get("name"),
        model_fingerprint=model.get("fingerprint"),
        **params,
    ).to(cfg.device)
    if d.needs_grads and not source.has_grads:
        raise InterpError(
            f"Architecture {cfg.architecture!r} trains on LM-loss gradients, and this store has none. "
            "Re-cache with `interp cache --with-grads`."
        )
    lr = cfg.lr or 2e-4 / math.sqrt(d_sae / 16384)
    opt = make_optimizer(d, lr, cfg.betas, cfg.adam_eps)
    n_steps = cfg.n_steps
    name = slot_name(cfg, source)
    dead_tokens = cfg.dead_tokens or max(cfg.batch_size, min(10_000_000, cfg.n_tokens // 10))
    resample_every = n_steps // 5 if cfg.resample_every is None else cfg.resample_every
    gen = torch.Generator().manual_seed(cfg.seed)
    return Slot(cfg, name, d, opt, torch.zeros(d_sae, dtype=torch.long), lr, dead_tokens, resample_every, gen)


def slot_name(cfg: TrainConfig, source: ActivationSource) -> str:
    """The dictionary's directory name: ``cfg.name``, or ``<architecture>-<hook>``."""
    return cfg.name or re.sub(r"[^A-Za-z0-9_.-]+", "_", f"{cfg.architecture}-{cfg.hook or _only_hook(source)}")


def slot_hooks(cfg: TrainConfig, source: ActivationSource) -> list[str]:
    """The hooks a config's dictionary reads (its inputs, and a transcoder's targets)."""
    return [h for pattern in (cfg.hook or _only_hook(source), cfg.hook_out) if pattern
            for h in expand_hooks(pattern, source)]


def slot_cost(cfg: TrainConfig, source: ActivationSource) -> float:
    """Relative cost of a training step: the size of the encoder and decoder matrices."""
    d_in = sum(source.d(h) for h in expand_hooks(cfg.hook or _only_hook(source), source))
    d_out = sum(source.d(h) for h in expand_hooks(cfg.hook_out, source)) if cfg.hook_out else d_in
    return float((cfg.d_sae or cfg.expansion * d_in) * (d_in + d_out))


def expand_hooks(pattern: str, source: ActivationSource) -> list[str]:
    """The source's hooks that ``pattern`` names: the hook itself, or every hook a glob pattern (``*``, ``?``,
    ``[...]``) matches, in natural order (``blocks.2`` before ``blocks.10``). A dictionary reads several
    hooks as one row (their rows concatenated), so they must share one width."""
    if not any(c in pattern for c in "*?["):
        return [pattern]
    hooks = sorted((h for h in source.hooks if fnmatch.fnmatchcase(h, pattern)), key=_natural_key)
    if not hooks:
        raise InterpError(f"No hook of the source matches {pattern!r}; it holds {', '.join(source.hooks)}.")
    widths = {source.d(h) for h in hooks}
    if len(widths) > 1:
        raise InterpError(f"The hooks matching {pattern!r} have different widths ({sorted(widths)}); a dictionary "
                          "reads several hooks only when they share one width.")
    return hooks


def _natural_key(name: str) -> list[Any]:
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]


def make_optimizer(
    d: torch.nn.Module, lr: float, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8
) -> torch.optim.Adam:
    """Adam over the dictionary's parameters; the fused kernel (one pass per tensor) where torch has
    it, which on CPU is 5x faster than the per-op loop at d_sae 8192."""
    params = list(d.parameters())
    fused = all(p.device.type in ("cpu", "cuda") and p.is_floating_point() for p in params)
    return torch.optim.Adam(params, lr=lr, betas=betas, eps=eps, fused=fused)


def _only_hook(source: ActivationSource) -> str:
    hooks = list(source.hooks)
    if len(hooks) != 1:
        raise InterpError(f"The store holds several hooks ({', '.join(hooks)}); set TrainConfig.hook.")
    return hooks[0]
