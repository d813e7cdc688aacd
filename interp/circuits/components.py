"""The component graph of a transformer, and the forward passes that every node and edge method runs.

The residual stream entering any component is the sum of the outputs of the components before it (plus
biases), so an edge u -> v is "the part of v's input that u wrote". Patching edge u -> v from the corrupted
run adds ``out'_u - out_u`` to v's input only; patching every edge turns the run into the corrupted run.

Sources, in forward order (``n_src = 1 + L (H + 1)``): ``input`` (token + position embeddings,
``blocks.0.hook_resid_pre``), then per layer the heads ``a{l}.h{h}`` (``z_h @ W_O[l, h]`` from
``blocks.l.attn.hook_z``) and the MLP ``m{l}`` (``blocks.l.hook_mlp_out``).
Destinations (``n_dst = L (3H + 1) + 1``): per layer the heads' query, key and value inputs
(``blocks.l.hook_{q,k,v}_input``, H each, in that order) and the MLP input (``blocks.l.hook_mlp_in``); last
the logits (``blocks.{L-1}.hook_resid_post``, before the final LayerNorm). An edge (s, d) exists when source
s runs before destination d (a layer's MLP reads that layer's heads; heads read only earlier layers).

Designed for sequential GPT-style blocks (attention, then MLP); ``check_decomposition`` verifies the
decomposition on a model before a method relies on it. Everything here is batched over prompts and, where a
method evaluates several patterns at once, over patterns (K copies of the batch in one forward).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import torch

from interp.errors import InterpError

SLOTS = ("q", "k", "v")
HookList = list[tuple[str, Callable[[torch.Tensor, Any], torch.Tensor | None]]]


@dataclass(frozen=True)
class ComponentGraph:
    """Index arithmetic of sources and destinations for a model with ``n_layers`` blocks of ``n_heads`` heads."""

    n_layers: int
    """Transformer blocks (L)."""
    n_heads: int
    """Heads per block (H)."""

    @classmethod
    def of(cls, model: Any) -> ComponentGraph:
        return cls(model.info.n_layers, model.info.n_heads)

    @property
    def n_src(self) -> int:
        return 1 + self.n_layers * (self.n_heads + 1)

    @property
    def n_dst(self) -> int:
        return self.n_layers * (3 * self.n_heads + 1) + 1

    def head_src(self, layer: int) -> int:
        """Source index of head 0 of ``layer`` (heads are contiguous); also the number of sources before it."""
        return 1 + layer * (self.n_heads + 1)

    def mlp_src(self, layer: int) -> int:
        return self.head_src(layer) + self.n_heads

    def slot_dst(self, layer: int, slot: int) -> slice:
        """Destination indices of the ``slot`` (0 q, 1 k, 2 v) inputs of every head of ``layer``."""
        base = layer * (3 * self.n_heads + 1) + slot * self.n_heads
        return slice(base, base + self.n_heads)

    def mlp_dst(self, layer: int) -> int:
        return layer * (3 * self.n_heads + 1) + 3 * self.n_heads

    @property
    def logits_dst(self) -> int:
        return self.n_dst - 1

    @cached_property
    def src_names(self) -> tuple[str, ...]:
        names = ["input"]
        for layer in range(self.n_layers):
            names += [f"a{layer}.h{h}" for h in range(self.n_heads)] + [f"m{layer}"]
        return tuple(names)

    @cached_property
    def dst_names(self) -> tuple[tuple[str, str | None], ...]:
        """(node id, slot) per destination, slot None for MLPs and logits."""
        names: list[tuple[str, str | None]] = []
        for layer in range(self.n_layers):
            names += [(f"a{layer}.h{h}", slot) for slot in SLOTS for h in range(self.n_heads)]
            names.append((f"m{layer}", None))
        return tuple(names + [("logits", None)])

    @cached_property
    def valid(self) -> torch.Tensor:
        """(n_src, n_dst) bool: which (source, destination) pairs are edges."""
        src_rank = torch.tensor([0] + [r for layer in range(self.n_layers)
                                       for r in [2 * layer + 1] * self.n_heads + [2 * layer + 2]])
        dst_rank = torch.tensor([r for layer in range(self.n_layers)
                                 for r in [2 * layer + 1] * (3 * self.n_heads) + [2 * layer + 2]]
                                + [2 * self.n_layers + 1])
        return src_rank[:, None] < dst_rank[None, :]

    @property
    def n_edges(self) -> int:
        return int(self.valid.sum())

    def n_upstream(self, dst: int) -> int:
        """Sources that can write into destination ``dst``: always a prefix of the source order."""
        return int(self.valid[:, dst].sum())

    def edge_index(self) -> torch.Tensor:
        """(n_edges, 2) (source, destination) of every edge, ordered by source then destination: the order of
        ``matrix[self.valid]`` and of the edges of a graph made from scores (:mod:`interp.circuits.scoring`), so
        vectors taken either way line up."""
        return self.valid.nonzero()


def source_hooks(cg: ComponentGraph, store: Callable[[int, int, torch.Tensor], None],
                  W_O: torch.Tensor) -> HookList:
    """Hooks that hand each source's output (R, P, [n,] D) to ``store(first_index, count, tensor)``."""

    def at_input(act: torch.Tensor, hook: Any) -> None:
        store(0, 1, act[None])

    hooks: HookList = [("blocks.0.hook_resid_pre", at_input)]
    for layer in range(cg.n_layers):
        def at_z(z: torch.Tensor, hook: Any, layer: int = layer) -> None:
            store(cg.head_src(layer), cg.n_heads, torch.einsum("rphe,hem->hrpm", z, W_O[layer]))

        def at_mlp(act: torch.Tensor, hook: Any, layer: int = layer) -> None:
            store(cg.mlp_src(layer), 1, act[None])

        hooks += [(f"blocks.{layer}.attn.hook_z", at_z), (f"blocks.{layer}.hook_mlp_out", at_mlp)]
    return hooks


