"""Loading language models, and the one interface the rest of interp uses to run them.

A :class:`Model` has TransformerLens hook names, activation capture (optionally with gradients of the LM loss),
splicing hooks and the weight views. Two engines run it:

- the **module path**: interp's own modules (``interp.model.transformer``) for local GPT-2 and Llama-family
  checkpoints in safetensors, with plain forward hooks and the fused attention kernel. :meth:`Model.capture`
  uses it for the hooks ``interp.model.vocabulary.served`` lists (embeddings, residual stream, attention and MLP
  outputs, ``hook_v``, ``hook_z``, MLP input and activations, the norms' scales and outputs);
- **transformer-lens 4.x ``TransformerBridge``** (see the README for why), for everything else: other
  architectures, other hooks, splicing hooks, finetuning, ``forward``, and the weight views once it is up (before,
  they are cut from the module path's weights: ``interp.model.views``). It is booted on first need, so a command
  that only caches served hooks, or analyzes features (which reads ``W_U``), never imports transformer-lens.

Both compute the same activations in the same processed coordinates (``tests/test_module_capture.py``). Once
finetunable weights are handed out (:meth:`Model.finetunable_parameters`), or while splicing hooks are attached,
capture runs on the bridge, whose weights are then the model's. A model that has used both engines holds two
copies of its weights.

Constraints this module was designed under:
- no network at run time on the machines that test it, so hub loading must fail fast and clearly;
- hook names are the TransformerLens vocabulary (``blocks.{l}.hook_resid_post`` ...), validated with
  close matches in the error;
- capture stops the forward pass after the last hooked block unless gradients are asked for.
"""

from __future__ import annotations

import contextlib
import fnmatch
import logging
import os
import re
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, Literal

import torch

from interp.errors import InterpError, close_matches
from interp.model import bridge as bridges
from interp.model.checkpoint import Checkpoint, open_checkpoint
from interp.model.info import Captured, ModelInfo
from interp.model.recorder import HookFn, Recorder
from interp.model.tokenizer import Tokenizer
from interp.model.transformer import Transformer
from interp.model.views import WeightViews
from interp.model.vocabulary import hook_names, served
from interp.model.weights import PROCESSING, load_transformer

__all__ = ["DEMO_DIR", "DEMO_NAME", "PROCESSING", "Captured", "Model", "ModelInfo", "load_model", "next_token_loss"]

log = logging.getLogger(__name__)

DEMO_NAME = "demo"
DEMO_DIR: Path = Path(__file__).resolve().parents[1] / "zoo" / "demo"
"""The shipped demo checkpoint (made by ``interp.zoo``'s recipe; a data directory, so no import of zoo)."""
CapturePath = Literal["modules", "bridge"]
_BLOCK_RE = re.compile(r"^blocks\.(\d+)\.")


