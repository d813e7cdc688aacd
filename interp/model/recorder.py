"""What :meth:`interp.model.Model.capture` keeps while a forward pass runs: the activations at the hooks, and
(with gradients) a zero leaf added to each, so that d loss / d leaf is d loss / d activation."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

HookFn = Callable[[torch.Tensor, Any], torch.Tensor | None]


class Recorder:
    """Keeps captured activations; with gradients, adds a zero leaf to each (d loss / d leaf == d loss / d act,
    and the graph is intact)."""

    def __init__(self, with_grads: bool):
        self.with_grads = with_grads
        self.acts: dict[str, torch.Tensor] = {}
        self.deltas: dict[str, torch.Tensor] = {}

    def record(self, name: str, act: torch.Tensor, value: bool = True, delta: bool = True) -> torch.Tensor | None:
        if value:
            self.acts[name] = act.detach()
        if not (self.with_grads and delta):
            return None
        self.deltas[name] = leaf = torch.zeros_like(act, requires_grad=True)
        return act + leaf

    def bridge_hook(self, name: str, value: bool = True, delta: bool = True) -> HookFn:
        return lambda act, hook: self.record(name, act, value, delta)

    def module_hook(self, name: str) -> Callable[[Any, Any, torch.Tensor], torch.Tensor | None]:
        return lambda module, args, out: self.record(name, out)

    def grads(self, loss: torch.Tensor) -> dict[str, torch.Tensor]:
        names, leaves = list(self.deltas), list(self.deltas.values())
        grads = torch.autograd.grad(loss.sum(), leaves, allow_unused=True)
        return {n: g if g is not None else torch.zeros_like(leaf) for n, g, leaf in zip(names, grads, leaves)}
