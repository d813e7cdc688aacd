"""What the analyze stage keeps per feature: the config that decides a feature store's contents."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from interp.errors import InterpError


@dataclass(frozen=True)
class AnalyzeConfig:
    """How to analyze a dictionary's features. Every field changes the feature store's contents."""

    n_top: int = 20
    """Top-activating contexts kept per feature."""
    n_quantiles: int = 10
    """Equal-count activation bands that quantile examples are drawn from."""
    per_quantile: int = 3
    """Examples drawn per band."""
    quantile_pool: int = 200
    """Size of the uniform sample of firing contexts per feature that bands are cut from."""
    n_random: int = 10
    """Random contexts per feature in which it does not fire (negatives for scoring)."""
    window: int = 32
    """Tokens per example window (clipped to the store's context length)."""
    hist_min: float = 1e-3
    """Lower edge of the first log-spaced histogram bin."""
    hist_max: float = 1e4
    """Upper edge of the last log-spaced histogram bin."""
    bins_per_decade: int = 12
    """Log-spaced histogram bins per factor of ten."""
    n_logits: int = 10
    """Promoted and suppressed tokens kept per feature."""
    n_neighbours: int = 10
    """Neighbours kept per feature, by decoder cosine and by co-occurrence."""
    cooc_rows: int = 8192
    """Rows (approximately; whole contexts, strided over the store) used to measure co-occurrence."""
    chunk_rows: int = 4096
    """Rows encoded at once (rounded down to whole contexts); bounds memory at chunk_rows x n_features."""
    max_rows: int | None = None
    """Analyse only the first rows of the store (rounded down to whole contexts); None: all of it."""
    seed: int = 0
    """Seed of the hash keys that choose quantile and random examples."""
    device: str = "cpu"
    """Where the dictionary encodes (cpu, cuda ...); results are kept on the CPU."""

    def __post_init__(self) -> None:
        for name in (
            "n_top",
            "n_quantiles",
            "per_quantile",
            "quantile_pool",
            "window",
            "bins_per_decade",
            "chunk_rows",
        ):
            if getattr(self, name) < 1:
                raise InterpError(f"AnalyzeConfig.{name} must be >= 1, got {getattr(self, name)}.")
        for name in ("n_random", "n_logits", "n_neighbours", "cooc_rows"):
            if getattr(self, name) < 0:
                raise InterpError(f"AnalyzeConfig.{name} must be >= 0, got {getattr(self, name)}.")
        if not 0 < self.hist_min < self.hist_max:
            raise InterpError(f"Need 0 < hist_min < hist_max, got {self.hist_min}, {self.hist_max}.")
        if self.quantile_pool < self.n_quantiles:
            raise InterpError("quantile_pool must be at least n_quantiles so every band can hold an example.")
        if self.max_rows is not None and self.max_rows < 1:
            raise InterpError(f"max_rows must be positive or None, got {self.max_rows}.")

    def hist_edges(self) -> torch.Tensor:
        """Bin edges (B + 1,), log-spaced from hist_min to hist_max."""
        decades = torch.log10(torch.tensor(self.hist_max / self.hist_min, dtype=torch.float64))
        n = max(1, int(round(float(decades) * self.bins_per_decade)))
        lo, hi = torch.log10(torch.tensor([self.hist_min, self.hist_max], dtype=torch.float64)).tolist()
        return torch.logspace(lo, hi, n + 1, dtype=torch.float64).float()
