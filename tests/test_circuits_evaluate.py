"""Evaluation (ROC AUC, faithfulness, the MIB curve) and discrete-SAE circuits, against reference computations."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest
import torch

from interp.circuits.components import ComponentGraph
from interp.circuits.discrete_sae import (
    HEAD_OUTPUT_HOOK,
    _pair_scores,
    _presence,
    discrete_sae,
    head_vectors,
    separation,
)
from interp.circuits.evaluate import (
    MIB_FRACTIONS,
    faithfulness,
    faithfulness_curve,
    ground_truth,
    node_auc,
    roc_auc,
    top_edge_masks,
)
from interp.circuits.generators import induction_task
from interp.circuits.graph import component_nodes
from interp.circuits.scoring import edge_graph, edge_matrix, node_graph
from interp.circuits.tasks import check_task
from interp.dictionaries import create, load_dictionary, save_dictionary
from interp.errors import InterpError

TORCH_THREADS = 1  # see conftest.py


@pytest.fixture(scope="module")
def setup(demo_model):
    task = induction_task(demo_model, n_prompts=10, seq_len=6, seed=2)
    return task, check_task(demo_model, task)


def _mann_whitney(scores: list[float], labels: list[bool]) -> float:
    pos = [abs(s) for s, y in zip(scores, labels) if y]
    neg = [abs(s) for s, y in zip(scores, labels) if not y]
    wins = sum(1.0 if p > n else 0.5 if p == n else 0.0 for p in pos for n in neg)
    return wins / (len(pos) * len(neg))


def test_roc_auc_is_the_rank_statistic_with_ties():
    gen = torch.Generator().manual_seed(0)
    for _ in range(20):
        scores = (torch.randint(-4, 5, (30,), generator=gen) / 2).tolist()  # many ties, signs ignored
        labels = (torch.rand(30, generator=gen) < 0.3).tolist()
        if any(labels) and not all(labels):
            assert roc_auc(scores, labels) == pytest.approx(_mann_whitney(scores, labels))
    assert roc_auc([3, 2, 1, 0], [True, True, False, False]) == 1.0
    with pytest.raises(InterpError, match="true and false items"):
        roc_auc([1, 2], [True, True])


def test_graphs_from_node_and_edge_scores():
    cg = ComponentGraph(2, 2)
    scores = torch.zeros(cg.n_src, cg.n_dst)
    scores[cg.head_src(0) + 1, cg.slot_dst(1, 1).start] = -3.0  # a0.h1 -> a1.h0 <k>
    g = edge_graph(cg, scores, {"method": "x"})
    assert g.node("a0.h1").score == 3.0 and g.node("a1.h0").score == 3.0 and g.node("a0.h0").score == 0.0
    assert torch.equal(edge_matrix(cg, g), scores.double())
    truth = ground_truth(["L0H1", "L1H0"], [("a0.h1", "a1.h0", "k")])
    assert node_auc(g, truth) == 1.0
    n = node_graph(cg, {"a0.h1": 2.0, "a1.h0": -1.0, "m0": 0.5}, {})
    by_key = {e.key: e.score for e in n.edges}
    assert by_key["a0.h1->a1.h0<q>"] == 1.0 and by_key["input->a0.h1<v>"] == 2.0 and by_key["a0.h0->m0"] == 0.0
    assert n.metadata["score_origin"] == "node" and [x.id for x in n.nodes] == [x.id for x in component_nodes(2, 2)]


def test_faithfulness_ends_and_the_mib_curve(demo_model, setup):
    task, base = setup
    cg = ComponentGraph.of(demo_model)
    keep = torch.stack([cg.valid, torch.zeros_like(cg.valid)])
    assert faithfulness(demo_model, task, base, keep).tolist() == pytest.approx([1.0, 0.0], abs=1e-4)
    g = edge_graph(cg, torch.rand(cg.n_src, cg.n_dst, generator=torch.Generator().manual_seed(1)), {})
    curve = faithfulness_curve(demo_model, task, g, base, batch_size=4)
    assert curve.n_edges == [int(f * 110) for f in MIB_FRACTIONS] and curve.fractions == list(MIB_FRACTIONS)
    x, y = curve.fractions, curve.faithfulness
    cpr = sum((x[i + 1] - x[i]) * (y[i] + y[i + 1]) / 2 for i in range(len(x) - 1))
    assert curve.cpr == pytest.approx(cpr) and curve.faithfulness[0] == pytest.approx(0.0, abs=1e-4)
    masks = top_edge_masks(cg, g, [5])
    scores = edge_matrix(cg, g)
    assert masks.sum() == 5 and scores[masks[0]].min() >= scores[cg.valid & ~masks[0]].max()


def test_discrete_sae_trains_through_the_registry_and_scores_by_sets(demo_model, setup, tmp_path: Path):
    task, _ = setup
    result = discrete_sae(demo_model, task, n_latents=16, epochs=40, train_prompts=4, out_dir=tmp_path)
    d = load_dictionary(result.dictionary)
    assert d.cfg.architecture == "relu_unitnorm" and d.cfg.hook_in == HEAD_OUTPUT_HOOK
    assert d.cfg.model_fingerprint == demo_model.info.fingerprint and d.cfg.training["n_steps"] == 40
    assert torch.allclose(d.W_enc.norm(dim=0), torch.ones(16), atol=1e-5)
    assert torch.allclose(d.W_dec.norm(dim=1), torch.ones(16), atol=1e-5)
    codes, n = result.codes, task.n
    assert codes.shape == (2 * n, 8) and torch.equal(
        codes, d.encode(head_vectors(demo_model, task).flatten(0, 1)).argmax(-1).view(2 * n, 8))
    for h in range(8):
        unique = len(set(codes[:n, h].tolist()) - set(codes[n:, h].tolist()))
        assert float(torch.log(result.node_scores.flatten() / result.node_scores.flatten()[0])[h]) == pytest.approx(
            unique - len(set(codes[:n, 0].tolist()) - set(codes[n:, 0].tolist())), abs=1e-6)
    pairs = _pair_scores(codes[:n], codes[n:], 16)
    for h1, h2 in itertools.product(range(8), repeat=2):
        pos = {(a, b) for a, b in zip(codes[:n, h1].tolist(), codes[:n, h2].tolist())}
        neg = {(a, b) for a, b in zip(codes[n:, h1].tolist(), codes[n:, h2].tolist())}
        assert pairs[h1, h2] == (0 if h1 == h2 else len(pos - neg))
    assert _presence(torch.tensor([[1, 0], [1, 2]]), 3).tolist() == [[False, True, False], [True, False, True]]
    again = discrete_sae(demo_model, task, dictionary=result.dictionary)
    assert torch.equal(again.codes, codes)
    # separation: between-side distance over within-side spread, by hand for one head; the induction head L1H0
    # separates the sides far better than any previous-token-like layer-0 head (whose inputs look alike on both)
    X = head_vectors(demo_model, task)[:, 4].double()
    spread = ((X[:n] - X[:n].mean(0)).pow(2).sum(1).mean() + (X[n:] - X[n:].mean(0)).pow(2).sum(1).mean()) / 2
    assert float(result.separation[1, 0]) == pytest.approx(float((X[:n].mean(0) - X[n:].mean(0)).pow(2).sum()
                                                                / spread), rel=1e-5)
    assert float(result.separation[1, 0]) > 10 * float(result.separation[0].max())
    constant = torch.tensor([[[1.0, 0]], [[1.0, 0]], [[0.0, 1]], [[0.0, 1]]])  # no spread: capped, not infinite
    assert separation(constant, 2).tolist() == [pytest.approx(2e12)]


def test_discrete_sae_refuses_a_dictionary_for_another_model_or_hook(demo_model, setup, tiny_model, tmp_path: Path):
    task, _ = setup
    other_hook = create("relu_unitnorm", 128, 16, hook_in="blocks.0.hook_resid_post")
    with pytest.raises(InterpError, match="per-head outputs"):
        discrete_sae(demo_model, task, dictionary=other_hook)
    other_model = create("relu_unitnorm", 128, 16, hook_in=HEAD_OUTPUT_HOOK, model_name="tiny",
                         model_fingerprint=tiny_model.info.fingerprint)
    save_dictionary(other_model, tmp_path / "other")
    with pytest.raises(InterpError, match="trained on model 'tiny'"):
        discrete_sae(demo_model, task, dictionary=tmp_path / "other")


def test_ground_truth_from_a_card_and_the_literature(demo_model, tmp_path: Path):
    from interp.circuits.truth import card_ground_truth, literature_ground_truth

    heads = [{"layer": layer, "head": h, "previous_token": 0.9 if (layer, h) == (0, 3) else 0.05,
              "induction": 0.6 if (layer, h) == (1, 1) else 0.01} for layer in range(2) for h in range(4)]
    truth = card_ground_truth({"heads": heads})
    assert truth.nodes == {"a0.h3", "a1.h1"} and truth.edges is None and truth.node_kinds == ("head",)
    with pytest.raises(InterpError, match="No head of the card reaches 0.95"):
        card_ground_truth({"heads": heads}, threshold=0.95)
    (tmp_path / "zoo_card.json").write_text('{"induction_scores": [[0.01]]}')
    with pytest.raises(InterpError, match="no per-head previous_token/induction scores"):
        card_ground_truth(tmp_path / "zoo_card.json")
    with pytest.raises(InterpError, match="12 layers x 12 heads; 'demo' has 2 x 4"):
        literature_ground_truth("ioi", demo_model)
