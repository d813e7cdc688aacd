"""Activations computed on the fly: a model run over a corpus, streamed to the trainer without a store.

:class:`ModelSource` is an :class:`~interp.activations.source.ActivationSource`, like the
:class:`~interp.activations.store.ActivationStore` :func:`interp.training.train_dictionary` reads, so
every architecture trains from it unchanged, including g-SAE, whose LM-loss gradients it computes in the
same forward and backward pass. Rows go through the same seeded shuffle buffer as a store's (smaller by
default), inserted BOS rows are dropped, and an epoch is one pass over the corpus (or over its first
``n_tokens`` tokens).

The batch sequence is a pure function of (corpus, seed), so a resumed training run sees the same
batches; resuming re-runs the model over the tokens already consumed (without training on them).
Caching once and training many dictionaries from the store is cheaper whenever the same activations are
used more than once; on the fly is for single runs, sweeps that fit in one pass, and models whose
activations would not fit on disk.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator, Sequence
from typing import Any

import torch

from interp.activations.source import RowSource, act_key, grad_key, probe_shapes
from interp.errors import InterpError
from interp.model.corpus import Context, CorpusConfig, iter_contexts
from interp.model.model import Model, load_model


class ModelSource(RowSource):
    """Rows of ``hooks`` from ``model`` run over ``corpus`` in contexts of ``ctx_len`` tokens."""

    def __init__(
        self,
        model: str | Model,
        hooks: Sequence[str],
        corpus: CorpusConfig | str = "stdlib:train",
        *,
        ctx_len: int = 128,
        batch_contexts: int = 32,
        n_tokens: int | None = None,
        device: str = "cpu",
        processing: str = "default",
    ):
        self.lm = load_model(model, device=device, processing=processing) if isinstance(model, str) else model
        self.corpus = CorpusConfig(corpus) if isinstance(corpus, str) else corpus
        if ctx_len < 2 or ctx_len > self.lm.info.n_ctx:
            raise InterpError(f"ctx_len must be in [2, {self.lm.info.n_ctx}] for this model, got {ctx_len}.")
        if batch_contexts < 1 or (n_tokens is not None and n_tokens < ctx_len):
            raise InterpError("batch_contexts must be >= 1 and n_tokens (when given) at least one context.")
        self.ctx_len, self.batch_contexts, self.n_tokens = ctx_len, batch_contexts, n_tokens
        self._share = (0, 1)  # (rank, n): this source computes contexts i with i % n == rank
        self._hooks = self.lm.resolve_hooks(list(hooks))
        first = next(self._contexts())  # an empty corpus fails here, before any training
        self.shapes = probe_shapes(self.lm, self._hooks, first)
        self.path = None

    @property
    def hooks(self) -> list[str]:
        return list(self._hooks)

    @property
    def has_grads(self) -> bool:
        return True  # computed on demand

    @property
    def model(self) -> dict[str, Any]:
        return self.lm.info.to_dict()

    def d(self, hook: str) -> int:
        if hook not in self.shapes:
            raise InterpError(f"This source computes {', '.join(self.shapes)}, not {hook!r}.")
        return int(torch.Size(self.shapes[hook]).numel())

    def _default_buffer_rows(self, batch_size: int) -> int:
        # Every buffered row costs a forward pass before the first batch comes out, so a store-sized buffer
        # would delay (and, for a short run, dominate) training: 8 batches of rows.
        return 8 * batch_size

    def _epoch(
        self, hooks: list[str], grads: bool, block_rows: int, gen: torch.Generator | None, exclude_bos: bool
    ) -> Iterator[dict[str, torch.Tensor]]:
        """One pass over the corpus, in corpus order (the shuffle buffer mixes it): a row group per forward
        batch, on the CPU in float32."""
        group: list[Context] = []
        for ctx in self._contexts():
            group.append(ctx)
            if len(group) == self.batch_contexts:
                yield self._forward(group, hooks, grads, exclude_bos)
                group = []
        if group:
            yield self._forward(group, hooks, grads, exclude_bos)

    def _for_rank(self, rank: int, n: int) -> ModelSource:
        """This source restricted to contexts ``rank``, ``rank + n``, ...: each rank runs the model on its own
        share of the corpus."""
        local = copy.copy(self)
        local._share = (rank, n)
        return local

    def _contexts(self) -> Iterator[Context]:
        contexts = iter_contexts(self.corpus, self.lm.tokenizer, self.ctx_len, self.lm.info.bos_token_id)
        if self.n_tokens is not None:
            contexts = (c for _, c in zip(range(-(-self.n_tokens // self.ctx_len)), contexts))
        rank, n = self._share
        return contexts if n == 1 else (c for i, c in enumerate(contexts) if i % n == rank)

    def _forward(
        self, group: list[Context], hooks: list[str], grads: bool, exclude_bos: bool
    ) -> dict[str, torch.Tensor]:
        tokens = torch.stack([c.tokens for c in group])
        cap = self.lm.capture(tokens, hooks, with_grads=grads)
        keep = torch.cat([c.pos for c in group]) >= 0 if exclude_bos else slice(None)
        rows = {}
        for h in hooks:
            rows[act_key(h)] = cap.acts[h].reshape(tokens.numel(), -1).float().cpu()[keep]
            if grads:
                rows[grad_key(h)] = cap.grads[h].reshape(tokens.numel(), -1).float().cpu()[keep]
        return rows
