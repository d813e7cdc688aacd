"""The recipe that trains interp's embedded demo model from the standard library's source.

Designed under these constraints: a laptop CPU (two cores) retrains it in minutes, with no network;
the result is small enough to ship in the repository; and it is good enough for interpretability
work (held-out loss well below a unigram model, induction heads present).

Stages, each a small function: train a byte-level BPE tokenizer on the train split; tokenize and
pack documents into contexts that all start with BOS; train a GPT-2 architecture model with AdamW,
linear warmup and cosine decay; evaluate on the held-out split; write the checkpoint in Hugging Face
format plus ``zoo_card.json``, atomically. Everything is seeded: the same config, corpus and library
versions give the same weights.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import platform
import random
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import tokenizers
import torch
import transformers
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from tqdm.auto import tqdm
from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

from interp.errors import InterpError
from interp.io import atomic_directory
from interp.model.stdlib import Split, corpus_fingerprint, stdlib_files
from interp.zoo.card import NATURAL_CONTEXTS, NATURAL_SEQ_LEN, card_sections, evaluate_baselines, evaluate_model
from interp.zoo.probes import attention_patterns, induction_score, previous_token_pattern_score
from interp.zoo.tasks import encode_documents, pack_documents

logger = logging.getLogger(__name__)

SPECIAL_TOKEN = "<|endoftext|>"
"""The one special token: BOS at the start of every context and EOS after every document."""

CARD_NAME = "zoo_card.json"
CARD_SCHEMA_VERSION = 2


@dataclass(frozen=True)
class ZooConfig:
    """Everything that decides the demo model. The defaults produce the checkpoint shipped in ``DEMO_DIR``."""

    vocab_size: int = 4096
    """Tokenizer vocabulary size, the special token and the 256 byte tokens included."""
    n_layer: int = 2
    """Number of transformer blocks."""
    n_head: int = 4
    """Attention heads per block."""
    d_model: int = 128
    """Width of the residual stream; a multiple of ``n_head``."""
    d_mlp: int = 512
    """Hidden width of each MLP."""
    n_ctx: int = 256
    """Positions the model supports (learned position embeddings)."""
    seq_len: int = 256
    """Tokens per training context, BOS included; at most ``n_ctx``."""
    batch_size: int = 16
    """Contexts per optimizer step (and per evaluation batch)."""
    steps: int = 600
    """Optimizer steps."""
    warmup_steps: int = 50
    """Steps of linear learning-rate warmup from zero; fewer than ``steps``."""
    lr: float = 3e-3
    """Peak learning rate of AdamW."""
    min_lr_ratio: float = 0.1
    """Final learning rate of the cosine decay, as a fraction of ``lr``."""
    weight_decay: float = 0.1
    """AdamW weight decay, applied to matrices only (not to biases, layer norms)."""
    repeat_fraction: float = 0.25
    """Fraction of natural training contexts replaced by a random span of corpus tokens repeated
    (``repeat_spans``). Held-out loss is always measured on natural text."""
    copy_fraction: float = 0.0
    """Fraction of natural training contexts in which spans are copied forward (``copy_spans``): code
    that repeats itself, so that predicting it rewards induction, while it keeps code's local structure."""
    random_fraction: float = 0.0
    """Fraction of training contexts (after the curriculum) replaced by a sequence of uniformly random
    tokens repeated (``random_repeats``): only copying from the earlier copy predicts them."""
    curriculum_steps: int = 0
    """Optimizer steps at the start that see only ``random_repeats`` contexts, so that the circuit that
    copies (a previous-token head and an induction head) forms before natural text is learnt."""
    curriculum_seq_len: int = 16
    """Tokens per curriculum context. Short contexts make the circuit form in far fewer steps (the signal
    that a head reads the previous token is diluted by the context length); each curriculum step has
    ``batch_size * seq_len // curriculum_seq_len`` contexts, so it costs about what a main step costs."""
    grad_clip: float = 1.0
    """Maximum global gradient norm."""
    seed: int = 0
    """Seed of every random choice: weight init, data order, repeated spans, induction probe."""
    max_files: int | None = None
    """If set, use at most this many files of each split (for quick tests); None uses them all."""
    probe_seq_len: int = 50
    """Length n of the random sequence r of the ``[BOS] r r`` probe (induction and duplicate-token
    scores, copying gap); ``2 * n + 1 <= n_ctx``."""
    probe_batch: int = 16
    """Number of random sequences in the ``[BOS] r r`` probe."""
    num_threads: int = 2
    """CPU threads torch may use while training."""
    save_dtype: Literal["float32", "float16"] = "float32"
    """Dtype of the saved weights; evaluation runs on weights rounded to it, so the card matches the file."""

    def __post_init__(self) -> None:
        positive = (
            "vocab_size",
            "n_layer",
            "n_head",
            "d_model",
            "d_mlp",
            "n_ctx",
            "seq_len",
            "batch_size",
            "steps",
            "probe_seq_len",
            "probe_batch",
            "curriculum_seq_len",
            "num_threads",
        )
        for name in positive:
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise InterpError(f"ZooConfig.{name} must be a positive integer, got {getattr(self, name)!r}")
        if self.vocab_size < 257 + 1:
            raise InterpError(f"ZooConfig.vocab_size must exceed 257 (256 bytes + {SPECIAL_TOKEN})")
        if self.d_model % self.n_head:
            raise InterpError(f"ZooConfig.d_model={self.d_model} must be a multiple of n_head={self.n_head}")
        if not 8 <= self.seq_len <= self.n_ctx:
            raise InterpError(f"ZooConfig.seq_len must be in [8, n_ctx={self.n_ctx}], got {self.seq_len}")
        for name in ("repeat_fraction", "copy_fraction", "random_fraction"):
            if not 0 <= getattr(self, name) < 1:
                raise InterpError(f"ZooConfig.{name} must be in [0, 1), got {getattr(self, name)}")
        if not 8 <= self.curriculum_seq_len <= self.seq_len:
            raise InterpError(
                f"ZooConfig.curriculum_seq_len must be in [8, seq_len={self.seq_len}], got {self.curriculum_seq_len}"
            )
        if not 0 <= self.curriculum_steps < self.steps:
            raise InterpError(
                f"ZooConfig.curriculum_steps must be in [0, steps={self.steps}), got {self.curriculum_steps}"
            )
        if 2 * self.probe_seq_len + 1 > self.n_ctx:
            raise InterpError(
                f"ZooConfig.probe_seq_len must be at most {(self.n_ctx - 1) // 2} for "
                f"n_ctx={self.n_ctx}, got {self.probe_seq_len}"
            )
        if not 0 <= self.warmup_steps < self.steps:
            raise InterpError(
                f"ZooConfig.warmup_steps must be in [0, steps={self.steps}), got {self.warmup_steps}"
            )
        if not (
            self.lr > 0 and 0 <= self.min_lr_ratio <= 1 and self.weight_decay >= 0 and self.grad_clip > 0
        ):
            raise InterpError(
                "ZooConfig needs lr > 0, 0 <= min_lr_ratio <= 1, weight_decay >= 0, grad_clip > 0"
            )
        if self.max_files is not None and self.max_files < 1:
            raise InterpError(f"ZooConfig.max_files must be None or at least 1, got {self.max_files}")
        if self.save_dtype not in ("float32", "float16"):
            raise InterpError(f"ZooConfig.save_dtype must be 'float32' or 'float16', got {self.save_dtype!r}")


