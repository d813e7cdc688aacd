"""Attribution graphs: every adjacency row sums exactly to its target (with error nodes the replacement model's
logits are the model's), pruning keeps exact bookkeeping, the planted path is recovered, bad inputs are refused; on
per-layer, skip and cross-layer transcoders, the demo model with trained transcoders and a GPT-2-small-shaped
model."""

from __future__ import annotations

import pytest
import torch
from transcoders import D, N, clt, per_layer

from interp.circuits.attribution import Linearised, Target, active_nodes
from interp.circuits.decompose import Site, child, decompose
from interp.circuits.graph_api import AttributionGraphConfig, attribution_graph
from interp.circuits.replacement import TranscoderSet, trace
from interp.dictionaries import create
from interp.errors import InterpError

TORCH_THREADS = 1  # see conftest.py
PROMPT = "def add(a, b):\n    return a + b\n"


SETUPS = {
    "skip transcoders": lambda fp: per_layer("skip_transcoder", fp, k=4),
    "jumprelu transcoder, layer 1 only": lambda fp: per_layer("jumprelu", fp, layers=(1,), transcoder=True),
    "cross-layer transcoder": lambda fp: [clt(fp)],
}


def _all_targets(engine, nodes):
    feats = [Target("feature", int(l), int(p), int(f)) for l, p, f in nodes.features]
    P = nodes.n_positions
    return feats + [Target("logit", engine.tr.n_layers, P - 1, int(t)) for t in nodes.logit_tokens]


def _check_rows(model, ts, prompt, demean, rel=1e-4):
    tr = trace(model, prompt, ts)
    nodes = active_nodes(model, tr, max_n_logits=5, desired_logit_prob=0.99)
    engine = Linearised(model, tr, nodes, demean=demean)
    targets = _all_targets(engine, nodes)
    rows = engine.rows(targets)
    got = rows.edges.sum(1) + rows.bias
    scale = rows.values.abs().clamp(min=1.0)
    assert ((got - rows.values).abs() / scale).max() < rel
    # the targets' values are the model's: active features' pre-activations and the model's own logits
    n_f = nodes.n_features
    torch.testing.assert_close(rows.values[:n_f], nodes.activations, rtol=1e-4, atol=1e-5)
    logits = model.forward(tr.tokens[None])[0, -1].float()
    want = (logits - logits.mean() if demean else logits)[nodes.logit_tokens]
    torch.testing.assert_close(rows.values[n_f:], want, rtol=1e-4, atol=1e-4)
    return tr, nodes, engine, targets, rows


@pytest.mark.parametrize("setup", sorted(SETUPS))
def test_rows_sum_exactly_and_logits_are_the_models(tiny_lm, setup):
    ts = TranscoderSet(SETUPS[setup](tiny_lm.info.fingerprint), tiny_lm)
    for demean in (True, False):
        tr, nodes, engine, targets, rows = _check_rows(tiny_lm, ts, PROMPT, demean)
    if 0 not in ts.layers:
        return
    # edges from layer-0 features into layer-1 features, by interp's decomposition (an independent computation):
    # the direct term at the target's position plus, per layer-1 head and source position, the head's child
    checked = 0
    cols = {(p, f): c for c, (l, p, f) in enumerate(nodes.features.tolist()) if l == 0}
    for r, target in enumerate(targets[: nodes.n_features]):
        if target.layer != 1 or checked >= 6:
            continue
        w, _, _ = engine.read(target)
        dec = decompose(tiny_lm, tr, w, Site("mid", 1, target.position))
        ref = torch.zeros(len(tr.tokens), ts.n_features(0))
        ref[target.position] += dec.features[0]
        for comp in dec.terms()[0]:
            if comp.kind == "head" and comp.layer == 1:
                c = child(tiny_lm, tr, dec, comp)
                ref[comp.position] += decompose(tiny_lm, tr, c.vector, c.site).features[0]
        got = torch.zeros_like(ref)
        for (p, f), c in cols.items():
            got[p, f] = rows.edges[r, c]
        torch.testing.assert_close(got, ref * (tr.features[0].to_dense() != 0), rtol=1e-4, atol=1e-5)
        checked += 1
    assert checked > 0


def test_recomputed_attention_patterns_give_the_same_rows(tiny_lm, monkeypatch):
    import interp.circuits.attribution as attribution

    monkeypatch.setattr(attribution, "_CHUNK_ROWS", 5)  # several blocks of query rows per layer
    monkeypatch.setattr(attribution, "_GATHER", 1000)  # and of active features
    ts = TranscoderSet([clt(tiny_lm.info.fingerprint)], tiny_lm)
    kept, lean = trace(tiny_lm, PROMPT, ts), trace(tiny_lm, PROMPT, ts, patterns=False)
    assert not any("hook_pattern" in h for h in lean.acts)
    nodes = active_nodes(tiny_lm, kept)
    targets = _all_targets(Linearised(tiny_lm, kept, nodes), nodes)
    want = Linearised(tiny_lm, kept, nodes).rows(targets)
    got = Linearised(tiny_lm, lean, nodes).rows(targets)
    # the lean trace runs on the module path, the kept one on the bridge (its patterns): they agree to float32 rounding
    torch.testing.assert_close(got.edges, want.edges, rtol=1e-4, atol=1e-5)


