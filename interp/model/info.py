"""What later stages know about a model (:class:`ModelInfo`), its fingerprint, and what a capture returns."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from typing import Any, NamedTuple

import torch


@dataclass(frozen=True)
class ModelInfo:
    """What later stages need to know about a model, and to check that artifacts belong to it."""

    name: str
    """What the user asked for (``demo``, a hub name or a local path)."""
    architecture: str
    """The Hugging Face architecture class, e.g. ``GPT2LMHeadModel``."""
    d_model: int
    """Width of the residual stream."""
    n_layers: int
    """Number of transformer blocks."""
    n_heads: int
    """Attention heads per block."""
    d_head: int
    """Width of one attention head."""
    d_vocab: int
    """Vocabulary size (rows of the embedding)."""
    n_ctx: int
    """Longest context the model accepts."""
    bos_token_id: int | None
    """Token id prepended to every context, or None when the tokenizer has none."""
    processing: str
    """Weight processing applied at load time (a key of ``PROCESSING``); part of the fingerprint."""
    fingerprint: str
    """sha256 (16 hex digits) of the model's config, vocabulary and processing: equal fingerprints, same
    activations."""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class Captured(NamedTuple):
    """Activations (and optionally gradients) captured in one forward pass."""

    acts: dict[str, torch.Tensor]
    """hook name -> activation, shape (batch, pos, *hook_shape), detached."""
    grads: dict[str, torch.Tensor]
    """hook name -> d(summed next-token loss)/d(activation), same shapes; empty unless asked for."""
    loss: torch.Tensor | None
    """Per-token next-token cross-entropy, shape (batch, pos - 1), or None when not computed."""


def fingerprint(hf_config: dict[str, Any], vocab: dict[str, int], processing: str) -> str:
    """16 hex digits of sha256 over the Hugging Face config (as ``to_dict`` gives it, private, version and dtype
    keys dropped), the vocabulary and the processing."""
    canon = {k: v for k, v in sorted(hf_config.items()) if not k.startswith(("_", "transformers"))}
    canon.pop("torch_dtype", None)
    canon.pop("dtype", None)
    digest = hashlib.sha256(json.dumps(canon, sort_keys=True, default=str).encode())
    digest.update(json.dumps(sorted(vocab.items())).encode())
    digest.update(processing.encode())
    return digest.hexdigest()[:16]