def corpus_files(cfg: ZooConfig, split: Split) -> list[Path]:
    """The files of ``split`` that the recipe uses: all of them, or the first ``cfg.max_files``."""
    return stdlib_files(split)[: cfg.max_files]


def _read(files: list[Path]) -> Iterator[str]:
    for path in files:
        yield path.read_text(encoding="utf-8", errors="replace")


def train_tokenizer(cfg: ZooConfig, files: list[Path]) -> PreTrainedTokenizerFast:
    """Byte-level BPE trained on ``files``; ``SPECIAL_TOKEN`` has id 0 and is BOS, EOS and pad.

    The tokenizer adds no special token by itself: callers prepend BOS (as ``pack`` does).
    """
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=cfg.vocab_size,
        special_tokens=[SPECIAL_TOKEN],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator(_read(files), trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=bpe,
        bos_token=SPECIAL_TOKEN,
        eos_token=SPECIAL_TOKEN,
        pad_token=SPECIAL_TOKEN,
        model_max_length=cfg.n_ctx,
    )


def tokenize_documents(tokenizer: PreTrainedTokenizerFast, files: list[Path]) -> list[np.ndarray]:
    """One int32 array of token ids per file, each followed by the EOS id."""
    eos = tokenizer.eos_token_id
    encoded = tokenizer.backend_tokenizer.encode_batch(list(_read(files)))
    return [np.array([*doc.ids, eos], dtype=np.int32) for doc in encoded]


