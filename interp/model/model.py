"""Loading language models, and the one interface the rest of interp uses to run them.

interp is built on transformer-lens 4.x ``TransformerBridge`` (see the README for why). Nothing outside
this module imports transformer-lens: stages see a :class:`Model` with TransformerLens hook names,
activation capture (optionally with gradients of the LM loss), splicing hooks and the weight views.

Constraints this module was designed under:
- no network at run time on the machines that test it, so hub loading must fail fast and clearly;
- hook names are the TransformerLens vocabulary (``blocks.{l}.hook_resid_post`` ...), validated with
  close matches in the error;
- capture stops the forward pass after the last hooked block unless gradients are asked for.
"""

from __future__ import annotations

import contextlib
import fnmatch
import hashlib
import json
import logging
import os
import re
import socket
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, NamedTuple
from urllib.parse import urlparse

import torch

from interp.errors import InterpError, close_matches

log = logging.getLogger(__name__)

DEMO_NAME = "demo"
DEMO_DIR: Path = Path(__file__).resolve().parents[1] / "zoo" / "demo"
"""The shipped demo checkpoint (made by ``interp.zoo``'s recipe; a data directory, so no import of zoo)."""
# Weight processing applied at load time; it fixes the coordinate system every activation is cached in.
# "default" is SAELens's convention (LayerNorm folded into the next weights, writing weights left
# uncentred), so interp's dictionaries export to SAELens unchanged; "transformer_lens" is
# HookedTransformer.from_pretrained's (also centres writing weights); "none" keeps the checkpoint's own.
PROCESSING = {
    "default": dict(fold_ln=True, center_writing_weights=False, center_unembed=True, fold_value_biases=True),
    "transformer_lens": dict(fold_ln=True, center_writing_weights=True, center_unembed=True,
                             fold_value_biases=True),
    "none": dict(no_processing=True),
}
HookFn = Callable[[torch.Tensor, Any], torch.Tensor | None]

# Hooks the bridge only exposes after a flag is switched on; switching it on costs a little speed.
_FLAGGED_HOOKS = {
    "hook_mlp_in": "set_use_hook_mlp_in",
    "hook_attn_in": "set_use_attn_in",
    "hook_q_input": "set_use_split_qkv_input",
    "hook_k_input": "set_use_split_qkv_input",
    "hook_v_input": "set_use_split_qkv_input",
    "attn.hook_result": "set_use_attn_result",
}
_BLOCK_RE = re.compile(r"^blocks\.(\d+)\.")


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


