"""Synthetic activations with known ground truth, for checking that dictionaries recover features.

- :func:`toy_superposition`: sparse, optionally correlated, non-negative features embedded in fewer
  dimensions than there are features (Sharkey et al. 2022 style); the ground-truth directions are known.
- :func:`toy_varied`: a less uniform set: features of different frequencies and scales (each log-uniform),
  pairs with correlated directions, pairs that tend to fire together, a large mean offset and noise. Defaults
  that work on both toy sets without tuning do not depend on one generator's scale.
- :func:`hierarchical_tree`: the MP-SAE hierarchical benchmark (specs/methods.md section 3): 20 read-out
  features in a tree of mutually exclusive parents, children and singletons, with mixed directions.
Wrap the samples in :class:`interp.activations.tensors.TensorSource` to train on them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch

from interp.errors import InterpError

EPS_CHILDREN = (0, 0.0895, 0.163, 0.226, 0.282, 0.3335, 0.3825, 0.431, 0.482)
EPS_PARENTS = (0, 0.3, 0.44, 0.529, 0.594, 0.6467, 0.692, 0.733, 0.7739)


class ToyData(NamedTuple):
    """Samples and the truth behind them."""

    x: torch.Tensor
    """(n, d) samples, x = coeffs @ directions."""
    coeffs: torch.Tensor
    """(n, n_features) non-negative feature magnitudes (0 when inactive)."""
    directions: torch.Tensor
    """(n_features, d) unit ground-truth directions."""


def toy_superposition(
    n: int,
    d: int = 32,
    n_features: int = 64,
    p_active: float = 0.05,
    *,
    correlated_pairs: int = 0,
    seed: int = 0,
) -> ToyData:
    """``n`` samples of ``n_features`` sparse features in ``d`` < n_features dimensions.

    Each feature fires independently with probability ``p_active`` with magnitude U(0.5, 1.5); the first
    ``correlated_pairs`` pairs (2i, 2i+1) fire together (the second copies the first's on/off state).
    Directions are random unit vectors.
    """
    if d < 1 or n_features < 1 or not 0 < p_active <= 1:
        raise InterpError("toy_superposition needs d >= 1, n_features >= 1 and 0 < p_active <= 1.")
    gen = torch.Generator().manual_seed(seed)
    directions = torch.randn(n_features, d, generator=gen)
    directions /= directions.norm(dim=1, keepdim=True)
    on = torch.rand(n, n_features, generator=gen) < p_active
    for i in range(min(correlated_pairs, n_features // 2)):
        on[:, 2 * i + 1] = on[:, 2 * i]
    coeffs = on * (0.5 + torch.rand(n, n_features, generator=gen))
    return ToyData(coeffs @ directions, coeffs, directions)


def toy_varied(
    n: int,
    d: int = 48,
    n_features: int = 96,
    *,
    p_range: tuple[float, float] = (0.015, 0.06),
    scale_range: tuple[float, float] = (0.6, 1.8),
    similar_pairs: int = 12,
    similarity: float = 0.4,
    cofiring_pairs: int = 12,
    offset_norm: float = 3.0,
    noise: float = 0.02,
    seed: int = 0,
) -> ToyData:
    """``n`` samples of ``n_features`` sparse features in ``d`` dimensions, unlike :func:`toy_superposition` in
    every way that could hide a scale-dependent default:

    - feature i fires with probability p_i, log-uniform in ``p_range`` (rare and common features);
    - its magnitude is s_i * U(0.6, 1.4), with s_i log-uniform in ``scale_range``;
    - the first ``similar_pairs`` pairs (2j, 2j+1) have directions with cosine ``similarity``;
    - in the next ``cofiring_pairs`` pairs the second feature also fires, half the time, when the first does;
    - every sample adds a fixed offset of norm ``offset_norm`` (activations have a large mean) and isotropic
      Gaussian noise of standard deviation ``noise`` per dimension.

    ``x = coeffs @ directions + offset + noise``; ``directions`` are the unit ground truth.
    """
    if d < 2 or n_features < 2 * (similar_pairs + cofiring_pairs):
        raise InterpError("toy_varied needs d >= 2 and n_features >= 2 * (similar_pairs + cofiring_pairs).")
    gen = torch.Generator().manual_seed(seed)

    def log_uniform(bounds: tuple[float, float], size: int) -> torch.Tensor:
        lo, hi = torch.tensor(bounds).log().tolist()
        return torch.exp(lo + (hi - lo) * torch.rand(size, generator=gen))

    directions = torch.randn(n_features, d, generator=gen)
    directions /= directions.norm(dim=1, keepdim=True)
    for j in range(similar_pairs):  # turn 2j+1 towards 2j until their cosine is ``similarity``
        a, b = directions[2 * j], directions[2 * j + 1]
        b = b - (b @ a) * a
        directions[2 * j + 1] = similarity * a + (1 - similarity**2) ** 0.5 * b / b.norm()
    on = torch.rand(n, n_features, generator=gen) < log_uniform(p_range, n_features)
    for j in range(similar_pairs, similar_pairs + cofiring_pairs):
        on[:, 2 * j + 1] |= on[:, 2 * j] & (torch.rand(n, generator=gen) < 0.5)
    scale = log_uniform(scale_range, n_features)
    coeffs = on * scale * (0.6 + 0.8 * torch.rand(n, n_features, generator=gen))
    offset = torch.randn(d, generator=gen)
    offset *= offset_norm / offset.norm()
    x = coeffs @ directions + offset + noise * torch.randn(n, d, generator=gen)
    return ToyData(x, coeffs, directions)


def _mix(q: torch.Tensor, members: Sequence[int], eps: float) -> None:
    """q_i <- (1 - eps) q_i + eps / (|S| - 1) sum_{j in S, j != i} q_j, for i in S, then renormalise."""
    idx = torch.tensor(members)
    block = q[idx]
    total = block.sum(0, keepdim=True)
    mixed = (1 - eps) * block + eps / (len(members) - 1) * (total - block)
    q[idx] = mixed / mixed.norm(dim=1, keepdim=True)


def hierarchical_tree(n: int, level: int = 1, *, seed: int = 0) -> ToyData:
    """The MP-SAE toy hierarchy: 20 read-out features in d = 20 dimensions.

    Root children are mutually exclusive: 3 parents (p = 0.2 each; indices 0, 4, 8) and 8 singletons
    (p = 0.05 each; 12..19); the remaining 0.2 is "nothing". Each active parent picks one of 3 children
    (p = 0.2 each; 1-3, 5-7, 9-11) or none (p = 0.4). Magnitudes 1.5 + 0.25 N(0, 1). Directions start
    orthonormal and are mixed within {parents, singletons} by EPS_PARENTS[level] and within each sibling
    triple by EPS_CHILDREN[level]; ``level`` 1 is "correlation 0.1".
    """
    if not 0 <= level < len(EPS_CHILDREN):
        raise InterpError(f"level must be in 0..{len(EPS_CHILDREN) - 1}, got {level}.")
    gen = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(20, 20, generator=gen))
    q = q.T.contiguous()
    _mix(q, [0, 4, 8, *range(12, 20)], EPS_PARENTS[level])
    for parent in (0, 4, 8):
        _mix(q, [parent + 1, parent + 2, parent + 3], EPS_CHILDREN[level])
    root_options = [0, 4, 8, *range(12, 20), -1]
    root_p = torch.tensor([0.2] * 3 + [0.05] * 8 + [0.0])
    root_p[-1] = 1 - root_p.sum()
    root = torch.multinomial(root_p, n, replacement=True, generator=gen)
    child = torch.multinomial(torch.tensor([0.2, 0.2, 0.2, 0.4]), n, replacement=True, generator=gen)
    on = torch.zeros(n, 20, dtype=torch.bool)
    rows = torch.arange(n)
    picked = torch.tensor(root_options)[root]
    has = picked >= 0
    on[rows[has], picked[has]] = True
    is_parent = (picked == 0) | (picked == 4) | (picked == 8)
    with_child = is_parent & (child < 3)
    on[rows[with_child], picked[with_child] + 1 + child[with_child]] = True
    coeffs = on * (1.5 + 0.25 * torch.randn(n, 20, generator=gen))
    return ToyData(coeffs @ q, coeffs, q)