def pack(documents: list[np.ndarray], seq_len: int, bos_token_id: int, drop_last: bool) -> list[torch.Tensor]:
    """Concatenate ``documents`` and cut them into contexts ``[BOS] + next seq_len - 1 tokens``.

    Every context starts with BOS and every document token lands in exactly one context, in order.
    With ``drop_last`` the final short context is dropped; otherwise it is kept, shorter.
    """
    stream = torch.from_numpy(np.concatenate(documents).astype(np.int64))
    bos = torch.tensor([bos_token_id])
    body = seq_len - 1
    contexts = [torch.cat([bos, stream[i : i + body]]) for i in range(0, len(stream), body)]
    if drop_last and contexts and len(contexts[-1]) < seq_len:
        contexts.pop()
    return contexts


def repeat_spans(contexts: torch.Tensor, fraction: float, rng: np.random.Generator) -> torch.Tensor:
    """A copy of ``contexts`` (N, T) where about ``fraction`` of the rows become a repeated random span.

    In a chosen row the BOS stays and the rest becomes ``span`` of the row's own tokens, picked at
    random positions without replacement (so they keep the corpus's token frequencies but lose its
    n-gram structure), tiled to length T - 1; ``span`` is uniform in [max(2, (T - 1) // 16), (T - 1) // 2].
    Only copying from the earlier copy predicts such a row, which is what induction heads do.
    """
    out = contexts.clone()
    body = contexts.shape[1] - 1
    low, high = max(2, body // 16), body // 2
    for row in np.flatnonzero(rng.random(len(contexts)) < fraction):
        span = int(rng.integers(low, high + 1))
        picked = contexts[row, 1 + torch.from_numpy(rng.permutation(body)[:span])]  # (span,)
        out[row, 1:] = picked.repeat(body // span + 1)[:body]
    return out


def copy_spans(contexts: torch.Tensor, fraction: float, rng: np.random.Generator) -> torch.Tensor:
    """A copy of ``contexts`` (N, T) where in about ``fraction`` of the rows spans are copied forward.

    In a chosen row, spans of 4 to 16 tokens are copied from a random earlier place of the row to a
    random later one (overwriting what was there) until about a quarter of the row is copies. BOS stays.
    Each copy keeps natural code's n-grams; its tokens after the first are predicted by finding the
    previous occurrence of the current token and reading what followed it.
    """
    out = contexts.clone()
    t = contexts.shape[1]
    for row in np.flatnonzero(rng.random(len(contexts)) < fraction):
        copied = 0
        while copied < (t - 1) // 4:
            length = int(rng.integers(4, 17))
            if 1 + 2 * length > t:
                break
            source = int(rng.integers(1, t - 2 * length + 1))
            target = int(rng.integers(source + length, t - length + 1))
            out[row, target : target + length] = out[row, source : source + length]
            copied += length
    return out


def random_repeats(
    rows: int, seq_len: int, vocab_size: int, bos_token_id: int, rng: np.random.Generator
) -> torch.Tensor:
    """(rows, seq_len) int64: BOS, then segments of uniformly random non-BOS tokens, half of them copies.

    Each row is built from segments of 2 to 8 tokens; a segment is fresh random tokens or, with
    probability 1/2 (once the row has one), a copy of an earlier segment of the row chosen at random.
    Inside a copy every token after the first is predicted only by finding the previous occurrence of the
    current token and reading what followed it (an induction head). Recency, bag-of-words and fixed-offset
    rules do not predict it, which they would for a sequence tiled with a fixed period.
    """
    body = seq_len - 1
    out = torch.full((rows, seq_len), bos_token_id, dtype=torch.long)
    for row in range(rows):
        segments: list[np.ndarray] = []
        filled = 0
        while filled < body:
            if segments and rng.random() < 0.5:
                segment = segments[int(rng.integers(len(segments)))]
            else:
                segment = rng.integers(0, vocab_size - 1, int(rng.integers(2, 9)))
                segment = segment + (segment >= bos_token_id)  # uniform over every id but BOS
                segments.append(segment)
            out[row, 1 + filled : 1 + min(body, filled + len(segment))] = torch.from_numpy(segment[: body - filled])
            filled += len(segment)
    return out


def training_batches(
    cfg: ZooConfig, documents: list[np.ndarray], bos_token_id: int, vocab_size: int
) -> Iterator[torch.Tensor]:
    """Endless int64 batches: (batch_size, seq_len) once the curriculum is over.

    The first ``cfg.curriculum_steps`` batches are all :func:`random_repeats` of ``cfg.curriculum_seq_len``
    tokens (``batch_size * seq_len // curriculum_seq_len`` rows). After them, each epoch
    reshuffles the documents, packs them, shuffles the contexts and applies :func:`repeat_spans` with
    ``cfg.repeat_fraction`` and :func:`copy_spans` with ``cfg.copy_fraction``; then each batch has about
    ``cfg.random_fraction`` of its rows replaced by :func:`random_repeats`. All randomness comes from ``cfg.seed``.
    """
    rng = np.random.default_rng(cfg.seed)
    rows = cfg.batch_size * cfg.seq_len // cfg.curriculum_seq_len
    for _ in range(cfg.curriculum_steps):
        yield random_repeats(rows, cfg.curriculum_seq_len, vocab_size, bos_token_id, rng)
    for batch in _natural_batches(cfg, documents, bos_token_id, rng):
        rows = np.flatnonzero(rng.random(cfg.batch_size) < cfg.random_fraction)
        batch[rows] = random_repeats(len(rows), cfg.seq_len, vocab_size, bos_token_id, rng)
        yield batch


def _natural_batches(
    cfg: ZooConfig, documents: list[np.ndarray], bos_token_id: int, rng: np.random.Generator
) -> Iterator[torch.Tensor]:
    while True:
        order = rng.permutation(len(documents))
        contexts = pack([documents[i] for i in order], cfg.seq_len, bos_token_id, drop_last=True)
        if len(contexts) < cfg.batch_size:
            raise InterpError(
                f"the corpus gives {len(contexts)} contexts of {cfg.seq_len} tokens, fewer than "
                f"batch_size={cfg.batch_size}; lower batch_size or seq_len, or raise max_files"
            )
        stacked = torch.stack(contexts)[torch.from_numpy(rng.permutation(len(contexts)))]  # (N, T)
        stacked = copy_spans(repeat_spans(stacked, cfg.repeat_fraction, rng), cfg.copy_fraction, rng)
        for start in range(0, len(stacked) - cfg.batch_size + 1, cfg.batch_size):
            yield stacked[start : start + cfg.batch_size].clone()


def build_model(cfg: ZooConfig, tokenizer: PreTrainedTokenizerFast) -> GPT2LMHeadModel:
    """A freshly initialised GPT-2 architecture model (no dropout, tied embeddings) for ``tokenizer``."""
    config = GPT2Config(
        vocab_size=len(tokenizer),
        n_positions=cfg.n_ctx,
        n_embd=cfg.d_model,
        n_layer=cfg.n_layer,
        n_head=cfg.n_head,
        n_inner=cfg.d_mlp,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        tie_word_embeddings=True,
    )
    model = GPT2LMHeadModel(config)
    model.loss_type = "ForCausalLM"  # transformers cannot infer it from the class name and warns
    return model


def _optimizer(cfg: ZooConfig, model: torch.nn.Module) -> torch.optim.AdamW:
    matrices = [p for p in model.parameters() if p.dim() >= 2]
    others = [p for p in model.parameters() if p.dim() < 2]
    groups = [{"params": matrices, "weight_decay": cfg.weight_decay}, {"params": others, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(0.9, 0.95))


def lr_factor(cfg: ZooConfig, step: int) -> float:
    """Multiplier of ``cfg.lr`` at ``step`` (0-based): linear warmup, then cosine down to ``min_lr_ratio``."""
    if step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    progress = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
    return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def train_model(
    cfg: ZooConfig, model: GPT2LMHeadModel, batches: Iterator[torch.Tensor], natural: torch.Tensor
) -> float:
    """Run ``cfg.steps`` optimizer steps on ``batches``; returns the mean loss of the last 10% of steps.

    Twenty times per run it logs the loss and the best previous-token (on ``natural``, (B, T) token ids)
    and induction scores, so a run shows when the circuit forms.
    """
    optimizer = _optimizer(cfg, model)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(cfg, step))
    model.train()
    tokens_per_step = cfg.batch_size * cfg.seq_len
    recent: list[float] = []
    start = time.perf_counter()
    bar = tqdm(range(cfg.steps), desc="zoo train", unit="step", mininterval=2.0)
    for step in bar:
        batch = next(batches)  # (B, T)
        loss = model(batch, labels=batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        recent = (recent + [loss.item()])[-max(1, cfg.steps // 10) :]
        tokens_per_s = (step + 1) * tokens_per_step / (time.perf_counter() - start)
        bar.set_postfix(loss=f"{loss.item():.3f}", tok_s=f"{tokens_per_s:,.0f}")
        if (step + 1) % max(1, cfg.steps // 20) == 0 or step + 1 == cfg.steps:
            previous = previous_token_pattern_score(attention_patterns(model, natural)).max().item()
            induction = induction_score(model, cfg.probe_seq_len, 4, cfg.seed).max().item()
            logger.info(
                "step %d/%d loss %.4f lr %.2e %.0f tok/s; best previous-token score %.3f, induction %.3f",
                step + 1, cfg.steps, loss.item(), scheduler.get_last_lr()[0], tokens_per_s, previous, induction,
            )
    bar.close()
    model.eval()
    return float(np.mean(recent))




def train_demo(cfg: ZooConfig, out_dir: str | Path) -> dict[str, Any]:
    """Train the demo model with ``cfg`` and write it to ``out_dir``; returns the zoo card it wrote.

    ``out_dir`` receives the model (``config.json``, ``model.safetensors``), the tokenizer files and
    ``zoo_card.json``; it is written to a temporary directory first and renamed into place, replacing
    whatever ``out_dir`` held.
    """
    started = time.perf_counter()
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(cfg.num_threads)
    try:
        random.seed(cfg.seed)
        np.random.seed(cfg.seed)
        torch.manual_seed(cfg.seed)
        train_files, heldout_files = corpus_files(cfg, "train"), corpus_files(cfg, "heldout")
        logger.info("corpus: %d train files, %d held-out files", len(train_files), len(heldout_files))
        tokenizer = train_tokenizer(cfg, train_files)
        train_docs = tokenize_documents(tokenizer, train_files)
        logger.info("tokenizer: %d tokens; train split %d tokens", len(tokenizer), sum(map(len, train_docs)))
        model = build_model(cfg, tokenizer)
        n_params = sum(p.numel() for p in model.parameters())
        logger.info("model: %d parameters", n_params)
        heldout = pack_documents(
            encode_documents(tokenizer, list(_read(heldout_files))), cfg.seq_len, tokenizer.bos_token_id,
            tokenizer.eos_token_id,
        )
        batches = training_batches(cfg, train_docs, tokenizer.bos_token_id, len(tokenizer))
        train_loss = train_model(cfg, model, batches, heldout.contexts[:4])
        if cfg.save_dtype == "float16":
            model.half().float()  # evaluate exactly the weights that are saved
        evaluation = evaluate_model(model, tokenizer, heldout, cfg.probe_seq_len, cfg.probe_batch, cfg.seed)
        baselines = evaluate_baselines(train_docs, heldout, len(tokenizer))
        card = {
            "schema_version": CARD_SCHEMA_VERSION,
            "config": dataclasses.asdict(cfg),
            "parameter_count": n_params,
            "training_tokens": cfg.steps * cfg.batch_size * cfg.seq_len,
            "final_train_loss": train_loss,
            **card_sections(evaluation, baselines),
            "probes": {"seq_len": cfg.probe_seq_len, "batch": cfg.probe_batch, "seed": cfg.seed,
                       "natural_contexts": NATURAL_CONTEXTS, "natural_seq_len": NATURAL_SEQ_LEN},
            "corpus": {
                "train_files": len(train_files),
                "heldout_files": len(heldout_files),
                "train_fingerprint": corpus_fingerprint(train_files),
                "python_version": platform.python_version(),
            },
            "wall_time_s": 0.0,
            "torch_version": torch.__version__,
            "transformers_version": transformers.__version__,
            "tokenizers_version": tokenizers.__version__,
        }
        logger.info(
            "held-out loss %.4f (unigram %.4f); best previous-token head %s, induction head %s; copying gap %.2f",
            card["heldout_loss"], card["unigram_loss"], card["best_previous_token_head"],
            card["best_induction_head"], card["copying_gap"]["gap"],
        )

        with atomic_directory(out_dir) as tmp:
            model.to(getattr(torch, cfg.save_dtype)).save_pretrained(tmp, safe_serialization=True)
            tokenizer.save_pretrained(tmp)
            card["wall_time_s"] = round(time.perf_counter() - started, 1)
            (tmp / CARD_NAME).write_text(json.dumps(card, indent=2) + "\n")
        logger.info("wrote %s in %.0f s", out_dir, card["wall_time_s"])
        return card
    finally:
        torch.set_num_threads(previous_threads)
