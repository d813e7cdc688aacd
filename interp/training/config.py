"""What to train: :class:`TrainConfig` (one dictionary), and sweep files of them.

A sweep file is JSON: one object of TrainConfig fields, or a list of them trained in one pass over the
data (they must agree on the data fields). :func:`load_train_configs` reads it, with overrides applied
to every entry (the CLI's flags), and is the only place such files are parsed.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch

from interp.configs import config_from_dict
from interp.dictionaries.base import NORMALIZATIONS
from interp.dictionaries.registry import lookup
from interp.errors import InterpError
from interp.io import read_json

SCHEDULES = ("constant", "linear", "cosine")
AUTOCAST: dict[str | None, torch.dtype | None] = {None: None, "bfloat16": torch.bfloat16}


@dataclass(frozen=True)
class TrainConfig:
    """What to train and how. One config describes one dictionary."""

    architecture: str = "topk"
    """Registry name (see ``interp.dictionaries.REGISTRY``)."""
    hook: str | None = None
    """Input hook in the store; None uses the store's only hook. A glob pattern (``blocks.*.ln2.hook_normalized``)
    reads every matching hook as one row, in layer order (a cross-layer transcoder's inputs)."""
    hook_out: str | None = None
    """Target hook for transcoders (e.g. ``blocks.0.hook_mlp_out``, or a pattern such as ``blocks.*.hook_mlp_out``);
    None for autoencoders."""
    expansion: int = 8
    """d_sae = expansion * d_in, unless ``d_sae`` is given."""
    d_sae: int | None = None
    """Number of latents; overrides ``expansion``."""
    d_in: int | None = None
    """Expected input width; when given, a store with another width is refused before training."""
    k: int | None = None
    """Shortcut for ``params["k"]`` (active latents / pursuit steps / codes per token)."""
    params: dict[str, Any] = field(default_factory=dict)
    """Architecture hyperparameters, e.g. ``{"l1_coeff": 5.0}``; unknown names are refused."""
    normalization: Literal["none", "scalar", "standardize"] = "scalar"
    """``none``, ``scalar`` (E||x|| = sqrt(d), fixed from the init sample) or ``standardize`` (per token)."""
    n_tokens: int = 1_000_000
    """Training tokens; the store is reused in reshuffled epochs when it is smaller."""
    batch_size: int = 4096
    """Tokens per optimiser step."""
    lr: float | None = None
    """Adam learning rate; None gives 2e-4 / sqrt(d_sae / 16384) (sparsify's scaling rule)."""
    betas: tuple[float, float] = (0.9, 0.999)
    """Adam betas."""
    adam_eps: float = 1e-8
    """Adam epsilon."""
    warmup_steps: int = 0
    """Linear learning-rate warmup from 0 over this many steps."""
    schedule: Literal["constant", "linear", "cosine"] = "linear"
    """LR after warmup: ``constant``, ``linear`` (to 0 over the last ``decay_fraction``) or ``cosine``."""
    decay_fraction: float = 0.2
    """Fraction of the run at the end over which ``linear`` decays the LR to 0."""
    grad_clip: float | None = 1.0
    """Clip the global gradient norm to this (None: no clipping)."""
    dead_tokens: int | None = None
    """A latent is dead after this many tokens without firing; None gives min(10M, n_tokens // 10)."""
    resample_every: int | None = None
    """Steps between revival calls (resampling, dead-code replacement); None: n_steps // 5; 0: never."""
    resample_until: float = 0.7
    """No revival after this fraction of the run, so revived latents have time to train."""
    init_tokens: int = 16384
    """Rows used for data-dependent init (normalisation constant, geometric median, k-means)."""
    nan_policy: Literal["stop", "skip"] = "stop"
    """On a non-finite batch or loss: ``stop`` (raise InterpError, checkpoint kept) or ``skip`` the batch."""
    seed: int = 0
    """Seeds data order, init and revival."""
    checkpoint_every: int | None = None
    """Write a resumable checkpoint every this many steps (None: every tenth of the run)."""
    log_every: int = 25
    """Steps between JSONL log lines (``train_log.jsonl``)."""
    device: str = "cpu"
    """Where training runs."""
    autocast: Literal["bfloat16"] | None = None
    """``bfloat16``: run the training step under torch autocast (weights, Adam state and checkpoints stay
    float32). None trains in float32. (float16 would need loss scaling, so it is not offered.)"""
    name: str | None = None
    """Sub-directory of ``out_dir`` for this dictionary; None gives ``<architecture>-<hook>``."""
    wandb_project: str | None = None
    """Also log to this Weights & Biases project, when wandb is importable."""

    def __post_init__(self) -> None:
        lookup(self.architecture)
        object.__setattr__(self, "params", dict(self.params))
        object.__setattr__(self, "betas", tuple(self.betas))
        checks = [
            (self.expansion >= 1, "expansion must be >= 1"),
            (self.d_sae is None or self.d_sae >= 1, "d_sae must be >= 1"),
            (self.k is None or self.k >= 1, "k must be >= 1"),
            (self.n_tokens >= 1 and self.batch_size >= 1, "n_tokens and batch_size must be >= 1"),
            (self.n_tokens >= self.batch_size, "n_tokens must be at least one batch (batch_size)"),
            (self.lr is None or self.lr > 0, "lr must be positive"),
            (self.normalization in NORMALIZATIONS, f"normalization must be one of {NORMALIZATIONS}"),
            (self.schedule in SCHEDULES, f"schedule must be one of {SCHEDULES}"),
            (0 <= self.decay_fraction <= 1 and 0 <= self.resample_until <= 1, "fractions must be in [0, 1]"),
            (self.nan_policy in ("stop", "skip"), "nan_policy must be 'stop' or 'skip'"),
            (self.warmup_steps >= 0 and self.log_every >= 1, "warmup_steps >= 0 and log_every >= 1"),
            (self.checkpoint_every is None or self.checkpoint_every >= 1, "checkpoint_every must be >= 1"),
            (self.autocast in AUTOCAST, f"autocast must be one of {list(AUTOCAST)}"),
        ]
        for ok, msg in checks:
            if not ok:
                raise InterpError(f"Bad TrainConfig: {msg}.")

    @property
    def n_steps(self) -> int:
        return self.n_tokens // self.batch_size

    def arch_params(self) -> dict[str, Any]:
        return {**self.params, **({"k": self.k} if self.k is not None else {})}

    def data_key(self) -> tuple[Any, ...]:
        return (self.n_tokens, self.batch_size, self.seed, self.device)


def load_train_configs(
    source: str | Path | Mapping[str, Any] | Sequence[Mapping[str, Any]] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> list[TrainConfig]:
    """The configs of a sweep file (a path), or of an already parsed object or list of objects, with
    ``overrides`` (TrainConfig fields; ``params`` entries are merged) applied to every entry. ``None``
    gives one config from the overrides alone. Raises InterpError for anything that is not a config."""
    what = f"training config {source}" if isinstance(source, (str, Path)) else "training config"
    loaded: Any = read_json(source, "training config") if isinstance(source, (str, Path)) else source
    entries = [{}] if loaded is None else loaded if isinstance(loaded, list) else [loaded]
    if not entries or not all(isinstance(e, Mapping) for e in entries):
        raise InterpError(
            f"The {what} must be a JSON object of TrainConfig fields, or a non-empty list of them (a sweep "
            "trained in one pass over the data)."
        )
    extra = dict(overrides or {})
    extra_params = dict(extra.pop("params", None) or {})
    configs = []
    for entry in entries:
        merged = {**entry, **extra}
        merged["params"] = {**dict(entry.get("params") or {}), **extra_params}
        configs.append(config_from_dict(TrainConfig, merged, what))
    return configs
