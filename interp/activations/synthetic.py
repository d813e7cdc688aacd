"""Synthetic activations with known ground truth, for checking that dictionaries recover features.

- :func:`toy_superposition`: sparse, optionally correlated, non-negative features embedded in fewer
  dimensions than there are features (Sharkey et al. 2022 style); the ground-truth directions are known.
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


