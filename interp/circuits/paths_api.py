"""One call from a prompt to transcoder paths and their graph: :class:`TranscoderPathsConfig` (the flags of
``interp circuit transcoder-paths``) and :func:`transcoder_paths`."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, NamedTuple

from interp.circuits.dfa import attention_feature_root
from interp.circuits.graph import CircuitGraph, save_graph
from interp.circuits.pathsearch import PathSearch, Root, feature_root, greedy_paths, logit_root, paths_graph
from interp.circuits.replacement import Trace, TranscoderSet, trace
from interp.configs import config_to_dict
from interp.dictionaries import Dictionary
from interp.errors import InterpError
from interp.model import Model


@dataclass(frozen=True)
class TranscoderPathsConfig:
    """What to explain on which prompt, and how wide the greedy path search is."""

    prompt: str = ""
    """The prompt (BOS is prepended)."""
    root: Literal["logit", "feature", "attn_feature"] = "logit"
    """``logit`` (a token's logit, or a logit difference), ``feature`` (a transcoder feature's pre-activation) or
    ``attn_feature`` (an attention-SAE feature, with ``--attention-sae``)."""
    position: int = -1
    """Token position of the root (negative counts from the end)."""
    token: str | None = None
    """Logit root: the token, as text that is one token or ``#ID``; None takes the model's top prediction."""
    other_token: str | None = None
    """Logit root: explain ``logit(token) - logit(other_token)`` instead."""
    layer: int | None = None
    """Feature root: the transcoder layer."""
    feature: int | None = None
    """Feature root: the feature index within that layer (or the attention SAE's latent)."""
    num_iters: int = 2
    """Path length below the root."""
    num_branches: int = 5
    """Contributors kept per node and paths kept per iteration."""
    raw: bool = False
    """Rank by raw contributions (no cap at the smallest feature value on the path)."""
    ignore_bos: bool = True
    """Leave heads that read the BOS position out of the ranking."""
    absolute: bool = False
    """Rank by |contribution| (inhibitory contributors too) instead of the largest signed ones."""

    def __post_init__(self) -> None:
        if not self.prompt:
            raise InterpError("Give a prompt to explain (--prompt).")
        if self.num_iters < 1 or self.num_branches < 1:
            raise InterpError("num_iters and num_branches must be >= 1.")
        if self.root in ("feature", "attn_feature") and self.feature is None:
            raise InterpError(f"A {self.root} root needs --feature (and --layer for a transcoder feature).")
        if self.root == "feature" and self.layer is None:
            raise InterpError("A feature root needs --layer (the transcoder layer) and --feature.")


class TranscoderPaths(NamedTuple):
    """What :func:`transcoder_paths` found."""

    trace: Trace
    search: PathSearch
    graph: CircuitGraph
    """The paths as a graph with error nodes (see :func:`interp.circuits.pathsearch.paths_graph`)."""


def token_id(model: Model, text: str) -> int:
    """``#ID`` or text that the tokenizer reads as exactly one token."""
    if text.startswith("#") and text[1:].isdigit():
        return int(text[1:])
    ids = model.to_tokens(text, prepend_bos=False)[0].tolist()
    if len(ids) != 1:
        raise InterpError(f"{text!r} is {len(ids)} tokens ({model.token_strings(ids)}); give one token, or #ID.")
    return int(ids[0])


def transcoder_paths(model: Model, transcoders: TranscoderSet, cfg: TranscoderPathsConfig,
                     attention_sae: Dictionary | None = None) -> TranscoderPaths:
    """Trace ``cfg.prompt`` through ``transcoders``, build the root, search paths and merge them into a graph."""
    started = time.perf_counter()
    tr = trace(model, cfg.prompt, transcoders)
    root: Root
    if cfg.root == "feature":
        assert cfg.layer is not None and cfg.feature is not None
        root = feature_root(model, tr, cfg.layer, cfg.feature, cfg.position)
    elif cfg.root == "attn_feature":
        if attention_sae is None:
            raise InterpError("An attn_feature root needs the attention SAE (--attention-sae).")
        assert cfg.feature is not None
        root = attention_feature_root(model, tr, attention_sae, cfg.feature, cfg.position)
    else:
        t = cfg.position % len(tr.tokens)
        token = token_id(model, cfg.token) if cfg.token else int(model.forward(tr.tokens[None])[0, t].argmax())
        other = token_id(model, cfg.other_token) if cfg.other_token else None
        root = logit_root(model, tr, token, t, other)
    search = greedy_paths(model, tr, root, num_iters=cfg.num_iters, num_branches=cfg.num_branches, raw=cfg.raw,
                          ignore_bos=cfg.ignore_bos, absolute=cfg.absolute)
    graph = paths_graph(model, tr, search)
    hooks = sorted({str(transcoders.dictionary(layer).cfg.hook_in) for layer in transcoders.layers})
    graph.metadata.update(config=config_to_dict(cfg), runtime_s=time.perf_counter() - started, transcoders=hooks)
    return TranscoderPaths(tr, search, graph)


def format_paths(search: PathSearch, limit: int = 10) -> str:
    """The best paths of every length, one per line: ``root <- child: contribution <- ...``."""
    lines = [f"{search.root.label}: {search.root.value:+.4f}"]
    for depth, level in enumerate(search.paths, 1):
        lines.append(f"paths of length {depth}:")
        for path in level[:limit]:
            lines.append("  " + " <- ".join(f"{n.component.id} {n.value:+.4f}" for n in path[1:]))
    return "\n".join(lines) + "\n"


def save_paths(result: TranscoderPaths, out_dir: str | Path) -> Path:
    """Write ``graph.json`` into ``out_dir`` (atomically); returns its path."""
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    return save_graph(result.graph, Path(out_dir) / "graph.json")
