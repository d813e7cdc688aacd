"""Codebook bottlenecks inside a model: finetune the model through them, then steer it by forcing codes."""

from interp.codebooks.finetune import CodebookFinetuneConfig, finetune_codebooks, load_run
from interp.codebooks.steer import generate_with_codes, next_token_shift

__all__ = ["CodebookFinetuneConfig", "finetune_codebooks", "generate_with_codes", "load_run", "next_token_shift"]
