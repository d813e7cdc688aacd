"""Node methods: activation patching and attribution patching over heads, MLPs and residual positions.

Sites (what one patch replaces, at every position unless stated):
- head (l, h): ``blocks.l.attn.hook_z[..., h, :]`` (the head's output before W_O);
- MLP l: ``blocks.l.hook_mlp_out``;
- residual (l, t): ``blocks.l.hook_resid_pre`` at position t only.

Directions: **noising** runs the clean prompt with the site taken from the corrupted run, effect
``m(patched) - m(clean)``; **denoising** runs the corrupted prompt with the site from the clean run, effect
``m(patched) - m(corrupted)``. Effects are means over prompts, in metric units.

Activation patching costs one forward per site; sites are batched K at a time (K copies of a prompt batch in one
forward, at most ``max_rows`` rows). Attribution patching (Nanda 2023) approximates every site's effect at once
by ``(a_other - a_base) . dm/da`` at the base run: one base forward with gradients, one forward of the other
prompts, one backward (LayerNorm scales are not frozen: the gradient is the model's own).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import torch

from interp.circuits.components import ComponentGraph, capture_hooks, capture_sources, patched_logits
from interp.circuits.tasks import Baseline, Task, TaskBatch, task_batches
from interp.errors import InterpError

DIRECTIONS = ("noising", "denoising")
COMPONENTS = ("heads", "mlps", "resid")


class NodeEffects(NamedTuple):
    """Effect of each site, in metric units, averaged over prompts."""

    heads: torch.Tensor
    """(L, H) per attention head."""
    mlps: torch.Tensor
    """(L,) per MLP."""
    resid: torch.Tensor | None
    """(L, T) per layer input and position, or None when residual positions were not asked for."""


def _site_names(layer: int) -> dict[str, str]:
    return {"heads": f"blocks.{layer}.attn.hook_z", "mlps": f"blocks.{layer}.hook_mlp_out",
            "resid": f"blocks.{layer}.hook_resid_pre"}


def _check(direction: str, components: tuple[str, ...]) -> None:
    if direction not in DIRECTIONS:
        raise InterpError(f"direction must be one of {', '.join(DIRECTIONS)}, got {direction!r}.")
    unknown = set(components) - set(COMPONENTS)
    if unknown or not components:
        raise InterpError(f"components must be a non-empty subset of {', '.join(COMPONENTS)}, got {components}.")


def _site_values(model: Any, tokens: torch.Tensor, n_layers: int) -> dict[str, torch.Tensor]:
    return capture_hooks(model, tokens, [name for layer in range(n_layers) for name in _site_names(layer).values()])


def _site_list(model: Any, seq_len: int, components: tuple[str, ...]) -> list[tuple[str, int, int]]:
    info = model.info
    sites = []
    for layer in range(info.n_layers):
        if "heads" in components:
            sites += [("heads", layer, h) for h in range(info.n_heads)]
        if "mlps" in components:
            sites.append(("mlps", layer, 0))
        if "resid" in components:
            sites += [("resid", layer, t) for t in range(seq_len)]
    return sites


def _patch_hooks(chunk: list[tuple[str, int, int]], other: dict[str, torch.Tensor], B: int) -> list[Any]:
    """Hooks that, in copy k of the batch, replace site ``chunk[k]`` by its value in ``other``."""
    K = len(chunk)
    masks: dict[str, torch.Tensor] = {}
    for k, (kind, layer, index) in enumerate(chunk):
        name = _site_names(layer)[kind]
        if name not in masks:
            width = other[name].shape[2] if kind == "heads" else (other[name].shape[1] if kind == "resid" else 1)
            masks[name] = torch.zeros(K, width, dtype=torch.bool, device=other[name].device)
        masks[name][k, index] = True

    def make(name: str, mask: torch.Tensor) -> Callable[[torch.Tensor, Any], torch.Tensor]:
        kind = name.rsplit(".", 1)[-1]
        shapes = {"hook_z": mask[:, None, None, :, None], "hook_resid_pre": mask[:, None, :, None]}
        m = shapes.get(kind, mask[:, :, None, None])

        def hook(act: torch.Tensor, hook: Any) -> torch.Tensor:
            shaped = act.view(K, B, *act.shape[1:])
            return torch.where(m, other[name][None], shaped).view_as(act)

        return hook

    return [(name, make(name, mask)) for name, mask in masks.items()]


@torch.no_grad()
def activation_patching(
    model: Any,
    task: Task,
    baseline: Baseline,
    *,
    direction: str = "noising",
    components: tuple[str, ...] = ("heads", "mlps"),
    batch_size: int = 32,
    max_rows: int = 256,
) -> NodeEffects:
    """Patch each site from the other run and measure the metric (see the module docstring)."""
    _check(direction, components)
    info = model.info
    base, source = ("clean", "corrupted") if direction == "noising" else ("corrupted", "clean")
    m_base = baseline.m_clean if base == "clean" else baseline.m_corrupted
    sites = _site_list(model, task.seq_len, components)
    total = torch.zeros(len(sites))
    for start, batch in zip(range(0, task.n, batch_size), task_batches(task, baseline, batch_size, model.device)):
        B = batch.size
        tokens, other_tokens = (batch.clean, batch.corrupted) if base == "clean" else (batch.corrupted, batch.clean)
        other = _site_values(model, other_tokens, info.n_layers)
        m0 = m_base[start : start + B].sum()
        K = max(1, max_rows // B)
        for a in range(0, len(sites), K):
            chunk = sites[a : a + K]
            with model.hooks(_patch_hooks(chunk, other, B)):
                final = model.logits_at(tokens.repeat(len(chunk), 1), batch.positions(base, len(chunk)))
            m = batch.values(final).view(len(chunk), B).sum(1).cpu()
            total[a : a + len(chunk)] += m - m0
    return _effects(total / task.n, sites, info, task.seq_len, components)


def _effects(values: torch.Tensor, sites: list[tuple[str, int, int]], info: Any, seq_len: int,
             components: tuple[str, ...]) -> NodeEffects:
    heads = torch.zeros(info.n_layers, info.n_heads)
    mlps = torch.zeros(info.n_layers)
    resid = torch.zeros(info.n_layers, seq_len)
    for v, (kind, layer, index) in zip(values.tolist(), sites):
        if kind == "heads":
            heads[layer, index] = v
        elif kind == "mlps":
            mlps[layer] = v
        else:
            resid[layer, index] = v
    return NodeEffects(heads, mlps, resid if "resid" in components else None)


def attribution_patching(
    model: Any,
    task: Task,
    baseline: Baseline,
    *,
    direction: str = "noising",
    components: tuple[str, ...] = ("heads", "mlps"),
    batch_size: int = 32,
) -> NodeEffects:
    """First-order estimate of :func:`activation_patching` for every site at once (2 forwards + 1 backward)."""
    _check(direction, components)
    if task.metric == "kl" and direction == "noising":
        raise InterpError("Attribution patching with the kl metric is evaluated at the clean run, where the KL and "
                          "its gradient are zero. Use a logit_diff or prob_diff task, direction='denoising', or "
                          "activation patching.")
    info = model.info
    sums = {"heads": torch.zeros(info.n_layers, info.n_heads), "mlps": torch.zeros(info.n_layers),
            "resid": torch.zeros(info.n_layers, task.seq_len)}
    for batch in task_batches(task, baseline, batch_size, model.device):
        _attribute_batch(model, batch, direction, task.n, sums)
    return NodeEffects(sums["heads"], sums["mlps"], sums["resid"] if "resid" in components else None)


def _attribute_batch(model: Any, batch: TaskBatch, direction: str, n_total: int,
                     sums: dict[str, torch.Tensor]) -> None:
    base = "clean" if direction == "noising" else "corrupted"
    tokens, other_tokens = (batch.clean, batch.corrupted) if base == "clean" else (batch.corrupted, batch.clean)
    other = _site_values(model, other_tokens, model.info.n_layers)
    reduce = {"hook_z": "bphe,bphe->h", "hook_mlp_out": "bpd,bpd->", "hook_resid_pre": "bpd,bpd->p"}
    kinds = {"hook_z": "heads", "hook_mlp_out": "mlps", "hook_resid_pre": "resid"}

    def tapper(name: str) -> Callable[[torch.Tensor, Any], torch.Tensor]:
        layer, suffix = int(name.split(".")[1]), name.rsplit(".", 1)[-1]

        def tap(act: torch.Tensor, hook: Any) -> torch.Tensor:
            x = act.detach().requires_grad_(True) if name == "blocks.0.hook_resid_pre" else act * 1.0
            delta = other[name] - act.detach()

            def on_grad(grad: torch.Tensor) -> None:
                sums[kinds[suffix]][layer] += torch.einsum(reduce[suffix], delta, grad).cpu()

            x.register_hook(on_grad)
            return x

        return tap

    with torch.enable_grad(), model.hooks([(name, tapper(name)) for name in other]):
        final = model.logits_at(tokens, batch.positions(base))
        (batch.values(final).sum() / n_total).backward()


@torch.no_grad()
def edge_activation_patching(model: Any, task: Task, baseline: Baseline, *, batch_size: int = 32,
                             max_rows: int = 256) -> torch.Tensor:
    """Exact noising effect of every edge alone: m(clean run with edge u -> v patched from corrupted) - m(clean),
    (n_src, n_dst) on CPU, 0 off the edge set. One forward per edge, ``max_rows // B`` edges per forward: the
    reference that EAP approximates to first order."""
    cg = ComponentGraph.of(model)
    edges = cg.edge_index()
    effects = torch.zeros(cg.n_src, cg.n_dst, dtype=torch.float64)
    for start, batch in zip(range(0, task.n, batch_size), task_batches(task, baseline, batch_size, model.device)):
        corrupted, _ = capture_sources(model, cg, batch.corrupted, batch.corrupted_pos)
        m0 = baseline.m_clean[start : start + batch.size].double().sum()
        K = max(1, max_rows // batch.size)
        for a in range(0, len(edges), K):
            chunk = edges[a : a + K]
            keep = cg.valid[None].repeat(len(chunk), 1, 1)
            keep[torch.arange(len(chunk)), chunk[:, 0], chunk[:, 1]] = False
            final = patched_logits(model, cg, batch.clean, corrupted, keep, batch.clean_pos)
            m = batch.values(final).view(len(chunk), batch.size).double().sum(1).cpu()
            effects[chunk[:, 0], chunk[:, 1]] += m - m0
    return (effects / task.n).float()
