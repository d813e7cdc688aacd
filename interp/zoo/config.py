"""``ZooConfig``: everything that decides a demo model trained by ``interp zoo train``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from interp.errors import InterpError


@dataclass(frozen=True)
class ZooConfig:
    """Everything that decides the demo model (the shipped ``DEMO_DIR`` checkpoint predates this recipe: its
    ``zoo_card.json`` records the GPT-2 recipe it came from)."""

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
    seq_len: int = 128
    """Tokens per training context, BOS included; at most ``n_ctx``."""
    batch_size: int = 16
    """Contexts per optimizer step (and per evaluation batch)."""
    steps: int = 1500
    """Optimizer steps."""
    warmup_steps: int = 50
    """Steps of linear learning-rate warmup from zero; fewer than ``steps``."""
    lr: float = 3e-3
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
    repeat_fraction: float = 0.35
    """Fraction of training rows that are ``[BOS] r1 r1 r2 r2 ...`` (``data.repeat_rows``): predicted
    only by copying from the earlier copy, an induction head."""
    period_two_fraction: float = 0.25
    """Fraction of training rows of ``a b a b ...`` segments (``data.period_two_rows``): predicted by a
    previous-token head that copies, so the layer-0 previous-token head forms first."""
    uniform_fraction: float = 0.5
    """Fraction of the random sequences of synthetic rows drawn uniformly from the vocabulary; the rest
    follow the train split's unigram frequencies."""
    late_synthetic_step: int = 1000
    """From this step on the synthetic fractions are multiplied by ``late_synthetic_scale`` (more natural text
    once the circuit has formed); ``steps`` or more keeps them constant."""
    late_synthetic_scale: float = 0.5
    """Multiplier of ``repeat_fraction`` and ``period_two_fraction`` from ``late_synthetic_step`` on."""
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
                    "steps", "probe_seq_len", "probe_batch", "num_threads")
        for name in positive:
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise InterpError(f"ZooConfig.{name} must be a positive integer, got {getattr(self, name)!r}")
        if self.vocab_size < 258:
            raise InterpError("ZooConfig.vocab_size must exceed 257 (256 bytes + the special token)")
        if self.d_model % self.n_head or (self.d_model // self.n_head) % 2:
            raise InterpError(
                f"ZooConfig.d_model={self.d_model} must be n_head={self.n_head} times an even head width"
            )
        if not 18 <= self.seq_len <= self.n_ctx:
            raise InterpError(f"ZooConfig.seq_len must be in [18, n_ctx={self.n_ctx}], got {self.seq_len}")
        self._check_fractions()
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
        for name in ("repeat_fraction", "period_two_fraction", "uniform_fraction", "late_synthetic_scale"):
            if not 0 <= getattr(self, name) <= 1:
                raise InterpError(f"ZooConfig.{name} must be in [0, 1], got {getattr(self, name)}")
        if self.repeat_fraction + self.period_two_fraction >= 1:
            raise InterpError(
                "ZooConfig.repeat_fraction + period_two_fraction must be below 1 (some rows must be natural "
                f"text), got {self.repeat_fraction} + {self.period_two_fraction}"
            )
        if self.late_synthetic_step < 0:
            raise InterpError(f"ZooConfig.late_synthetic_step must be >= 0, got {self.late_synthetic_step}")

    def synthetic_fractions(self, step: int) -> tuple[float, float]:
        """(repeat, period-two) row fractions at optimizer ``step`` (0-based)."""
        scale = self.late_synthetic_scale if step >= self.late_synthetic_step else 1.0
        return self.repeat_fraction * scale, self.period_two_fraction * scale
