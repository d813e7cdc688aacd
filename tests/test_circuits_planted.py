"""Every method recovers the circuit planted in a hand-set model (interp.zoo.planted): node ROC AUC >= 0.9 for
every method, edge ROC AUC >= 0.9 for the edge methods, and the planted edges alone are a faithful circuit."""

from __future__ import annotations

import pytest
import torch

import interp
from interp.circuits.components import ComponentGraph
from interp.circuits.config import METHODS, NODE_METHODS
from interp.circuits.evaluate import edge_auc, faithfulness, ground_truth, node_auc
from interp.circuits.generators import induction_task
from interp.circuits.tasks import check_task
from interp.zoo.planted import PLANTED, write_planted_model

TORCH_THREADS = 1  # see conftest.py

# The corruption replaces the first copy's tokens and keeps every position, so three planted edges carry the
# same values in clean and corrupted runs and no patching method can see them: L0H1's query and key read only
# position embeddings, and L1H2's query at the answer position reads a token the two prompts share.
INVISIBLE = {("embed", "L0H1", "q"), ("embed", "L0H1", "k"), ("embed", "L1H2", "q")}


@pytest.fixture(scope="module")
def planted(tmp_path_factory: pytest.TempPathFactory) -> interp.Model:
    return interp.load_model(str(write_planted_model(tmp_path_factory.mktemp("planted") / "model")))


@pytest.fixture(scope="module")
def task(planted):
    return induction_task(planted, n_prompts=32, seq_len=8, seed=0)


@pytest.fixture(scope="module")
def truth():
    heads = [n for n in PLANTED.nodes if n not in ("embed", "logits")]
    edges = [e for e in PLANTED.edges if e not in INVISIBLE]
    return ground_truth(heads, edges, name="planted")


def test_the_planted_edges_alone_are_faithful(planted, task, truth):
    cg = ComponentGraph.of(planted)
    base = check_task(planted, task)
    assert base.m_clean.mean() > 19 and base.m_corrupted.abs().mean() < 0.5  # it copies, and only when it can
    index = {(cg.src_names[s], *cg.dst_names[d]): (s, d) for s, d in cg.edge_index().tolist()}
    key = {f"{s}->{t}" + (f"<{slot}>" if slot else ""): where for (s, t, slot), where in index.items()}
    circuit = torch.zeros(cg.n_src, cg.n_dst, dtype=torch.bool)
    for k in truth.edges or ():
        circuit[key[k]] = True
    keep = torch.stack([circuit, cg.valid & ~circuit])
    scores = faithfulness(planted, task, base, keep)
    assert scores[0] > 0.99 and abs(scores[1]) < 0.05


@pytest.mark.parametrize("method", METHODS)
def test_every_method_recovers_the_planted_circuit(method, planted, task, truth):
    options = {"acdc_thresholds": (1e-3, 1e-2, 0.1, 1.0)} if method == "acdc" else {}
    graph = interp.find_circuit(planted, task, method, evaluate=False, **options)
    assert node_auc(graph, truth) >= 0.9, method
    if method not in NODE_METHODS:
        assert edge_auc(graph, truth) >= 0.9, method
        best = max(abs(e.score or 0.0) for e in graph.edges)
        assert any(e.key in (truth.edges or ()) for e in graph.edges if abs(e.score or 0.0) == best)
    assert graph.metadata["runtime_s"] > 0