class Model:
    """A loaded causal LM with TransformerLens hook names. Build it with :func:`load_model`."""

    def __init__(self, bridge: Any, tokenizer: Any, info: ModelInfo):
        self.bridge = bridge
        self.tokenizer = tokenizer
        self.info = info
        self.hook_names: tuple[str, ...] = tuple(sorted(bridge.hook_dict.keys()))

    # ---- hooks -------------------------------------------------------------------------------
    def resolve_hooks(self, patterns: str | Sequence[str]) -> list[str]:
        """Expand fnmatch patterns to hook names, in model order; raise with close matches if none match."""
        if isinstance(patterns, str):
            patterns = [patterns]
        if not patterns:
            raise InterpError("No hook names given. Pass one or more, e.g. 'blocks.0.hook_resid_post'.")
        found: list[str] = []
        for pattern in patterns:
            hits = [h for h in self.hook_names if fnmatch.fnmatchcase(h, pattern)]
            if not hits:
                near = close_matches(pattern, self.hook_names)
                hint = f" Did you mean: {', '.join(near)}?" if near else ""
                raise InterpError(
                    f"No hook of model {self.info.name!r} matches {pattern!r}.{hint} "
                    f"Hook names follow TransformerLens, e.g. 'blocks.0.hook_resid_post', "
                    f"'blocks.*.hook_mlp_out', 'blocks.0.attn.hook_z'."
                )
            found.extend(h for h in hits if h not in found)
        order = {h: i for i, h in enumerate(self._forward_order())}
        return sorted(found, key=lambda h: (order.get(h, len(order)), h))

    def _forward_order(self) -> list[str]:
        return list(self.bridge.hook_dict.keys())

    @staticmethod
    def hook_layer(hook: str) -> int | None:
        """Block index a hook lives in, -1 for embedding hooks, None for hooks after the last block."""
        m = _BLOCK_RE.match(hook)
        if m:
            return int(m.group(1))
        if hook.startswith(("hook_embed", "hook_pos_embed", "embed.", "pos_embed.", "hook_tokens")):
            return -1
        return None

    def stop_layer(self, hooks: Sequence[str]) -> int | None:
        """The ``stop_at_layer`` that still runs every hook in ``hooks`` (None: run the whole model)."""
        layers = [self.hook_layer(h) for h in hooks]
        if any(layer is None for layer in layers):
            return None
        last = max(int(layer) for layer in layers if layer is not None)
        return None if last + 1 >= self.info.n_layers else last + 1

    def _enable_flags(self, hooks: Sequence[str]) -> None:
        for hook in hooks:
            for suffix, setter in _FLAGGED_HOOKS.items():
                if hook.endswith(suffix):
                    getattr(self.bridge, setter)(True)

    # ---- running -----------------------------------------------------------------------------
    @contextlib.contextmanager
    def hooks(self, fwd_hooks: Sequence[tuple[str, HookFn]]) -> Iterator[None]:
        """Attach forward hooks for the duration of a ``with`` block; they are always removed."""
        self._enable_flags([name for name, _ in fwd_hooks])
        with self.bridge.hooks(fwd_hooks=list(fwd_hooks)):
            yield

    def forward(self, tokens: torch.Tensor, stop_at_layer: int | None = None) -> torch.Tensor:
        """Logits (batch, pos, d_vocab), or the residual stream entering ``stop_at_layer``."""
        return self.bridge(tokens, stop_at_layer=stop_at_layer)

    def logits_at(self, tokens: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """Logits (batch, d_vocab) at one position per row (``positions``, shape (batch,)); the unembedding runs
        only at those positions (Hugging Face ``logits_to_keep``). Hooks fire as in :meth:`forward`."""
        tokens = tokens.to(self.device)
        rows = torch.arange(len(tokens), device=self.device)
        keep, inverse = torch.unique(positions.to(self.device), return_inverse=True)
        try:
            logits = self.bridge(tokens, logits_to_keep=keep)
        except TypeError:  # an architecture without logits_to_keep: unembed every position
            return self.bridge(tokens)[rows, positions.to(self.device)]
        return logits[rows, inverse]

    def capture(
        self, tokens: torch.Tensor, hooks: Sequence[str], *, with_grads: bool = False
    ) -> Captured:
        """Run ``tokens`` (batch, pos) and return the activations at ``hooks``.

        Without gradients the forward stops after the last hooked block. With gradients the whole
        model runs and ``grads[h]`` is the gradient, with respect to the activation at ``h``, of the
        next-token cross-entropy summed over every position of every context (so a row's gradient
        does not depend on the batch it came in).
        """
        acts: dict[str, torch.Tensor] = {}
        deltas: dict[str, torch.Tensor] = {}

        def make_hook(name: str) -> HookFn:
            def hook(act: torch.Tensor, hook: Any) -> torch.Tensor | None:
                acts[name] = act.detach()
                if with_grads:
                    # An additive zero leaf: d loss / d delta == d loss / d act, and the graph is intact.
                    delta = torch.zeros_like(act, requires_grad=True)
                    deltas[name] = delta
                    return act + delta
                return None

            return hook

        fwd = [(h, make_hook(h)) for h in hooks]
        tokens = tokens.to(self.device)
        if not with_grads:
            with torch.no_grad(), self.hooks(fwd):
                self.bridge(tokens, stop_at_layer=self.stop_layer(hooks))
            return Captured(acts, {}, None)
        with torch.enable_grad(), self.hooks(fwd):
            logits = self.bridge(tokens)
            loss = next_token_loss(logits, tokens)
            names = list(deltas)
            grads = torch.autograd.grad(loss.sum(), [deltas[n] for n in names], allow_unused=True)
        out = {n: (g if g is not None else torch.zeros_like(deltas[n])) for n, g in zip(names, grads)}
        return Captured(acts, out, loss.detach())

    # ---- weights and tokens -----------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return next(self.bridge.parameters()).device

    @property
    def W_U(self) -> torch.Tensor:
        """Unembedding, (d_model, d_vocab)."""
        return self.bridge.W_U

    @property
    def W_O(self) -> torch.Tensor:
        """Attention output weights per head, (n_layers, n_heads, d_head, d_model): head h of block l writes
        ``z[..., h, :] @ W_O[l, h]`` into the residual stream (``blocks.l.attn.hook_z`` gives z)."""
        return self.bridge.W_O

    @property
    def W_E(self) -> torch.Tensor:
        """Token embedding, (d_vocab, d_model)."""
        return self.bridge.W_E

    @property
    def head_exportable(self) -> bool:
        """True when a trained final norm and unembedding can be written to Hugging Face format exactly
        (the folded unembedding bias b_U is constant over the vocabulary)."""
        b_u = getattr(self.bridge, "b_U", None)
        return b_u is None or float(b_u.max() - b_u.min()) < 1e-6

    def finetunable_parameters(self) -> list[torch.nn.Parameter]:
        """The floating-point weights a finetune may change, in module order. The final norm and the
        unembedding are left out unless :attr:`head_exportable`, so that the finetuned model still exports
        exactly (``interp.model.hf_export.save_hf_model``)."""
        head = [] if self.head_exportable else [self.bridge.unembed, self.bridge.ln_final]
        frozen = {id(p) for module in head for p in module.parameters()}
        return [p for p in self.bridge.parameters() if p.is_floating_point() and id(p) not in frozen]

    def to_tokens(self, text: str | list[str], prepend_bos: bool = True) -> torch.Tensor:
        """Token ids (batch, pos) for a string or list of strings."""
        return self.bridge.to_tokens(text, prepend_bos=prepend_bos)

    def token_strings(self, ids: Sequence[int] | torch.Tensor) -> list[str]:
        """Each id decoded on its own (byte-level pieces may be partial characters)."""
        ids = [int(i) for i in (ids.tolist() if isinstance(ids, torch.Tensor) else ids)]
        return [self.tokenizer.decode([i]) for i in ids]


def next_token_loss(logits: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """Per-token cross-entropy of predicting ``tokens[:, 1:]``, shape (batch, pos - 1)."""
    logp = torch.log_softmax(logits[:, :-1].float(), dim=-1)
    return -logp.gather(-1, tokens[:, 1:, None].to(logits.device)).squeeze(-1)


# ---- loading -------------------------------------------------------------------------------------
def load_model(
    name: str, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32, processing: str = "default"
) -> Model:
    """Load ``demo``, a local Hugging Face checkpoint directory, or a hub / TransformerLens name.

    ``processing`` picks the weight processing (see ``PROCESSING``); it changes cached activations.
    """
    if processing not in PROCESSING:
        raise InterpError(f"processing must be one of {', '.join(PROCESSING)}, got {processing!r}.")
    path = _resolve_local(name)
    if path is None:
        _check_hub_reachable(name)
    source = str(path) if path is not None else _hub_name(name)
    bridge = _boot(source, name, device, dtype, processing)
    tokenizer = bridge.tokenizer
    info = _model_info(name, bridge, processing)
    log.info("loaded %s (%s, d_model=%d, %d layers)", name, info.architecture, info.d_model, info.n_layers)
    return Model(bridge, tokenizer, info)


def _resolve_local(name: str) -> Path | None:
    if name == DEMO_NAME:
        if not (DEMO_DIR / "config.json").exists():
            raise InterpError(f"The demo checkpoint is missing from {DEMO_DIR}. Rebuild it: interp zoo train")
        return DEMO_DIR
    path = Path(name).expanduser()
    if path.exists():
        if not (path / "config.json").is_file():
            raise InterpError(
                f"{path} exists but is not a Hugging Face checkpoint (no config.json). Point --model at a "
                "directory written by save_pretrained, a hub name, or 'demo'."
            )
        return path
    if name.startswith((".", "/", "~")) or os.sep in name and name.count("/") > 1:
        raise InterpError(f"Model path {name} does not exist. Check the path, or pass a hub name or 'demo'.")
    return None


def _hub_name(name: str) -> str:
    """Map TransformerLens aliases (``gpt2-small``) to hub names; pass others through."""
    try:
        from transformer_lens.supported_models import get_official_model_name

        return get_official_model_name(name)
    except Exception:  # an unknown alias is simply a hub name
        return name


def _check_hub_reachable(name: str) -> None:
    """Fail in milliseconds, not after minutes of retries, when the hub cannot be reached."""
    hub = _hub_name(name)
    offline = os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false")
    if _in_hf_cache(hub):
        return
    host = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co")).hostname or "huggingface.co"
    reachable = False
    if not offline:
        try:
            socket.getaddrinfo(host, 443)
            reachable = True
        except OSError:
            reachable = False
    if not reachable:
        raise InterpError(
            f"Cannot load {name!r}: it is not a local directory, not in the Hugging Face cache, and the hub "
            f"({host}) cannot be reached (offline?). Download it on a machine with network "
            f"(e.g. `huggingface-cli download {hub} --local-dir ./{hub.split('/')[-1]}`) and pass the "
            f"directory: --model ./{hub.split('/')[-1]}. Or use --model demo."
        )


def _in_hf_cache(hub: str) -> bool:
    try:
        from huggingface_hub import try_to_load_from_cache

        return isinstance(try_to_load_from_cache(hub, "config.json"), str)
    except Exception:
        return False


def _boot(source: str, name: str, device: str | torch.device, dtype: torch.dtype, processing: str) -> Any:
    from transformer_lens.model_bridge import TransformerBridge

    try:
        bridge = TransformerBridge.boot_transformers(source, device=str(device), dtype=dtype)
    except OSError as e:
        raise InterpError(
            f"Could not load {name!r} ({e}). If you are offline, pass a local checkpoint directory "
            "with --model /path/to/dir."
        ) from e
    except ValueError as e:
        raise InterpError(f"Could not load {name!r}: {e}") from e
    bridge.enable_compatibility_mode(disable_warnings=True, **PROCESSING[processing])
    bridge.eval()
    for p in bridge.parameters():
        p.requires_grad_(False)
    return bridge


def _model_info(name: str, bridge: Any, processing: str) -> ModelInfo:
    cfg = bridge.cfg
    hf_cfg = bridge.original_model.config
    tok = bridge.tokenizer
    canon = {k: v for k, v in sorted(hf_cfg.to_dict().items()) if not k.startswith(("_", "transformers"))}
    canon.pop("torch_dtype", None)
    canon.pop("dtype", None)
    digest = hashlib.sha256(json.dumps(canon, sort_keys=True, default=str).encode())
    digest.update(json.dumps(sorted(tok.get_vocab().items())).encode())
    digest.update(processing.encode())
    return ModelInfo(
        name=name,
        architecture=(hf_cfg.architectures or [type(bridge.original_model).__name__])[0],
        d_model=int(cfg.d_model),
        n_layers=int(cfg.n_layers),
        n_heads=int(cfg.n_heads),
        d_head=int(cfg.d_head),
        d_vocab=int(cfg.d_vocab),
        n_ctx=int(cfg.n_ctx),
        bos_token_id=tok.bos_token_id,
        processing=processing,
        fingerprint=digest.hexdigest()[:16],
    )
