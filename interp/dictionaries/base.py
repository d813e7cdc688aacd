"""The dictionary interface, its config, the registry, and save/load.

A dictionary maps an activation ``x`` (N, d_in) to latents ``f`` (N, d_sae) and back to a reconstruction
(N, d_out). ``d_out == d_in`` for autoencoders; transcoders read one hook and predict another.

Constraints this module was designed under:
- callers pass raw activations and get raw-scale reconstructions: input normalisation lives inside
  ``encode``/``forward`` and is stored in ``cfg.normalization`` plus the ``in_scale``/``out_scale`` buffers;
- an architecture owns only its maths (``encode_normalized``, ``decode_normalized``, ``training_step``,
  constraints, revival); the trainer in ``interp.training.loop`` owns the loop and never asks which
  architecture it is running;
- on disk a dictionary is ``cfg.json`` + ``weights.safetensors``, written atomically, never pickled
  (``interp.dictionaries.saving``); architectures are looked up by name (``interp.dictionaries.registry``).
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import torch
from torch import nn

from interp.errors import InterpError

NORMALIZATIONS = ("none", "scalar", "standardize")
_EPS = 1e-5


@dataclass(frozen=True)
class DictionaryConfig:
    """Everything needed to rebuild a dictionary and to check what it may be used with. It describes a
    saved artefact, so it is frozen; results (training metrics) live in ``metrics.json`` beside it."""

    architecture: str
    """Registry name, e.g. ``topk``; loading looks the class up by this name."""
    d_in: int
    """Width of the input activation (for ``attn.hook_z``: n_heads * d_head)."""
    d_sae: int
    """Number of latents (dictionary atoms)."""
    d_out: int = 0
    """Width of the reconstruction; 0 means ``d_in`` (an autoencoder)."""
    hook_in: str | None = None
    """The hook the dictionary reads, e.g. ``blocks.1.hook_resid_post``."""
    hook_out: str | None = None
    """The hook a transcoder predicts; None for autoencoders."""
    hooks_in: tuple[str, ...] = ()
    """Every hook the dictionary reads, in order, when it reads several (a cross-layer transcoder reads every
    layer's MLP input). Its input row is their rows concatenated, each ``d_in // len(hooks_in)`` wide, and
    ``hook_in`` is the pattern that matched them. Empty: it reads ``hook_in`` alone."""
    hooks_out: tuple[str, ...] = ()
    """Likewise, every hook a multi-hook transcoder predicts (``d_out // len(hooks_out)`` wide each)."""
    model_name: str | None = None
    """Name of the model whose activations trained it (``ModelInfo.name``)."""
    model_fingerprint: str | None = None
    """``ModelInfo.fingerprint`` of that model; :func:`check_compatible` compares it."""
    normalization: str = "none"
    """Input normalisation: ``none``; ``scalar`` (x times a constant so E||x|| = sqrt(d));
    ``standardize`` (per token: subtract the mean, divide by std + 1e-5; inverted after decoding)."""
    params: dict[str, Any] = field(default_factory=dict)
    """Architecture-specific hyperparameters (k, l1_coeff, ...), defaults filled in."""
    training: dict[str, Any] = field(default_factory=dict)
    """The TrainConfig it was trained with, and where its data came from."""

    def __post_init__(self) -> None:
        if self.d_out == 0:
            object.__setattr__(self, "d_out", self.d_in)
        object.__setattr__(self, "hooks_in", tuple(self.hooks_in))
        object.__setattr__(self, "hooks_out", tuple(self.hooks_out))
        for hooks, width in ((self.hooks_in, self.d_in), (self.hooks_out, self.d_out)):
            if hooks and width % len(hooks):
                raise InterpError(f"A width of {width} does not split evenly over the {len(hooks)} hooks {hooks}.")
        if self.normalization == "standardize" and len(self.hooks_in) > 1:
            raise InterpError("Per-token standardisation is not defined over several hooks; use 'scalar'.")
        if min(self.d_in, self.d_sae, self.d_out) < 1:
            raise InterpError(f"Dictionary sizes must be positive (d_in={self.d_in}, d_sae={self.d_sae}).")
        if self.normalization not in NORMALIZATIONS:
            raise InterpError(
                f"normalization must be one of {', '.join(NORMALIZATIONS)}, got {self.normalization!r}."
            )
        if self.normalization == "standardize" and self.is_transcoder:
            raise InterpError(
                "Per-token standardisation cannot be inverted for a transcoder's output; use 'scalar'."
            )

    @property
    def is_transcoder(self) -> bool:
        return self.hook_out is not None or bool(self.hooks_out) or bool(self.params.get("transcoder"))


class TrainBatch(NamedTuple):
    """One training batch, already normalised by the dictionary."""

    x: torch.Tensor
    """Inputs (N, d_in), normalised."""
    y: torch.Tensor
    """Targets (N, d_out), normalised; the same tensor as ``x`` for autoencoders."""
    grad: torch.Tensor | None
    """d(LM loss)/d(x) in normalised coordinates (N, d_in), when the store has gradients."""


class TrainState(NamedTuple):
    """What the trainer tells an architecture about where training is."""

    step: int
    """Optimiser steps taken before this one."""
    n_steps: int
    """Total steps of the run."""
    dead: torch.Tensor
    """(d_sae,) bool: latents that have not fired within the dead window."""


class StepOutput(NamedTuple):
    """An architecture's training forward pass."""

    loss: torch.Tensor
    """Scalar to minimise (reconstruction plus the architecture's own terms)."""
    y_hat: torch.Tensor
    """Reconstruction (N, d_out) in normalised coordinates, detached or not."""
    fired: torch.Tensor
    """(d_sae,) bool: latents that fired on at least one row (for dead-latent tracking)."""
    l0: float
    """Mean number of active latents per row."""
    terms: dict[str, float]
    """Named loss components for the log, e.g. ``{"mse": ..., "aux": ...}``."""


class Dictionary(nn.Module, ABC):
    """Abstract base of every architecture. Subclasses register with :func:`register`.

    Contract: ``encode`` (N, d_in) -> (N, d_sae); ``decode`` (N, d_sae) -> (N, d_out);
    ``forward(x) == decode(encode(x))`` in raw coordinates (for ``standardize``, ``decode`` needs the
    per-token ``stats`` that ``normalize_input`` returns to undo the standardisation).
    ``W_dec`` is (d_sae, d_out) with row i the atom of latent i; ``W_enc`` is (d_in, d_sae).
    """

    param_defaults: dict[str, Any] = {}
    """Architecture hyperparameters and their defaults; ``create`` rejects other names."""
    needs_grads: bool = False
    """True when training reads LM-loss gradients from the store (``interp cache --with-grads``)."""
    causal: bool = False
    """With several input and output hooks: output hook i depends only on input hooks 0..i (a cross-layer
    transcoder), so one forward pass can splice every output hook (``interp.training.evals``)."""
    in_scale: torch.Tensor
    """() buffer: the ``scalar`` normalisation's input multiplier (1 otherwise); (n_hooks,), one per input
    hook, for a dictionary that reads several."""
    out_scale: torch.Tensor
    """() buffer: the ``scalar`` normalisation's target multiplier; (n_hooks,) like ``in_scale``."""

    def __init__(self, cfg: DictionaryConfig):
        super().__init__()
        self.cfg = cfg
        n_in, n_out = len(cfg.hooks_in), len(cfg.hooks_out or cfg.hooks_in)
        self.register_buffer("in_scale", torch.ones(n_in) if n_in > 1 else torch.ones(()))
        self.register_buffer("out_scale", torch.ones(n_out) if n_out > 1 else torch.ones(()))

    @property
    def p(self) -> dict[str, Any]:
        return self.cfg.params

    @property
    def input_hook(self) -> str:
        """The hook the dictionary reads (``cfg.hook_in``); InterpError for one made without a hook, or for one
        that reads several hooks (see :attr:`input_hooks`)."""
        if self.cfg.hook_in is None:
            raise InterpError(
                f"This {self.cfg.architecture} dictionary names no input hook (cfg.hook_in); it was not made "
                "from activations of a model. Create it with hook_in=..."
            )
        if len(self.cfg.hooks_in) > 1:
            raise InterpError(
                f"This {self.cfg.architecture} dictionary reads {len(self.cfg.hooks_in)} hooks "
                f"({self.cfg.hook_in}); this step handles dictionaries that read one hook."
            )
        return self.cfg.hook_in

    @property
    def input_hooks(self) -> tuple[str, ...]:
        """Every hook the dictionary reads, in the order their rows are concatenated into its input."""
        return self.cfg.hooks_in or (self.input_hook,)

    @property
    def output_hooks(self) -> tuple[str, ...]:
        """Every hook it reconstructs, in the order of its output: a transcoder's targets, else its inputs."""
        if self.cfg.hooks_out:
            return self.cfg.hooks_out
        return (self.cfg.hook_out,) if self.cfg.hook_out else self.input_hooks

    def input_rows(self, acts: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """Its input rows (N, d_in) from ``acts`` (hook -> (N, width) rows): the input hooks' rows concatenated."""
        return _concat_rows(acts, self.input_hooks)

    def output_rows(self, acts: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """Its target rows (N, d_out) from ``acts``: the output hooks' rows concatenated."""
        return _concat_rows(acts, self.output_hooks)

    # ---- normalisation ----------------------------------------------------------------------
    def normalize_input(
        self, x: torch.Tensor
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor] | None]:
        """Raw (N, d_in) -> normalised, plus the per-token (mean, std) when standardising."""
        x = x.to(self.in_scale.dtype)
        if self.cfg.normalization == "standardize":
            mu = x.mean(-1, keepdim=True)
            std = x.std(-1, keepdim=True) + _EPS
            return (x - mu) / std, (mu, std)
        return x * per_column(self.in_scale, self.cfg.d_in), None

    def normalize_target(
        self, y: torch.Tensor, stats: tuple[torch.Tensor, torch.Tensor] | None
    ) -> torch.Tensor:
        """Raw target (N, d_out) -> the coordinates the reconstruction is made in."""
        y = y.to(self.out_scale.dtype)
        if stats is not None:
            return (y - stats[0]) / stats[1]
        return y * per_column(self.out_scale, self.cfg.d_out)

    def normalize_grad(
        self, g: torch.Tensor, stats: tuple[torch.Tensor, torch.Tensor] | None
    ) -> torch.Tensor:
        """d(loss)/dx (raw) -> d(loss)/d(normalised x) (the per-token mean's dependence is ignored)."""
        g = g.to(self.in_scale.dtype)
        return g * stats[1] if stats is not None else g / per_column(self.in_scale, self.cfg.d_in)

    def denormalize_output(
        self, y: torch.Tensor, stats: tuple[torch.Tensor, torch.Tensor] | None
    ) -> torch.Tensor:
        if stats is not None:
            return y * stats[1] + stats[0]
        return y / per_column(self.out_scale, self.cfg.d_out)

    @torch.no_grad()
    def fit_normalization(self, x: torch.Tensor, y: torch.Tensor) -> None:
        """Set the ``scalar`` constants from a raw sample so that E||x|| = sqrt(d) (no-op otherwise); one
        constant per hook for a dictionary that reads (or predicts) several."""
        if self.cfg.normalization == "scalar":
            for scale, rows in ((self.in_scale, x), (self.out_scale, y)):
                blocks = rows.view(len(rows), scale.numel(), -1)
                mean_norm = blocks.norm(dim=2).mean(0).clamp_min(1e-12).double()
                scale.copy_((math.sqrt(blocks.shape[2]) / mean_norm).view_as(scale))

    # ---- public inference API ---------------------------------------------------------------
    def encode(self, x: torch.Tensor, **kw: Any) -> torch.Tensor:
        """Latent activations (N, d_sae) of raw inputs (N, d_in)."""
        return self.encode_normalized(self.normalize_input(x)[0], **kw)

    def decode(self, f: torch.Tensor, stats: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        """Raw-scale reconstruction (N, d_out) of latents (N, d_sae)."""
        return self.denormalize_output(self.decode_normalized(f), stats)

    def forward(self, x: torch.Tensor, **kw: Any) -> torch.Tensor:
        """Reconstruction (N, d_out) of raw inputs (N, d_in), in raw coordinates."""
        xn, stats = self.normalize_input(x)
        return self.denormalize_output(self.reconstruct_normalized(xn, **kw), stats)

    def reconstruct_normalized(self, xn: torch.Tensor, **kw: Any) -> torch.Tensor:
        """Normalised inputs to normalised reconstruction; skip transcoders add their linear path here."""
        return self.decode_normalized(self.encode_normalized(xn, **kw))

    # ---- the architecture's maths -----------------------------------------------------------
    @abstractmethod
    def encode_normalized(self, x: torch.Tensor, **kw: Any) -> torch.Tensor:
        """(N, d_in) normalised -> (N, d_sae) inference activations."""

    @abstractmethod
    def decode_normalized(self, f: torch.Tensor) -> torch.Tensor:
        """(N, d_sae) -> (N, d_out) normalised reconstruction."""

    @abstractmethod
    def training_step(self, batch: TrainBatch, state: TrainState) -> StepOutput:
        """The training forward pass and loss (the trainer calls ``backward`` on ``loss``)."""

    @property
    @abstractmethod
    def W_dec(self) -> torch.Tensor:
        """(d_sae, d_out) dictionary atoms."""

    @property
    @abstractmethod
    def W_enc(self) -> torch.Tensor:
        """(d_in, d_sae) encoder directions."""

    # ---- hooks the trainer calls (defaults do nothing) ----------------------------------------
    @torch.no_grad()
    def init_from_data(self, x: torch.Tensor, y: torch.Tensor, generator: torch.Generator) -> None:
        """Data-dependent initialisation from normalised samples ``x`` (M, d_in), ``y`` (M, d_out)."""

    def constrain_grads(self) -> None:
        """Adjust gradients after ``backward`` (e.g. remove the component parallel to unit-norm atoms)."""

    def constrain_weights(self) -> None:
        """Project parameters back onto their constraint set after the optimiser step."""

    def revive(
        self, dead: torch.Tensor, batch: TrainBatch, generator: torch.Generator
    ) -> dict[str, tuple[int, torch.Tensor]]:
        """Re-initialise dead latents (called every ``resample_every`` steps).

        Returns ``{parameter name: (dim, indices)}`` for the slices it rewrote, so the trainer can zero
        their Adam moments. The default does nothing (TopK-style codes use an auxiliary loss instead).
        """
        return {}


def _concat_rows(acts: Mapping[str, torch.Tensor], hooks: Sequence[str]) -> torch.Tensor:
    return acts[hooks[0]] if len(hooks) == 1 else torch.cat([acts[h] for h in hooks], dim=1)


def per_column(scale: torch.Tensor, width: int) -> torch.Tensor:
    """A normalisation constant as a multiplier of rows ``width`` wide: a () scale as is, an (n_hooks,) scale
    repeated over each hook's block of columns."""
    return scale if scale.dim() == 0 else scale.repeat_interleave(width // scale.numel())


def revive_at_rows(
    dead: torch.Tensor,
    x: torch.Tensor,
    generator: torch.Generator,
    repoint: Callable[[torch.Tensor, torch.Tensor], dict[str, tuple[int, torch.Tensor]]],
) -> dict[str, tuple[int, torch.Tensor]]:
    """Revival from batch rows: draw one row of ``x`` uniformly for each ``dead`` latent and call
    ``repoint(latent indices, their rows)``, which rewrites those atoms and returns what it rewrote (see
    :meth:`Dictionary.revive`); ``{}`` when none is dead."""
    idx = dead.nonzero().flatten()
    if idx.numel() == 0:
        return {}
    return repoint(idx, x[torch.randint(len(x), (idx.numel(),), generator=generator)])


