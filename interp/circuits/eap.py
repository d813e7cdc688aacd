"""Edge attribution: EAP, EAP-IG over the input, and EAP-IG over each component's activations.

Every method scores edge (u -> v) as ``(out'_u - out_u) . G_v``, summed over positions and averaged over
prompts, where ``out'`` / ``out`` are u's outputs on corrupted / clean prompts and ``G_v`` is a gradient of the
metric with respect to v's input (see :mod:`interp.circuits.components` for sources and destinations):

- **EAP** (Syed et al. 2023): ``G_v`` at the clean run. Cost: a corrupted forward, a clean forward and one
  backward (the clean outputs are taken from the forward that the backward runs through).
- **EAP-IG, inputs** (Hanna et al. 2024): ``G_v`` averaged over m runs whose input embeddings are
  ``x' + (k/m)(x - x')`` for k = 0..m-1 (the corrupted end included, the clean end not, as in the reference).
  As m grows, the scores of the edges leaving ``input`` sum to m(clean) - m(corrupted).
- **EAP-IG, activations**: for the edges leaving a component group (the embeddings, one layer's heads, one
  MLP), ``G_v`` averaged over m clean runs in which that group's output is ``a' + (k/m)(a - a')`` for
  k = 1..m. As m grows, the scores of the edges leaving a group sum to m(clean) minus the metric with that group
  patched from the corrupted run. (hannamw/EAP-IG's ``ig-activations`` instead averages the gradients of all
  groups' interpolations into every edge; we integrate each edge along its own source, which is what makes
  the sums above hold.)

Interpolation steps are batched: K steps of a prompt batch run as one forward of K * B rows.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from interp.circuits.components import (
    ComponentGraph,
    HookList,
    capture_hooks,
    capture_sources,
    dest_hook_names,
    source_hooks,
)
from interp.circuits.tasks import Baseline, Task, TaskBatch, task_batches
from interp.errors import InterpError

INPUT_SITE = "blocks.0.hook_resid_pre"


def _tap(cg: ComponentGraph, dst: Any, delta: torch.Tensor, rows: range, scores: torch.Tensor, K: int, B: int
         ) -> Callable[[torch.Tensor, Any], torch.Tensor | None]:
    """A destination hook whose gradient adds ``delta[rows] . grad`` (summed over K copies) into ``scores``."""
    heads = not isinstance(dst, int)
    cols = slice(dst.start, dst.stop) if heads else dst
    first = dst.start if heads else dst
    r = range(rows.start, min(rows.stop, cg.n_upstream(first)))

    def hook(act: torch.Tensor, hook: Any) -> torch.Tensor | None:
        if len(r) == 0 or not act.requires_grad:
            return None
        x = act * 1.0

        def on_grad(grad: torch.Tensor) -> None:
            g = grad.view(K, B, *grad.shape[1:]).sum(0)
            d = delta[r.start : r.stop]
            if heads:
                scores[r.start : r.stop, cols] += torch.einsum("sbpd,bpcd->sc", d, g)
            else:
                scores[r.start : r.stop, cols] += torch.einsum("sbpd,bpd->s", d, g)

        x.register_hook(on_grad)
        return x

    return hook


def _backward(model: Any, cg: ComponentGraph, batch: TaskBatch, hooks: HookList, delta: torch.Tensor,
              rows: range, scores: torch.Tensor, K: int, n_total: int) -> None:
    """Run K copies of the clean batch with ``hooks`` and backpropagate the metric into edge ``scores``."""
    B = batch.size
    taps = [(name, _tap(cg, dst, delta, rows, scores, K, B)) for name, dst in dest_hook_names(cg)]
    with torch.enable_grad(), model.hooks(hooks + taps):
        final = model.logits_at(batch.clean.repeat(K, 1), batch.positions("clean", K))
        (batch.values(final).sum() / n_total).backward()


def _refuse_kl(task: Task, method: str) -> None:
    if task.metric == "kl":
        raise InterpError(f"{method} takes gradients at the clean run, where the kl metric and its gradient are zero. "
                          "Use a logit_diff or prob_diff task, or EAP-IG / ACDC.")


def eap(model: Any, task: Task, baseline: Baseline, *, batch_size: int = 32) -> torch.Tensor:
    """EAP edge scores, (n_src, n_dst) float32 on CPU, zero off the edge set."""
    _refuse_kl(task, "EAP")
    cg = ComponentGraph.of(model)
    scores = torch.zeros(cg.n_src, cg.n_dst, device=model.device)
    W_O = model.W_O
    for batch in task_batches(task, baseline, batch_size, model.device):
        # delta becomes corrupted - clean outputs as the clean forward below stores its outputs
        delta, _ = capture_sources(model, cg, batch.corrupted, batch.corrupted_pos)

        def store(first: int, count: int, value: torch.Tensor, delta: torch.Tensor = delta) -> None:
            delta[first : first + count] -= value.detach()

        def leaf(act: torch.Tensor, hook: Any) -> torch.Tensor:
            return act.detach().requires_grad_(True)

        hooks = source_hooks(cg, store, W_O) + [(INPUT_SITE, leaf)]
        _backward(model, cg, batch, hooks, delta, range(cg.n_src), scores, 1, task.n)
    return scores.cpu()


def _steps(alphas: torch.Tensor, max_rows: int, B: int) -> list[torch.Tensor]:
    k = max(1, max_rows // B)
    return [alphas[a : a + k] for a in range(0, len(alphas), k)]


def _interpolate(site: str, clean: torch.Tensor, corrupted: torch.Tensor, alphas: torch.Tensor
                 ) -> tuple[str, Callable[[torch.Tensor, Any], torch.Tensor]]:
    """A hook replacing ``site`` by ``corrupted + alpha (clean - corrupted)``, copy k using ``alphas[k]``."""
    a = alphas.to(clean.device).view(-1, *([1] * clean.dim()))
    value = (corrupted[None] + a * (clean - corrupted)[None]).flatten(0, 1)

    def hook(act: torch.Tensor, hook: Any) -> torch.Tensor:
        return value.clone().requires_grad_(True)

    return site, hook


def _integrated(model: Any, task: Task, baseline: Baseline, alphas: torch.Tensor,
                groups: list[tuple[str, range]] | None, batch_size: int, max_rows: int) -> torch.Tensor:
    """The loop both EAP-IG variants share. ``groups`` None: interpolate the input embeddings and score every
    edge; else, per (site, source rows) group, interpolate that site and score the edges leaving those rows."""
    if len(alphas) < 1:
        raise InterpError("EAP-IG needs steps >= 1.")
    cg = ComponentGraph.of(model)
    scores = torch.zeros(cg.n_src, cg.n_dst, device=model.device)
    for batch in task_batches(task, baseline, batch_size, model.device):
        corrupted, _ = capture_sources(model, cg, batch.corrupted, batch.corrupted_pos)
        clean, _ = capture_sources(model, cg, batch.clean, batch.clean_pos)
        delta = corrupted - clean
        if groups is None:
            plan = [(INPUT_SITE, range(cg.n_src), clean[0], corrupted[0])]
        else:
            sites = [site for site, _ in groups]
            ends = [capture_hooks(model, tokens, sites) for tokens in (batch.clean, batch.corrupted)]
            plan = [(site, rows, ends[0][site], ends[1][site]) for site, rows in groups]
        for site, rows, at_clean, at_corrupted in plan:
            for chunk in _steps(alphas, max_rows, batch.size):
                hook = _interpolate(site, at_clean, at_corrupted, chunk)
                _backward(model, cg, batch, [hook], delta, rows, scores, len(chunk), task.n)
    return (scores / len(alphas)).cpu()


def eap_ig(model: Any, task: Task, baseline: Baseline, *, steps: int = 5, batch_size: int = 32,
           max_rows: int = 256) -> torch.Tensor:
    """EAP-IG with input interpolation, alphas k/m for k = 0..m-1 (see the module docstring); (n_src, n_dst)."""
    alphas = torch.arange(steps, dtype=torch.float32) / max(steps, 1)
    return _integrated(model, task, baseline, alphas, None, batch_size, max_rows)


def _groups(cg: ComponentGraph) -> list[tuple[str, range]]:
    """(site hook, source rows) of each component group, in forward order."""
    groups = [(INPUT_SITE, range(0, 1))]
    for layer in range(cg.n_layers):
        groups.append((f"blocks.{layer}.attn.hook_z", range(cg.head_src(layer), cg.mlp_src(layer))))
        groups.append((f"blocks.{layer}.hook_mlp_out", range(cg.mlp_src(layer), cg.mlp_src(layer) + 1)))
    return groups


def eap_ig_activations(model: Any, task: Task, baseline: Baseline, *, steps: int = 5, batch_size: int = 32,
                       max_rows: int = 256) -> torch.Tensor:
    """EAP-IG interpolating each group's output, alphas k/m for k = 1..m (see the module docstring)."""
    alphas = torch.arange(1, steps + 1, dtype=torch.float32) / max(steps, 1)
    return _integrated(model, task, baseline, alphas, _groups(ComponentGraph.of(model)), batch_size, max_rows)
