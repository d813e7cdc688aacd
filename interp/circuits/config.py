"""The configuration of a circuit search. The same dataclass is the CLI's flags (``interp circuit METHOD``).

Kept free of torch and of the methods, so the command line reads it (with ``cli.config_flags``) without
importing them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from interp.errors import InterpError

METHODS = ("activation-patching", "attribution-patching", "eap", "eap-ig", "eap-ig-activations", "acdc",
           "discrete-sae")
"""Every circuit method, in the order reports list them."""
NODE_METHODS = ("activation-patching", "attribution-patching", "discrete-sae")
"""Methods that score nodes (their graphs' edge scores are derived)."""


@dataclass(frozen=True)
class CircuitConfig:
    """How to build the task and run a method. Every field has a default; methods read only their own."""

    task: str = "induction"
    """Registered task for the command line (induction, ioi, greater-than, docstring, and the demo's code
    tasks); the Python API also takes a Task object."""
    n_prompts: int = 32
    """Prompt pairs the task is built with."""
    seed: int = 0
    """Seeds the task's prompts, ACDC's visiting order and the discrete SAE."""
    seq_len: int = 16
    """Induction only: length of the random sequence (prompts have 2 * seq_len tokens)."""
    batch_size: int = 32
    """Prompt pairs per forward pass."""
    max_rows: int = 256
    """Largest batch of one forward when a method stacks patches or interpolation steps (rows = copies x prompts)."""
    direction: Literal["noising", "denoising"] = "noising"
    """Activation / attribution patching: patch corrupted values into clean runs (noising) or the reverse."""
    components: tuple[str, ...] = ("heads", "mlps")
    """Activation / attribution patching sites: heads, mlps, resid (residual stream per layer and position)."""
    ig_steps: int = 5
    """EAP-IG interpolation steps (the paper's 5; hannamw/EAP-IG's library default is 30)."""
    acdc_thresholds: tuple[float, ...] = ()
    """ACDC thresholds; empty means auto-circuit's sweep {1, 3, 5, 7, 9} x 10^-5 .. 10^-2, carried on a decade at a
    time while more than one edge survives its largest threshold (so the edges that matter most are ordered)."""
    acdc_metric: Literal["kl", "task"] = "kl"
    """ACDC's divergence: KL to the clean output at the answer position, or the drop of the task metric."""
    sae_latents: int = 200
    """Discrete SAE: number of latents (codes)."""
    sae_l1: float = 0.02
    """Discrete SAE: L1 coefficient lambda of the reference (0.05 for docstring there)."""
    sae_epochs: int = 500
    """Discrete SAE: full-batch training steps."""
    sae_train_prompts: int = 10
    """Discrete SAE: prompts (positive and negative mixed) the SAE trains on."""
    sae_lr: float = 1e-3
    """Discrete SAE: Adam learning rate."""
    sae_normalise: bool = False
    """Discrete SAE: divide each head's unique-positive code count by its number of distinct codes."""
    evaluate: bool = True
    """Also compute the faithfulness curve, and ROC AUC when the task has a known ground truth."""

    def __post_init__(self) -> None:
        checks = [
            (self.n_prompts >= 1 and self.batch_size >= 1 and self.max_rows >= 1,
             "n_prompts, batch_size and max_rows must be >= 1"),
            (self.ig_steps >= 1, "ig_steps must be >= 1"),
            (all(t >= 0 for t in self.acdc_thresholds), "acdc_thresholds must be >= 0"),
            (set(self.components) <= {"heads", "mlps", "resid"} and bool(self.components),
             "components must be some of heads, mlps, resid"),
            (self.sae_latents >= 2 and self.sae_epochs >= 1 and self.sae_train_prompts >= 1,
             "sae_latents >= 2, sae_epochs >= 1 and sae_train_prompts >= 1"),
        ]
        for ok, message in checks:
            if not ok:
                raise InterpError(f"Bad CircuitConfig: {message}.")


def check_method(method: str) -> str:
    """``method`` if it is one of ``METHODS`` (InterpError with the list otherwise)."""
    if method not in METHODS:
        from interp.errors import close_matches

        near = close_matches(method, METHODS)
        raise InterpError(f"Unknown circuit method {method!r}. Methods: {', '.join(METHODS)}."
                          + (f" Did you mean {near[0]!r}?" if near else ""))
    return method
