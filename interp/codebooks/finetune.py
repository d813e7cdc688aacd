"""Codebook features inside the model (Tamkin, Taufeeque, Goodman 2023): bottlenecks finetuned with the LM loss.

At each chosen hook site the activation is replaced by the mean of its k best-matching codes, and the
model plus codebooks are finetuned on next-token prediction so the network learns to work through the
discrete bottleneck. ``interp.codebooks.steer`` then reads and forces codes.

Per site, with G groups (one per attention head at ``blocks.L.attn.hook_z``, one at a (batch, pos, d)
hook such as ``blocks.L.hook_mlp_out``), N codes and D dims per group:

- x~ = LN(x) = gamma * (x - mean(x)) / std(x) + beta, per group over its D dims. gamma and beta are
  learned (they receive only the LM gradient) and are initialised to the mean per-token std and mean
  of the activation, so x~ starts in the activation's own scale. This is our choice: the paper's LN
  starts at gamma = 1, beta = 0, which would rescale the activation and make the before-finetuning
  "post-hoc snap" baseline meaningless. No per-token statistic passes the bottleneck: the downstream
  model sees only codes.
- sim_i = x~ . c_i / ||c_i||;  S = top-k(sim) (sorted, best first);  y = mean_{i in S} c_i, which replaces x.
- Gradients (``aeloss``): the output is ``y + x~ - stopgrad(x~)``, so dL/dx~ = dL/dy (straight-through)
  and the selected codes get dL_LM/dC; the codes also get the gradient of the reconstruction term
  mean((y - stopgrad(x~))^2) (mean over tokens, groups and dims), which updates only the codes.

Designed under: CPU runs of minutes; the model is a ``Model`` (TransformerBridge) trained in place
with hooks; artifacts are safetensors + JSON; the finetuned model is written in Hugging Face format.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path
from typing import Any, NamedTuple

import torch

from interp.codebooks.bottleneck import (
    LN_EPS,
    CodebookBottleneck,
    Codebooks,
    SnapOutput,
    codebook_hooks,
    load_codebooks,
    save_codebooks,
    site_shape,
)
from interp.configs import config_to_dict
from interp.dictionaries.codebook import kmeans
from interp.errors import InterpError
from interp.io import atomic_write_json
from interp.model.corpus import CorpusConfig, iter_contexts
from interp.model.model import Model, load_model, next_token_loss

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CodebookFinetuneConfig:
    """What to finetune and how. Held-out contexts come from ``heldout`` or, if None, are the first
    ``n_eval_contexts`` contexts of ``corpus`` (training then skips them)."""

    model: str = "demo"
    """Model to finetune: ``demo``, a local Hugging Face directory, or a hub name."""
    sites: tuple[str, ...] = ("blocks.0.attn.hook_z", "blocks.1.hook_mlp_out")
    """Hook names to put a codebook at. ``blocks.L.attn.hook_z``: one codebook per head over d_head;
    any (batch, pos, d) hook (``blocks.L.hook_mlp_out``): one codebook over d."""
    n_codes: int = 1024
    """Codes per codebook (N)."""
    k: int = 8
    """Codes selected per token and codebook; the output is their mean."""
    corpus: CorpusConfig = field(default_factory=lambda: CorpusConfig("stdlib:train"))
    """Finetuning text."""
    heldout: CorpusConfig | None = field(default_factory=lambda: CorpusConfig("stdlib:heldout"))
    """Evaluation text; None holds out the first ``n_eval_contexts`` contexts of ``corpus``."""
    ctx_len: int = 128
    """Tokens per context, BOS included."""
    batch_size: int = 8
    """Contexts per optimiser step."""
    steps: int = 300
    """Optimiser steps (training contexts are reused, in order, when the corpus runs out)."""
    lr: float = 1e-3
    """AdamW learning rate of the codebooks and their LN."""
    model_lr_factor: float = 0.1
    """Model learning rate = lr * model_lr_factor; 0 freezes the model (codebooks only)."""
    weight_decay: float = 0.0
    """AdamW weight decay, for model and codebooks."""
    kmeans_init: bool = True
    """Initialise codes by k-means on LN-ed activations of ``init_contexts`` contexts (else Gaussian)."""
    init_contexts: int = 32
    """Contexts whose activations set the LN init and the k-means codes."""
    replace_dead_every: int = 50
    """Every this many steps, codes unused since the last check are reset to batch inputs plus noise;
    0 disables."""
    replace_rho: float = 0.01
    """Relative noise of replaced codes."""
    n_eval_contexts: int = 32
    """Held-out contexts for the loss comparison and code statistics."""
    seed: int = 0
    """Seed of initialisation and dead-code replacement."""
    device: str = "cpu"
    """Torch device."""

    def __post_init__(self) -> None:
        if not self.sites:
            raise InterpError("No codebook sites given; pass e.g. blocks.0.attn.hook_z blocks.1.hook_mlp_out.")
        positive = ("n_codes", "k", "ctx_len", "batch_size", "steps", "init_contexts", "n_eval_contexts")
        for name in positive:
            if int(getattr(self, name)) < 1:
                raise InterpError(f"{name} must be >= 1, got {getattr(self, name)}.")
        if self.k > self.n_codes:
            raise InterpError(f"k ({self.k}) cannot exceed n_codes ({self.n_codes}).")
        if self.ctx_len < 2:
            raise InterpError(f"ctx_len must be >= 2 (BOS + a token), got {self.ctx_len}.")
        if self.lr <= 0 or self.model_lr_factor < 0 or self.weight_decay < 0 or self.replace_rho < 0:
            raise InterpError("lr must be > 0; model_lr_factor, weight_decay and replace_rho must be >= 0.")
        if self.replace_dead_every < 0:
            raise InterpError(f"replace_dead_every must be >= 0, got {self.replace_dead_every}.")


# ---- evaluation ----------------------------------------------------------------------------------
@torch.no_grad()
def evaluate_lm(
    model: Model, codebooks: Mapping[str, CodebookBottleneck] | None, tokens: torch.Tensor, batch_size: int = 8
) -> dict[str, float]:
    """Mean next-token loss (nats) and accuracy over ``tokens`` (n, T), with the codebooks spliced in or not."""
    total = correct = count = 0.0
    hooks = codebook_hooks(codebooks) if codebooks else []
    with model.hooks(hooks):
        for batch in tokens.to(model.device).split(batch_size):
            logits = model.forward(batch)
            total += next_token_loss(logits, batch).sum().item()
            correct += (logits[:, :-1].argmax(-1) == batch[:, 1:]).sum().item()
            count += batch[:, 1:].numel()
    return {"loss": total / count, "accuracy": correct / count}


# ---- finetuning ----------------------------------------------------------------------------------
class FinetuneResult(NamedTuple):
    """Where a finetuning run wrote its artifacts, and what it measured."""

    paths: dict[str, Path]
    """``model`` (Hugging Face directory), ``codebooks`` (directory with codebooks.json),
    ``metrics`` (metrics.json), ``usage`` (code_usage.json)."""
    metrics: dict[str, Any]
    """Held-out ``loss``/``accuracy`` of ``original``, ``snap`` (original + codebooks before finetuning),
    ``finetuned`` (with codebooks) and ``finetuned_no_codebooks``; plus ``history`` and timing."""


def finetune_codebooks(cfg: CodebookFinetuneConfig, out_dir: str | Path, progress: bool = True) -> FinetuneResult:
    """Insert codebooks at ``cfg.sites``, finetune model and codebooks on the LM loss, save and evaluate."""
    from interp.codebooks.usage import code_usage, usage_summary
    from interp.model.hf_export import save_hf_model

    out = Path(out_dir)
    torch.manual_seed(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    model = load_model(cfg.model, device=cfg.device)
    train, heldout = load_token_data(cfg, model)
    codebooks = init_codebooks(model, cfg, train[: cfg.init_contexts], gen)
    metrics: dict[str, Any] = {"original": evaluate_lm(model, None, heldout)}
    metrics["snap"] = evaluate_lm(model, codebooks, heldout)
    start = time.perf_counter()
    metrics["history"] = train_codebooks(model, codebooks, train, cfg, gen, progress)
    metrics["train_seconds"] = time.perf_counter() - start
    metrics["finetuned"] = evaluate_lm(model, codebooks, heldout)
    metrics["finetuned_no_codebooks"] = evaluate_lm(model, None, heldout)
    for name in ("original", "snap", "finetuned", "finetuned_no_codebooks"):
        log.info("%-22s loss %.4f  accuracy %.4f", name, metrics[name]["loss"], metrics[name]["accuracy"])
    paths = {"model": out / "model", "codebooks": out / "codebooks", "metrics": out / "metrics.json",
             "usage": out / "code_usage.json"}
    save_hf_model(model, paths["model"], check_tokens=heldout[:2])
    save_codebooks(codebooks, paths["codebooks"], model_name=cfg.model, config=config_to_dict(cfg))
    usage = code_usage(model, codebooks, heldout)
    atomic_write_json(paths["usage"], usage_summary(model, usage))
    atomic_write_json(paths["metrics"], metrics)
    return FinetuneResult(paths, metrics)


def load_token_data(cfg: CodebookFinetuneConfig, model: Model) -> tuple[torch.Tensor, torch.Tensor]:
    """(train (n_train, ctx_len), heldout (n_eval_contexts, ctx_len)) token ids."""
    bos = model.info.bos_token_id
    need = cfg.steps * cfg.batch_size
    stream = iter_contexts(cfg.corpus, model.tokenizer, cfg.ctx_len, bos)
    if cfg.heldout is None:
        held = [c.tokens for c in islice(stream, cfg.n_eval_contexts)]
    else:
        held = [c.tokens for c in islice(iter_contexts(cfg.heldout, model.tokenizer, cfg.ctx_len, bos),
                                         cfg.n_eval_contexts)]
    train = [c.tokens for c in islice(stream, max(need, cfg.init_contexts))]
    if not train or not held:
        raise InterpError(
            f"Corpus {cfg.corpus.source!r} gave {len(train)} training and {len(held)} held-out contexts of "
            f"{cfg.ctx_len} tokens; both must be non-empty. Use a larger corpus or a shorter --ctx-len."
        )
    if len(train) < need:
        log.info("%d training contexts for %d steps x %d: reusing contexts", len(train), cfg.steps, cfg.batch_size)
    return torch.stack(train), torch.stack(held)


@torch.no_grad()
def init_codebooks(
    model: Model, cfg: CodebookFinetuneConfig, tokens: torch.Tensor, gen: torch.Generator
) -> Codebooks:
    """One bottleneck per site, LN and codes initialised from activations of ``tokens`` (n, T)."""
    sites = model.resolve_hooks(list(cfg.sites))
    if sorted(sites) != sorted(set(cfg.sites)):
        raise InterpError(f"Codebook sites must be exact hook names (no patterns); {cfg.sites} matched {sites}.")
    acts = model.capture(tokens.to(model.device), sites).acts
    codebooks: Codebooks = {}
    for site in sites:
        groups, dim = site_shape(site, acts[site])
        cb = CodebookBottleneck(site, groups, cfg.n_codes, dim, cfg.k)
        x = acts[site][:, 1:].float().reshape(-1, groups, dim)  # BOS rows are outliers; leave them out
        mu = x.mean(-1, keepdim=True)
        std = (x.var(-1, keepdim=True, unbiased=False) + LN_EPS).sqrt()
        cb.ln_weight.copy_(std.mean(0).expand(groups, dim))
        cb.ln_bias.copy_(mu.mean(0).expand(groups, dim))
        xt = cb.normalize(x)  # (M, G, D)
        for g in range(groups):
            if cfg.kmeans_init:
                cb.codes[g] = kmeans(xt[:, g], cfg.n_codes, gen)
            else:
                cb.codes[g] = torch.randn(cfg.n_codes, dim, generator=gen) * xt[:, g].std()
        codebooks[site] = cb.to(model.device)
    return codebooks


def train_codebooks(
    model: Model,
    codebooks: Mapping[str, CodebookBottleneck],
    tokens: torch.Tensor,
    cfg: CodebookFinetuneConfig,
    gen: torch.Generator,
    progress: bool = True,
) -> list[dict[str, float]]:
    """AdamW on LM loss + summed aeloss for ``cfg.steps`` steps over ``tokens`` (n, T), in order, cycling.

    The model runs in eval mode (no dropout); its parameters are trainable only inside this call. The
    final norm and unembedding stay frozen unless ``model.head_exportable`` (see
    ``Model.finetunable_parameters``).
    Returns a log line per ``max(1, steps // 20)`` steps.
    """
    model_params = model.finetunable_parameters()
    cb_params = [p for cb in codebooks.values() for p in cb.parameters()]
    groups = [{"params": cb_params, "lr": cfg.lr}]
    if cfg.model_lr_factor > 0:
        groups.append({"params": model_params, "lr": cfg.lr * cfg.model_lr_factor})
    opt = torch.optim.AdamW(groups, lr=cfg.lr, weight_decay=cfg.weight_decay)
    used = {s: torch.zeros(cb.shape[:2], dtype=torch.bool, device=cb.codes.device) for s, cb in codebooks.items()}
    history: list[dict[str, float]] = []
    bar = _progress(progress, cfg.steps * cfg.batch_size * cfg.ctx_len)
    start = time.perf_counter()
    try:
        for p in model_params:
            p.requires_grad_(cfg.model_lr_factor > 0)
        for step in range(cfg.steps):
            rows = torch.arange(step * cfg.batch_size, (step + 1) * cfg.batch_size) % len(tokens)
            batch = tokens[rows].to(model.device)
            record: dict[str, SnapOutput] = {}
            with torch.enable_grad(), model.hooks(codebook_hooks(codebooks, record=record)):
                lm = next_token_loss(model.forward(batch), batch).mean()
                ae = torch.stack([r.aeloss for r in record.values()]).sum()
                (lm + ae).backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            for site, snap in record.items():
                _mark_used(used[site], snap.codes)
            if cfg.replace_dead_every and (step + 1) % cfg.replace_dead_every == 0:
                for site, cb in codebooks.items():
                    replace_dead_codes(cb, ~used[site], record[site], opt, cfg.replace_rho, gen)
                    used[site].zero_()
            if step % max(1, cfg.steps // 20) == 0 or step == cfg.steps - 1:
                history.append({"step": step, "lm_loss": lm.item(), "aeloss": ae.item()})
                log.debug("step %d lm %.4f ae %.4f", step, lm.item(), ae.item())
            if bar is not None:
                bar.update(batch.numel())
                bar.set_postfix(lm=f"{lm.item():.3f}", ae=f"{ae.item():.3f}")
    finally:
        for p in model_params:
            p.requires_grad_(False)
        if bar is not None:
            bar.close()
    elapsed = max(time.perf_counter() - start, 1e-9)
    log.info("finetuned %d steps, %.0f tokens/s", cfg.steps, cfg.steps * cfg.batch_size * cfg.ctx_len / elapsed)
    return history


def _mark_used(used: torch.Tensor, codes: torch.Tensor) -> None:
    """Set used[g, c] for every code id c selected in group g; codes (..., G, k)."""
    groups = used.shape[0]
    flat = codes.detach().reshape(-1, groups, codes.shape[-1]).transpose(0, 1).reshape(groups, -1)
    used.scatter_(1, flat, True)


@torch.no_grad()
def replace_dead_codes(
    cb: CodebookBottleneck, dead: torch.Tensor, snap: SnapOutput, opt: torch.optim.Optimizer, rho: float,
    gen: torch.Generator,
) -> int:
    """Reset codes with ``dead[g, c]`` (G, N) to random inputs x~ of the last batch plus noise of relative
    size ``rho``; their AdamW moments are zeroed. Returns how many were replaced."""
    groups, _, dim = cb.shape
    xt = snap.inputs.reshape(-1, groups, dim)
    n = 0
    for g in range(groups):
        idx = dead[g].nonzero().flatten()
        if idx.numel() == 0:
            continue
        rows = torch.randint(len(xt), (idx.numel(),), generator=gen).to(xt.device)
        base = xt[rows, g]
        noise = torch.randn(idx.numel(), dim, generator=gen).to(xt.device)
        cb.codes[g, idx] = base + rho * base.norm(dim=-1, keepdim=True) / math.sqrt(dim) * noise
        state = opt.state.get(cb.codes, {})
        for key in ("exp_avg", "exp_avg_sq"):
            if key in state:
                state[key][g, idx] = 0
        n += idx.numel()
    if n:
        log.debug("%s: replaced %d dead codes", cb.site, n)
    return n


def _progress(enabled: bool, total: int) -> Any:
    from interp.progress import progress_bar

    return progress_bar(total, "codebook finetune") if enabled else None


def load_run(run_dir: str | Path, device: str = "cpu") -> tuple[Model, Codebooks]:
    """The finetuned model and its codebooks from a :func:`finetune_codebooks` output directory."""
    run_dir = Path(run_dir)
    if not (run_dir / "model" / "config.json").is_file():
        raise InterpError(f"{run_dir} is not a codebook finetuning run (no model/config.json).")
    return load_model(str(run_dir / "model"), device=device), load_codebooks(run_dir / "codebooks", device)