def dest_hook_names(cg: ComponentGraph) -> list[tuple[str, Sequence[int] | int]]:
    """(hook name, destination indices) for every destination group, in forward order."""
    out: list[tuple[str, Sequence[int] | int]] = []
    for layer in range(cg.n_layers):
        for slot, name in enumerate(SLOTS):
            s = cg.slot_dst(layer, slot)
            out.append((f"blocks.{layer}.hook_{name}_input", range(s.start, s.stop)))
        out.append((f"blocks.{layer}.hook_mlp_in", cg.mlp_dst(layer)))
    out.append((f"blocks.{cg.n_layers - 1}.hook_resid_post", cg.logits_dst))
    return out


@torch.no_grad()
def capture_hooks(model: Any, tokens: torch.Tensor, names: Sequence[str]) -> dict[str, torch.Tensor]:
    """Activations (copies) at the hooks ``names`` in an unpatched run of ``tokens``."""
    acts: dict[str, torch.Tensor] = {}

    def saver(name: str) -> Callable[[torch.Tensor, Any], None]:
        def save(act: torch.Tensor, hook: Any) -> None:
            acts[name] = act.detach().clone()

        return save

    with model.hooks([(n, saver(n)) for n in names]):
        model.forward(tokens.to(model.device), stop_at_layer=model.stop_layer(list(names)))
    return acts


