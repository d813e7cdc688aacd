"""MP-SAE's hierarchy claim on the synthetic tree of specs/methods.md section 3, scaled down for CPU.

Claim (Costa et al. 2025): matching pursuit's residual is orthogonal to each atom it selects, so the
atoms it learns for a parent and its children keep the ground truth's geometry (children orthogonal to
their parent, siblings at their mixed cosine), where a one-shot TopK encoder folds the parent into its
children's atoms. Measured here: for each parent and its three children, the learned decoder Gram
matrix against the ground-truth Gram (Frobenius error), after matching latents to features by a
Hungarian assignment on max-normalised activation similarity over 1000 held-out samples.

Setup (the spec's, shortened): tree level 1 ("correlation 0.1"), 20 latents, batch 200, 400 steps,
Adam lr 3e-2 with betas (0.5, 0.9375), 5% warmup, linear decay over the last 20%, grad clip 1, no
normalisation; 3 pursuit steps for MP and k = 3 for TopK (the data has at most 2 active features).
Measured numbers are in docs/dictionaries.md. The assignment is scipy's ``linear_sum_assignment``.
"""

from __future__ import annotations

import itertools

import pytest
import torch
from scipy.optimize import linear_sum_assignment

from interp.activations.synthetic import hierarchical_tree
from interp.activations.tensors import TensorSource
from interp.dictionaries import Dictionary, load_dictionary
from interp.training import TrainConfig, train_dictionary

TORCH_THREADS = 1  # see conftest.py
FAMILIES = ((0, 1, 2, 3), (4, 5, 6, 7), (8, 9, 10, 11))
"""(parent, child, child, child) feature indices of the tree."""
STEPS, BATCH, HELD_OUT = 400, 200, 1000


def match_latents(truth: torch.Tensor, acts: torch.Tensor) -> torch.Tensor:
    """(n_features,) latent matched to each feature: Hungarian on the dot product of activations (N, .)
    max-normalised per feature and per latent."""
    t = truth / truth.abs().max(0).values.clamp_min(1e-12)
    a = acts / acts.abs().max(0).values.clamp_min(1e-12)
    _, cols = linear_sum_assignment(-(t.T @ a).double().numpy())
    return torch.from_numpy(cols)


def family_gram_error(decoder: torch.Tensor, directions: torch.Tensor, matched: torch.Tensor) -> dict[str, float]:
    """Mean over families of ||G_learned - G_true||_F on (parent, 3 children), plus mean parent-child and
    sibling cosines of the learned atoms and the mean cosine of each matched atom with its feature."""
    W = decoder / decoder.norm(dim=1, keepdim=True)
    W = W[matched]
    learned, true = W @ W.T, directions @ directions.T
    err, parent_child, siblings = [], [], []
    for fam in FAMILIES:
        i = torch.tensor(fam)
        err.append(float((learned[i][:, i] - true[i][:, i]).norm()))
        parent_child.append(float(learned[fam[0], list(fam[1:])].mean()))
        siblings += [float(learned[a, b]) for a, b in itertools.combinations(fam[1:], 2)]
    return {
        "family_gram_error": sum(err) / len(err),
        "parent_child_cos": sum(parent_child) / len(parent_child),
        "sibling_cos": sum(siblings) / len(siblings),
        "matched_cos": float((W * directions).sum(1).mean()),
    }


def _train(arch: str, seed: int, data, tmp_path) -> Dictionary:
    cfg = TrainConfig(
        architecture=arch,
        d_sae=20,
        k=3,
        normalization="none",
        n_tokens=STEPS * BATCH,
        batch_size=BATCH,
        lr=3e-2,
        betas=(0.5, 0.9375),
        warmup_steps=STEPS // 20,
        decay_fraction=0.2,
        grad_clip=1.0,
        log_every=STEPS,
        checkpoint_every=STEPS,
        init_tokens=2000,
        seed=seed,
    )
    store = TensorSource({"x": data.x[: STEPS * BATCH]})
    return load_dictionary(train_dictionary(cfg, store, tmp_path / arch, progress=False).dictionaries[0])


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_mp_keeps_within_family_geometry_that_topk_folds(seed, tmp_path):
    data = hierarchical_tree(STEPS * BATCH + HELD_OUT, level=1, seed=seed)
    x, truth = data.x[-HELD_OUT:], data.coeffs[-HELD_OUT:]
    scores = {}
    for arch in ("mp", "topk"):
        d = _train(arch, seed, data, tmp_path)
        with torch.no_grad():
            matched = match_latents(truth, d.encode(x))
        scores[arch] = family_gram_error(d.W_dec.detach(), data.directions, matched)
    mp, topk = scores["mp"], scores["topk"]
    # measured (seeds 0/1/2): MP 0.12/0.00/0.07 vs TopK 0.92/0.60/0.78
    assert mp["family_gram_error"] < 0.5 * topk["family_gram_error"], scores
    assert mp["family_gram_error"] < 0.3, scores
    # children stay orthogonal to their parent under MP; TopK's child atoms absorb part of the parent
    assert abs(mp["parent_child_cos"]) < 0.05 < topk["parent_child_cos"], scores
    assert mp["matched_cos"] > 0.95, scores
