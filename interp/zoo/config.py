"""``ZooConfig``: everything that decides a demo model trained by ``interp zoo train``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from interp.errors import InterpError


@dataclass(frozen=True)
class ZooConfig:
    """Everything that decides the demo model (the shipped ``DEMO_DIR`` checkpoint is these defaults' output,
    trained with ``num_threads=1``; its ``zoo_card.json`` records the config).

    The run has two phases: ``short_steps`` on short contexts, mostly ``[BOS] r r`` rows, where the layer-0
    previous-token head and then the layer-1 induction head form; then mostly natural text on longer
    contexts, with a few ``[BOS] r r`` rows that keep the head."""

    vocab_size: int = 4096
    """Tokenizer vocabulary size, the special token and the 256 byte tokens included."""
    n_layer: int = 2
    """Number of transformer blocks (Llama architecture: rotary positions, RMSNorm, gated SiLU MLP)."""
    n_head: int = 4
    """Attention heads per block (as many key/value heads: no grouped-query attention)."""
    d_model: int = 128
    """Width of the residual stream; a multiple of ``n_head``."""
    d_mlp: int = 512
    """Hidden width of each MLP."""
    n_ctx: int = 256
    """Positions the model is declared for (``max_position_embeddings``); held-out loss uses contexts this long."""
    rope_theta: float = 1e12
    """Rotary base. With 1e12 only the first few frequency pairs of a head turn noticeably over the context,
    so most of a head's dimensions compare content whatever the distance (an induction head's match) while
    the fast pairs still give the previous-token head its offset."""
    short_steps: int = 1400
    """Optimizer steps of the first phase, on short contexts (``short_seq_len``), where the induction head
    forms; the remaining ``steps - short_steps`` use ``seq_len``."""
    short_seq_len: int = 48
    """Tokens per training context in the first phase, BOS included; at most ``n_ctx``."""
    short_batch_size: int = 42
    """Contexts per optimizer step in the first phase (42 x 48 is about the 16 x 128 tokens of a later step)."""
    seq_len: int = 128
    """Tokens per training context after the first phase, BOS included; at most ``n_ctx``."""
    batch_size: int = 16
    """Contexts per optimizer step after the first phase (and per evaluation batch)."""
    steps: int = 3000
    """Optimizer steps in all."""
    warmup_steps: int = 50
    """Steps of linear learning-rate warmup from zero; fewer than ``steps``."""
    lr: float = 2e-3
    """Peak learning rate of AdamW (betas 0.9, 0.95)."""
    min_lr_ratio: float = 0.1
    """Final learning rate of the cosine decay, as a fraction of ``lr``."""
    weight_decay: float = 0.1
    """AdamW weight decay, applied to the attention and MLP matrices only (not embeddings, norms)."""
    embedding_std: float = 0.1
    """Standard deviation of the (tied) token embeddings at initialization."""
    embedding_shared: float = 0.1
    """Per-component scale of one random vector added to every token embedding at initialization. With
    tied embeddings it shifts every logit equally (free for the loss) and gives layer 0's normalized input
    a direction shared by all positions, which a rotary head needs to prefer a relative offset."""
    repeat_fraction: float = 0.75
    """Fraction of first-phase rows that are ``[BOS] r1 r1 r2 r2 ...`` (``data.repeat_rows``): predicted
    only by copying from the earlier copy, an induction head."""
    late_repeat_fraction: float = 0.15
    """Fraction of ``[BOS] r r`` rows after the first phase (the rest natural text), which keeps the head."""
    repeat_min_len: int = 6
    """Shortest random sequence ``r`` of a repeat row; the longest is ``(context length - 1) // 2``."""
    period_two_fraction: float = 0.25
    """Fraction of rows of ``a b a b ...`` segments (``data.period_two_rows``) before ``period_two_steps``:
    predicted by a previous-token head that copies, so the layer-0 previous-token head forms first."""
    period_two_steps: int = 150
    """Period-two rows stop at this step, and layer 0's attention value and output weights are drawn anew: the
    previous-token pattern stays, the copy goes. A layer-0 head that copies writes the previous token in the
    token-embedding basis, where layer 1 cannot tell it from the current token, and no induction head forms
    (docs/notes/zoo.md, session 3). 0 uses no period-two rows and re-draws nothing."""
    uniform_fraction: float = 0.5
    """Fraction of the random sequences of synthetic rows drawn uniformly from the vocabulary; the rest
    follow the train split's unigram frequencies."""
    late_attention_step: int = 100
    """Attention of the blocks after the first writes nothing (output projection zero and frozen) before
    this step, so the previous-token head forms in layer 0; 0 trains every block from the start."""
    grad_clip: float = 1.0
    """Maximum global gradient norm."""
    seed: int = 0
    """Seed of every random choice: weight init, data order, synthetic rows, probes."""
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
        positive = ("vocab_size", "n_layer", "n_head", "d_model", "d_mlp", "n_ctx", "seq_len", "batch_size",
                    "short_seq_len", "short_batch_size", "steps", "repeat_min_len", "probe_seq_len", "probe_batch",
                    "num_threads")
        for name in positive:
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise InterpError(f"ZooConfig.{name} must be a positive integer, got {getattr(self, name)!r}")
        if self.vocab_size < 258:
            raise InterpError("ZooConfig.vocab_size must exceed 257 (256 bytes + the special token)")
        if self.d_model % self.n_head or (self.d_model // self.n_head) % 2:
            raise InterpError(
                f"ZooConfig.d_model={self.d_model} must be n_head={self.n_head} times an even head width"
            )
        for name in ("seq_len", "short_seq_len"):
            if not max(18, 2 * self.repeat_min_len + 1) <= getattr(self, name) <= self.n_ctx:
                raise InterpError(f"ZooConfig.{name} must be in [max(18, 2 * repeat_min_len + 1), n_ctx={self.n_ctx}], "
                                  f"got {getattr(self, name)}")
        self._check_fractions()
        if self.rope_theta <= 1:
            raise InterpError(f"ZooConfig.rope_theta must exceed 1, got {self.rope_theta}")
        if not 0 <= self.period_two_steps <= self.short_steps <= self.steps:
            raise InterpError("ZooConfig needs 0 <= period_two_steps <= short_steps <= steps, got "
                              f"{self.period_two_steps}, {self.short_steps}, {self.steps}")
        for name in ("warmup_steps", "late_attention_step"):
            if not 0 <= getattr(self, name) < self.steps:
                raise InterpError(f"ZooConfig.{name} must be in [0, steps={self.steps}), got {getattr(self, name)}")
        if 2 * self.probe_seq_len + 1 > self.n_ctx:
            raise InterpError(
                f"ZooConfig.probe_seq_len must be at most {(self.n_ctx - 1) // 2} for "
                f"n_ctx={self.n_ctx}, got {self.probe_seq_len}"
            )
        if not (self.lr > 0 and 0 <= self.min_lr_ratio <= 1 and self.weight_decay >= 0 and self.grad_clip > 0):
            raise InterpError("ZooConfig needs lr > 0, 0 <= min_lr_ratio <= 1, weight_decay >= 0, grad_clip > 0")
        if self.embedding_std <= 0 or self.embedding_shared < 0:
            raise InterpError("ZooConfig needs embedding_std > 0 and embedding_shared >= 0")
        if self.max_files is not None and self.max_files < 1:
            raise InterpError(f"ZooConfig.max_files must be None or at least 1, got {self.max_files}")
        if self.save_dtype not in ("float32", "float16"):
            raise InterpError(f"ZooConfig.save_dtype must be 'float32' or 'float16', got {self.save_dtype!r}")

    def _check_fractions(self) -> None:
        for name in ("repeat_fraction", "late_repeat_fraction", "period_two_fraction", "uniform_fraction"):
            if not 0 <= getattr(self, name) <= 1:
                raise InterpError(f"ZooConfig.{name} must be in [0, 1], got {getattr(self, name)}")
        if self.repeat_fraction + self.period_two_fraction > 1:
            raise InterpError(
                "ZooConfig.repeat_fraction + period_two_fraction must be at most 1, got "
                f"{self.repeat_fraction} + {self.period_two_fraction}"
            )
        if self.late_repeat_fraction >= 1:
            raise InterpError("ZooConfig.late_repeat_fraction must be below 1 (later rows must include natural text)")

    def synthetic_fractions(self, step: int) -> tuple[float, float]:
        """(repeat, period-two) row fractions at optimizer ``step`` (0-based)."""
        repeat = self.repeat_fraction if step < self.short_steps else self.late_repeat_fraction
        return repeat, self.period_two_fraction if step < self.period_two_steps else 0.0

    def shape(self, step: int) -> tuple[int, int]:
        """(batch size, context length) of the batch at optimizer ``step`` (0-based)."""
        short = step < self.short_steps
        return (self.short_batch_size, self.short_seq_len) if short else (self.batch_size, self.seq_len)

    @property
    def training_tokens(self) -> int:
        short = self.short_steps * self.short_batch_size * self.short_seq_len
        return short + (self.steps - self.short_steps) * self.batch_size * self.seq_len