@torch.no_grad()
def capture_sources(model: Any, cg: ComponentGraph, tokens: torch.Tensor, positions: torch.Tensor
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """Source outputs (n_src, B, P, D) and logits (B, V) at ``positions`` (B,) of an unpatched run of ``tokens``."""
    B, P = tokens.shape
    out = torch.empty(cg.n_src, B, P, model.info.d_model, device=model.device)

    def store(first: int, count: int, value: torch.Tensor) -> None:
        out[first : first + count] = value

    with model.hooks(source_hooks(cg, store, model.W_O)):
        final = model.logits_at(tokens, positions)
    return out, final


@torch.no_grad()
def patched_logits(
    model: Any, cg: ComponentGraph, tokens: torch.Tensor, corrupted: torch.Tensor, keep: torch.Tensor,
    positions: torch.Tensor,
) -> torch.Tensor:
    """Logits (K * B, V) at ``positions`` (B,) of ``tokens`` (B, P) with the edges that ``keep`` (K, n_src, n_dst)
    marks False patched from the corrupted source outputs ``corrupted`` (n_src, B, P, D); rows [k B, (k+1) B)
    use pattern k.

    A patched edge s -> d adds ``corrupted[s] - current[s]`` to d's input, where ``current`` is the source's
    output in this (patched) run, so patches compose: with every edge patched the run is the corrupted run.
    """
    K, (B, P), D = keep.shape[0], tokens.shape, model.info.d_model
    patch = (~keep.to(model.device)).to(corrupted.dtype)  # (K, n_src, n_dst), 1 where patched
    current = corrupted.new_empty(cg.n_src, K * B, P, D)
    cached: dict[int, torch.Tensor] = {}

    def store(first: int, count: int, value: torch.Tensor) -> None:
        current[first : first + count] = value

    def difference(n_up: int) -> torch.Tensor:  # (n_up, K, B, P, D)
        if n_up not in cached:
            cached.clear()
            cached[n_up] = corrupted[:n_up, None] - current[:n_up].view(n_up, K, B, P, D)
        return cached[n_up]

    def make_dest_hook(dst: Sequence[int] | int) -> Callable[[torch.Tensor, Any], torch.Tensor]:
        heads = not isinstance(dst, int)
        cols = torch.as_tensor(list(dst) if heads else [dst], device=patch.device)  # type: ignore[arg-type]
        n_up = cg.n_upstream(int(cols[0]))

        def hook(act: torch.Tensor, hook: Any) -> torch.Tensor:
            weights = patch[:, :n_up][:, :, cols]  # (K, n_up, n_cols)
            if not bool(weights.any()):
                return act
            delta = torch.einsum("skbpd,ksc->kbpcd", difference(n_up), weights)
            return act + (delta.reshape(K * B, P, len(cols), D) if heads else delta.reshape(K * B, P, D))

        return hook

    hooks = source_hooks(cg, store, model.W_O)
    hooks += [(name, make_dest_hook(dst)) for name, dst in dest_hook_names(cg)]
    with model.hooks(hooks):
        return model.logits_at(tokens.repeat(K, 1), positions.repeat(K))


def check_decomposition(model: Any, cg: ComponentGraph, tokens: torch.Tensor, atol: float = 1e-3) -> None:
    """Raise InterpError unless patching every edge of ``cg`` from a run of ``tokens.flip(0)`` reproduces it.

    This is the contract every edge method relies on; it fails for architectures whose blocks do not read the
    residual stream as a sum of earlier component outputs (e.g. parallel attention and MLP).
    """
    needed = [name for name, _ in dest_hook_names(cg)] + ["blocks.0.hook_resid_pre", "blocks.0.attn.hook_z"]
    missing = [name for name in needed if name not in model.hook_names]
    if missing:
        raise InterpError(f"Model {model.info.name!r} lacks hooks the component graph needs ({', '.join(missing[:4])}"
                          f"{' ...' if len(missing) > 4 else ''}); edge methods need split q/k/v input hooks.")
    widths = {name: act.shape[2] for name, act in capture_hooks(model, tokens[:1], [
        "blocks.0.hook_q_input", "blocks.0.hook_k_input", "blocks.0.hook_v_input"]).items()}
    if set(widths.values()) != {cg.n_heads}:
        raise InterpError(
            f"Model {model.info.name!r} has grouped-query attention (q/k/v inputs per head: {widths}); the "
            "component graph has one key and one value input per query head, so edge methods do not support it "
            "yet. Node methods (activation-patching, attribution-patching) do."
        )
    other = tokens.flip(0)
    last = torch.full((len(tokens),), tokens.shape[1] - 1)
    corrupted, want = capture_sources(model, cg, other, last)
    keep = torch.zeros(1, cg.n_src, cg.n_dst, dtype=torch.bool)
    got = patched_logits(model, cg, tokens, corrupted, keep, last)
    err = float((got - want).abs().max())
    if err > atol * (1 + float(want.abs().max())):
        raise InterpError(
            f"Model {model.info.name!r} does not decompose into the residual-stream graph interp assumes (patching "
            f"every edge differs from the corrupted run by {err:.3g}). Edge methods need sequential attention-then-"
            "MLP blocks with split q/k/v inputs (GPT-2-style)."
        )