def test_graph_keeps_exact_bookkeeping_and_scores(tiny_lm, tmp_path):
    ts = TranscoderSet([clt(tiny_lm.info.fingerprint)], tiny_lm)
    cfg = AttributionGraphConfig(prompt=PROMPT, max_feature_nodes=40, row_batch_size=8)
    result = attribution_graph(tiny_lm, ts, cfg)
    g = result.graph
    assert 0 < len(result.selected) <= 40 and len(result.rows.values) == len(result.selected) + len(
        result.nodes.logit_tokens)
    incoming: dict[str, float] = {}
    for e in g.edges:
        incoming[e.target] = incoming.get(e.target, 0.0) + e.score
    targets = [n for n in g.nodes if n.kind in ("feature", "logit")]
    assert targets
    for n in targets:
        total = incoming.get(n.id, 0.0) + n.attrs["bias"] + n.attrs["rest"]
        assert abs(total - n.attrs["value"]) <= 1e-4 * max(1.0, abs(n.attrs["value"]))
    kinds = {n.kind for n in g.nodes}
    assert {"token", "logit"} <= kinds and sum(n.kind == "token" for n in g.nodes) == len(result.trace.tokens)
    meta = g.metadata
    assert 0 <= meta["replacement_score"] <= 1 and 0 <= meta["completeness_score"] <= 1
    assert meta["n_backward_rows"] == len(result.rows.values)
    loose = attribution_graph(tiny_lm, ts, AttributionGraphConfig(prompt=PROMPT, max_feature_nodes=40,
                                                                      node_threshold=1.0, edge_threshold=1.0))
    assert len(loose.graph.nodes) > len(g.nodes) and len(loose.graph.edges) > len(g.edges)
    from interp.circuits.graph import load_graph
    from interp.circuits.graph_api import save_attribution_graph

    again = load_graph(save_attribution_graph(result, tmp_path))
    assert again.node_scores() == g.node_scores() and len(again.edges) == len(g.edges)


def test_influence_ranks_rows_and_pruning_follows_circuit_tracer_rules():
    from interp.circuits.influence import find_threshold, influence, normalize, prune

    # nodes: f0, f1 (features), e0 (error), t0 (token), l0 (logit); rows: f0, f1, l0
    A = torch.tensor([[0.0, 0.0, 0.5, 2.0],   # f0 <- e0, t0
                      [3.0, 0.0, 0.0, 1.0],   # f1 <- f0, t0
                      [1.0, 4.0, 0.0, 0.0]])  # l0 <- f0, f1
    rows, seed = torch.tensor([0, 1, 4]), torch.tensor([0.0, 0, 0, 0, 1])
    I = influence(normalize(A), rows, seed)
    # l0 reads f0 0.2, f1 0.8; f1 reads f0 0.75, t0 0.25; f0 reads e0 0.2, t0 0.8
    want_f0 = 0.2 + 0.8 * 0.75
    assert I[0] == pytest.approx(want_f0) and I[1] == pytest.approx(0.8) and I[4] == 0
    assert I[2] == pytest.approx(want_f0 * 0.2) and I[3] == pytest.approx(0.8 * 0.25 + want_f0 * 0.8)
    assert float(find_threshold(torch.tensor([5.0, 3.0, 2.0]), 0.5)) == 5.0
    assert float(find_threshold(torch.tensor([5.0, 3.0, 2.0]), 0.9)) == 2.0
    p = prune(A, rows, seed, n_features=2, n_kept=2, node_threshold=0.6, edge_threshold=1.0)
    # influence f0 0.8, f1 0.8, e0 0.16: e0 falls under the 60% node threshold; token and logit always stay
    assert p.node_mask.tolist() == [True, True, False, True, True]
    assert not p.edge_mask[0, 2] and p.edge_mask[0, 3] and p.edge_mask[2, 1]


def test_bad_inputs_are_refused(tiny_model):
    fp = tiny_model.info.fingerprint
    for bad in ({"node_threshold": 0.0}, {"edge_threshold": 1.5}, {"node_threshold": -0.1}):
        with pytest.raises(InterpError, match=r"in \(0, 1\]"):
            AttributionGraphConfig(prompt="x", **bad)
    with pytest.raises(InterpError, match="prompt"):
        AttributionGraphConfig()
    with pytest.raises(InterpError, match="trained on model"):
        TranscoderSet(per_layer("transcoder", "another-model"), tiny_model)
    wrong = create("transcoder", D, N, hook_in="blocks.0.ln2.hook_normalized", hook_out="blocks.1.hook_mlp_out",
                   model_fingerprint=fp)
    with pytest.raises(InterpError, match="hook pair"):
        TranscoderSet([wrong], tiny_model)
    ts = TranscoderSet(per_layer("transcoder", fp), tiny_model)
    with pytest.raises(InterpError, match="at most 64"):
        attribution_graph(tiny_model, ts, AttributionGraphConfig(prompt=PROMPT * 8))


def test_planted_feature_path_is_recovered(planted):
    model, ts, X = planted
    tr = trace(model, PROMPT, ts)
    nodes = active_nodes(model, tr)
    engine = Linearised(model, tr, nodes)
    t = len(tr.tokens) - 1
    feats = nodes.features.tolist()
    rows = engine.rows([Target("feature", 1, 1, 1), Target("feature", 1, t, 0)])
    # f1.1@1 reads w, which only f0.0@1 writes; f1.0@t reads u, which head 1.0 writes from token X at position 1
    assert int(rows.edges[0].abs().argmax()) == feats.index([0, 1, 0])
    assert int(rows.edges[1].abs().argmax()) == nodes.token_index(1)
    assert float(rows.edges[0, feats.index([0, 1, 0])]) > 0.9 * float(rows.values[0] - rows.bias[0])
