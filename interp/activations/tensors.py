"""In-memory activations as a source: tensors the caller already has (toy data, small experiments, tests)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch

from interp.activations.source import RowSource, act_key, grad_key
from interp.errors import InterpError


class TensorSource(RowSource):
    """Rows per hook held in memory, streamed like a store; every row is used (there are no BOS rows).

    With ``shuffle`` each epoch is one exact random permutation of the rows (drawn from the batches' seed),
    so no shuffle buffer is needed.
    """

    def __init__(
        self,
        acts: dict[str, torch.Tensor],
        grads: dict[str, torch.Tensor] | None = None,
        model: dict[str, Any] | None = None,
    ):
        lengths = {v.shape[0] for v in [*acts.values(), *(grads or {}).values()]}
        if len(lengths) != 1:
            raise InterpError("Every tensor of a TensorSource needs the same number of rows.")
        self.acts = {k: v.float() for k, v in acts.items()}
        self.grads = {k: v.float() for k, v in (grads or {}).items()}
        self.model: dict[str, Any] = dict(model or {})
        self.path = None
        self.ctx_len: int | None = None  # rows are not from contexts

    @property
    def hooks(self) -> list[str]:
        return list(self.acts)

    @property
    def n_rows(self) -> int:
        return next(iter(self.acts.values())).shape[0]

    @property
    def has_grads(self) -> bool:
        return bool(self.grads)

    def d(self, hook: str) -> int:
        if hook not in self.acts:
            raise InterpError(f"TensorSource has no hook {hook!r}; it holds {', '.join(self.acts)}.")
        return self.acts[hook].shape[1]

    def _default_buffer_rows(self, batch_size: int) -> int:
        return 0  # each epoch is already a full permutation

    def _epoch(
        self, hooks: list[str], grads: bool, block_rows: int, gen: torch.Generator | None, exclude_bos: bool
    ) -> Iterator[dict[str, torch.Tensor]]:
        order = torch.randperm(self.n_rows, generator=gen) if gen is not None else torch.arange(self.n_rows)
        for a in range(0, self.n_rows, block_rows):
            idx = order[a : a + block_rows]
            group = {act_key(h): self.acts[h][idx] for h in hooks}
            if grads:
                group.update({grad_key(h): self.grads[h][idx] for h in hooks})
            yield group
