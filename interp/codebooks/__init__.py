"""Codebook bottlenecks inside a model: finetune the model through them, then read and force codes."""

from interp.codebooks.bottleneck import (
    CodebookBottleneck,
    CodeForce,
    apply_force,
    codebook_hooks,
    load_codebooks,
    save_codebooks,
)
from interp.codebooks.finetune import CodebookFinetuneConfig, FinetuneResult, evaluate_lm, finetune_codebooks, load_run
from interp.codebooks.steer import generate_with_codes, next_token_shift, target_mass
from interp.codebooks.usage import CodeUsage, code_usage, fire_mask, token_counts, usage_summary

__all__ = [
    "CodeForce",
    "CodeUsage",
    "CodebookBottleneck",
    "CodebookFinetuneConfig",
    "FinetuneResult",
    "apply_force",
    "code_usage",
    "codebook_hooks",
    "evaluate_lm",
    "finetune_codebooks",
    "fire_mask",
    "generate_with_codes",
    "load_codebooks",
    "load_run",
    "next_token_shift",
    "save_codebooks",
    "target_mass",
    "token_counts",
    "usage_summary",
]