class Model(WeightViews):
    """A loaded causal LM with TransformerLens hook names. Build it with :func:`load_model`."""

    def __init__(self, info: ModelInfo, tokenizer: Any, boot: Callable[[], Any], *, bridge: Any = None,
                 checkpoint: Checkpoint | None = None, device: str | torch.device = "cpu",
                 dtype: torch.dtype = torch.float32):
        self.info, self.tokenizer = info, tokenizer
        self._boot, self._bridge = boot, bridge
        self._checkpoint = checkpoint
        self._modules: Transformer | None = None
        self._device, self._dtype = torch.device(device), dtype
        self._served = served(info.n_layers, checkpoint.spec.family) if checkpoint is not None else frozenset()
        self._splicing = 0  # depth of open `hooks` blocks

    # ---- engines -----------------------------------------------------------------------------
    @property
    def bridge(self) -> Any:
        """The TransformerBridge (booted on first use)."""
        if self._bridge is None:
            log.info("booting the TransformerBridge for %s", self.info.name)
            self._bridge = self._boot()
            theirs = bridges.bridge_info(self.info.name, self._bridge, self.info.processing)
            if theirs != self.info:
                log.warning("the bridge describes %s differently (%s) from its checkpoint (%s)", self.info.name,
                            theirs, self.info)
        return self._bridge

    def _transformer(self) -> Transformer:
        if self._modules is None:
            assert self._checkpoint is not None
            ckpt = self._checkpoint
            self._modules = load_transformer(ckpt.spec, ckpt.files, self.info.processing, self._device, self._dtype)
        return self._modules

    def capture_path(self, hooks: Sequence[str]) -> CapturePath:
        """Which engine :meth:`capture` runs for ``hooks``: ``modules`` when the module path serves every one of
        them (and no splicing hook is attached, and the weights were not handed out for finetuning), else
        ``bridge``."""
        if self._checkpoint is None or self._splicing or not set(hooks) <= self._served:
            return "bridge"
        return "modules"

    # ---- hooks -------------------------------------------------------------------------------
    @property
    def hook_names(self) -> tuple[str, ...]:
        """Every hook name of the model, sorted."""
        return tuple(sorted(self._forward_order()))

    def resolve_hooks(self, patterns: str | Sequence[str]) -> list[str]:
        """Expand fnmatch patterns to hook names, in model order; raise with close matches if none match."""
        if isinstance(patterns, str):
            patterns = [patterns]
        if not patterns:
            raise InterpError("No hook names given. Pass one or more, e.g. 'blocks.0.hook_resid_post'.")
        names = self.hook_names
        found: list[str] = []
        for pattern in patterns:
            hits = [h for h in names if fnmatch.fnmatchcase(h, pattern)]
            if not hits:
                near = close_matches(pattern, names)
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
        if self._bridge is None and self._checkpoint is not None:
            return hook_names(self._checkpoint.spec.family, self.info.n_layers)
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
            for suffix, setter in bridges.FLAGGED_HOOKS.items():
                if hook.endswith(suffix):
                    getattr(self.bridge, setter)(True)

    # ---- running -----------------------------------------------------------------------------
    @contextlib.contextmanager
    def hooks(self, fwd_hooks: Sequence[tuple[str, HookFn]]) -> Iterator[None]:
        """Attach forward hooks for the duration of a ``with`` block; they are always removed."""
        self._enable_flags([name for name, _ in fwd_hooks])
        self._splicing += 1
        try:
            with self.bridge.hooks(fwd_hooks=list(fwd_hooks)):
                yield
        finally:
            self._splicing -= 1

    def forward(self, tokens: torch.Tensor, stop_at_layer: int | None = None) -> torch.Tensor:
        """Logits (batch, pos, d_vocab), or the residual stream entering ``stop_at_layer`` (on the bridge)."""
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
        self, tokens: torch.Tensor, hooks: Sequence[str], *, with_grads: bool = False,
        path: Literal["auto", "modules", "bridge"] = "auto",
    ) -> Captured:
        """Run ``tokens`` (batch, pos) and return the activations at ``hooks``.

        Without gradients the forward stops after the last hooked block. With gradients the whole
        model runs and ``grads[h]`` is the gradient, with respect to the activation at ``h``, of the
        next-token cross-entropy summed over every position of every context (so a row's gradient
        does not depend on the batch it came in). ``path`` forces an engine (``auto``: :meth:`capture_path`).
        """
        chosen = self.capture_path(hooks) if path == "auto" else path
        if chosen == "modules" and self.capture_path(hooks) != "modules":
            raise InterpError(f"The module path cannot capture {list(hooks)} on {self.info.name!r} now; "
                              "leave path='auto' or use path='bridge'.")
        tokens = tokens.to(self.device)
        recorder = Recorder(with_grads)
        if chosen == "modules":
            return self._capture_modules(tokens, hooks, recorder)
        return self._capture_bridge(tokens, hooks, recorder)

    def _capture_modules(self, tokens: torch.Tensor, hooks: Sequence[str], rec: Recorder) -> Captured:
        net = self._transformer()
        handles = [net.get_submodule(h).register_forward_hook(rec.module_hook(h)) for h in hooks]
        try:
            if not rec.with_grads:
                with torch.no_grad():
                    net(tokens, stop_at_layer=self.stop_layer(hooks), logits=False)
                return Captured(rec.acts, {}, None)
            with torch.enable_grad():
                loss = next_token_loss(net(tokens), tokens)
                return Captured(rec.acts, rec.grads(loss), loss.detach())
        finally:
            for handle in handles:
                handle.remove()

    def _capture_bridge(self, tokens: torch.Tensor, hooks: Sequence[str], rec: Recorder) -> Captured:
        fwd: list[tuple[str, HookFn]] = []
        for h in hooks:
            if rec.with_grads and h.endswith(".hook_resid_mid"):
                # The bridge's hook_resid_mid sits on ln2's input: a delta there reaches only the MLP branch.
                # resid_mid = resid_pre + attn_out, so the residual stream's gradient is attn_out's.
                fwd += [(h, rec.bridge_hook(h, delta=False)),
                        (h.replace("hook_resid_mid", "hook_attn_out"), rec.bridge_hook(h, value=False))]
            else:
                fwd.append((h, rec.bridge_hook(h)))
        if not rec.with_grads:
            with torch.no_grad(), self.hooks(fwd):
                self.bridge(tokens, stop_at_layer=self.stop_layer(hooks))
            return Captured(rec.acts, {}, None)
        with torch.enable_grad(), self.hooks(fwd):
            loss = next_token_loss(self.bridge(tokens), tokens)
            return Captured(rec.acts, rec.grads(loss), loss.detach())

    # ---- weights and tokens -----------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return next(self._bridge.parameters()).device if self._bridge is not None else self._device

    @property
    def norm_centers(self) -> bool | None:
        """True when the blocks' normalisation subtracts the mean (LayerNorm), False for RMSNorm, None when the
        model has none; with LayerNorm weights folded (processing ``default``), ``ln*.hook_normalized`` is
        ``(x - mean(x)) / hook_scale`` (LayerNorm) or ``x / hook_scale`` (RMSNorm)."""
        kind = self.bridge.cfg.normalization_type
        return None if kind is None else kind.startswith("LN")

    @property
    def parallel_blocks(self) -> bool:
        """True when attention and MLP read the same residual stream (GPT-J, NeoX): no ``hook_resid_mid``."""
        return bool(getattr(self.bridge.cfg, "parallel_attn_mlp", False))

    @property
    def head_exportable(self) -> bool:
        """True when a trained final norm and unembedding can be written to Hugging Face format exactly
        (the folded unembedding bias b_U is constant over the vocabulary)."""
        b_u = getattr(self.bridge, "b_U", None)
        return b_u is None or float(b_u.max() - b_u.min()) < 1e-6

    def finetunable_parameters(self) -> list[torch.nn.Parameter]:
        """The floating-point weights a finetune may change, in module order. The final norm and the
        unembedding are left out unless :attr:`head_exportable`, so that the finetuned model still exports
        exactly (``interp.model.hf_export.save_hf_model``). From now on the bridge runs every capture."""
        self._checkpoint, self._modules, self._served = None, None, frozenset()
        head = [] if self.head_exportable else [self.bridge.unembed, self.bridge.ln_final]
        frozen = {id(p) for module in head for p in module.parameters()}
        return [p for p in self.bridge.parameters() if p.is_floating_point() and id(p) not in frozen]

    def to_tokens(self, text: str | list[str], prepend_bos: bool = True, truncate: bool = True) -> torch.Tensor:
        """Token ids (batch, pos) for a string or list of strings; cut to the context length unless ``truncate``
        is False."""
        return self.bridge.to_tokens(text, prepend_bos=prepend_bos, truncate=truncate)

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
    local = path is not None
    if path is None:
        path = bridges.cached_snapshot(name)
        if path is None:
            bridges.check_hub_reachable(name)
    source = str(path) if local else bridges.hub_name(name) if path is None else name

    def boot() -> Any:
        return bridges.boot(source, name, device, dtype, processing)

    if path is not None:
        ckpt = open_checkpoint(path, processing)
        if isinstance(ckpt, Checkpoint):
            return _module_model(name, ckpt, boot, device, dtype, processing)
        log.debug("%s: capture runs on the bridge (the module path does not run it: %s)", name, ckpt)
    bridge = boot()
    info = bridges.bridge_info(name, bridge, processing)
    log.info("loaded %s (%s, d_model=%d, %d layers)", name, info.architecture, info.d_model, info.n_layers)
    return Model(info, bridge.tokenizer, boot, bridge=bridge, device=device, dtype=dtype)


def _module_model(name: str, ckpt: Checkpoint, boot: Callable[[], Any], device: str | torch.device,
                  dtype: torch.dtype, processing: str) -> Model:
    s, rec = ckpt.spec, ckpt.record
    info = ModelInfo(name, s.architecture, s.d_model, s.n_layers, s.n_heads, s.d_head, s.d_vocab, s.n_ctx,
                     rec.bos_token_id, processing, rec.fingerprint)
    tokenizer = Tokenizer(ckpt.path, rec.bos_token_id, rec.eos_token_id, rec.native_tokenizer)
    log.info("loaded %s (%s, d_model=%d, %d layers)", name, info.architecture, info.d_model, info.n_layers)
    log.debug("%s: capture of served hooks runs on interp's %s modules; the bridge boots on first need", name,
              s.family)
    return Model(info, tokenizer, boot, checkpoint=ckpt, device=device, dtype=dtype)


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
