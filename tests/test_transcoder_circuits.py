"""Transcoder circuits and attention-SAE DFA: every decomposition sums exactly, on per-layer transcoders, skip
transcoders, a cross-layer transcoder and partial coverage; the path search recovers planted paths."""

from __future__ import annotations

import pytest
import torch
from transcoders import D, N, clt, per_layer, randomised

from interp.circuits.decompose import Site, child, decompose, deembedding, pullback
from interp.circuits.dfa import attention_dfa, attention_feature_root, recursive_dfa
from interp.circuits.pathsearch import feature_root, greedy_paths, logit_root, paths_graph, vector_root
from interp.circuits.replacement import TranscoderSet, trace
from interp.dictionaries import create
from interp.errors import InterpError

TORCH_THREADS = 1  # see conftest.py
PROMPT = "def add(a, b):\n    return a + b\n"


SETUPS = {
    "relu transcoders on resid_mid": lambda fp: per_layer("transcoder", fp, reads="hook_resid_mid"),
    "skip transcoders": lambda fp: per_layer("skip_transcoder", fp, k=4),
    "jumprelu transcoder, layer 1 only": lambda fp: per_layer("jumprelu", fp, layers=(1,), transcoder=True),
    "cross-layer transcoder": lambda fp: [clt(fp)],
}


def _close(got: float, want: float, rel: float = 1e-4) -> bool:
    return abs(got - want) <= rel * max(1.0, abs(want))


def _check_children(model, tr, dec) -> int:
    """Every term with a child: the child's decomposition plus its bias sums to the term. Returns the count."""
    comps, values = dec.terms(leaves=True)
    checked = 0
    for comp, value in zip(comps, values.tolist()):
        c = child(model, tr, dec, comp)
        if c is None:
            continue
        sub = decompose(model, tr, c.vector, c.site)
        assert _close(sub.total() + c.bias_value, value), (comp, sub.total() + c.bias_value, value)
        checked += 1
    return checked


@pytest.mark.parametrize("setup", sorted(SETUPS))
def test_decompositions_sum_exactly_to_pre_activations_and_logits(tiny_lm, setup):
    ts = TranscoderSet(SETUPS[setup](tiny_lm.info.fingerprint), tiny_lm)
    tr = trace(tiny_lm, PROMPT, ts)
    t = len(tr.tokens) - 1
    layer = ts.layers[-1]
    feature = int(tr.features[layer].row(t).argmax())
    root = feature_root(tiny_lm, tr, layer, feature, t)
    x = tr.acts[ts.input_hook(layer)][t]
    assert root.activation == pytest.approx(float(ts.encode(layer, x)[feature]), abs=1e-6) and root.activation > 0
    assert root.value == pytest.approx(root.activation, rel=1e-5), "an active feature's value is its pre-activation"
    dec = decompose(tiny_lm, tr, root.vector, root.site)
    assert _close(dec.total() + root.bias, root.value)
    assert _check_children(tiny_lm, tr, dec) > 10
    logits = tiny_lm.forward(tr.tokens[None])[0, t]
    lr = logit_root(tiny_lm, tr, 5, t, other=7)
    assert _close(lr.value, float(logits[5] - logits[7]))
    ldec = decompose(tiny_lm, tr, lr.vector, lr.site)
    assert _close(ldec.total() + lr.bias, lr.value)
    _check_children(tiny_lm, tr, ldec)


@pytest.mark.parametrize("raw", [True, False])
def test_path_graph_incoming_edges_sum_to_every_expanded_node(tiny_lm, raw, tmp_path):
    ts = TranscoderSet([clt(tiny_lm.info.fingerprint)], tiny_lm)
    tr = trace(tiny_lm, PROMPT, ts)
    search = greedy_paths(tiny_lm, tr, logit_root(tiny_lm, tr, 5), num_iters=3, num_branches=4, raw=raw)
    assert [len(level) for level in search.paths] == [4, 4, 4]
    assert all(len(p) == i + 2 for i, level in enumerate(search.paths) for p in level)
    capped = 0
    for path in search.all_paths():  # a logit root has no activation: the path's features set the cap
        above = [abs(n.value) for n in path[1:-1] if n.component.kind == "feature"]
        if above and not raw:
            assert abs(path[-1].score) <= min(above) + 1e-6
            capped += abs(path[-1].value) > min(above)
        assert raw or not above or path[-1].score == max(-min(above), min(min(above), path[-1].value))
    assert raw or capped, "some contribution was capped"
    graph = paths_graph(tiny_lm, tr, search)  # a CircuitGraph checks that edges run forward
    incoming: dict[str, float] = {}
    for e in graph.edges:
        incoming[e.target] = incoming.get(e.target, 0.0) + e.score
    scores = graph.node_scores()
    assert incoming and all(_close(v, scores[k]) for k, v in incoming.items())
    assert _close(scores[search.root.id], search.root.value)
    assert {n.kind for n in graph.nodes} >= {"error", "bias", "pruned", "logit"}
    from interp.circuits.graph import load_graph, save_graph

    again = load_graph(save_graph(graph, tmp_path / "graph.json"))
    assert again.node_scores() == scores and len(again.edges) == len(graph.edges)


def test_pullbacks_are_the_input_invariant_part_of_the_attributions(tiny_lm):
    cross = clt(tiny_lm.info.fingerprint, skip=False)
    ts = TranscoderSet([cross], tiny_lm)
    tr = trace(tiny_lm, PROMPT, ts)
    e = torch.randn(D, generator=torch.Generator().manual_seed(3))
    dec = decompose(tiny_lm, tr, e, Site("pre", 2, 4))
    for layer in (0, 1):
        p = pullback(tr, e, layer, below=2)
        W = cross.W_dec.detach().view(2, N, 2, D)[layer] / cross.out_scale[None, :, None]
        torch.testing.assert_close(p, (W @ e).sum(1), rtol=1e-5, atol=1e-6)  # summed over both target layers
        torch.testing.assert_close(dec.features[layer], tr.features[layer].row(4) * p)
    assert deembedding(tiny_lm, e).shape == (tiny_lm.info.d_vocab,)


def test_attention_dfa_by_head_and_source_sums_to_the_pre_activation(tiny_lm):
    sae = randomised(create("relu", D, 64, hook_in="blocks.1.attn.hook_z", normalization="scalar",
                             model_fingerprint=tiny_lm.info.fingerprint), scale=0.2)
    ts = TranscoderSet(per_layer("transcoder", tiny_lm.info.fingerprint, layers=(0,)), tiny_lm)
    tr = trace(tiny_lm, PROMPT, ts)
    t = 9
    z = tr.acts["blocks.1.attn.hook_z"][t]  # (H, d_head)
    pre = sae.pre_acts(z.reshape(1, -1) * sae.in_scale)[0].detach()
    W = sae.W_enc.detach() * sae.in_scale
    for feature in range(6):
        dfa = attention_dfa(tiny_lm, tr, sae, feature, t)
        assert _close(dfa.pre_activation, float(pre[feature]))
        assert _close(float(dfa.by_head_source.sum()) + dfa.bias, float(pre[feature]), rel=1e-5)
        torch.testing.assert_close(dfa.by_head, (z * W[:, feature].view(4, -1)).sum(1), rtol=1e-4, atol=1e-6)
        for s in range(t + 1):
            for head in (None, 2):
                dec, value_bias = recursive_dfa(tiny_lm, tr, sae, feature, t, s, head=head)
                want = dfa.by_source[s] if head is None else dfa.by_head_source[head, s]
                assert _close(dec.total() + value_bias, float(want)), (feature, s, head)
    root = attention_feature_root(tiny_lm, tr, sae, 0, t)
    search = greedy_paths(tiny_lm, tr, root, num_iters=2, num_branches=3, raw=True)
    assert all(p[1].component.kind == "head" and p[1].component.layer == 1 for p in search.paths[0])


def test_bad_inputs_are_refused(tiny_model, tmp_path):
    fp = tiny_model.info.fingerprint
    wrong = create("transcoder", D, N, hook_in="blocks.0.ln2.hook_normalized", hook_out="blocks.1.hook_mlp_out")
    with pytest.raises(InterpError, match="hook pair"):
        TranscoderSet([wrong], tiny_model)
    other = per_layer("transcoder", "another-model")
    with pytest.raises(InterpError, match="trained on model"):
        TranscoderSet(other, tiny_model)
    with pytest.raises(InterpError, match="pre-activation"):
        TranscoderSet(per_layer("gated", fp, layers=(0,), transcoder=True), tiny_model)
    with pytest.raises(InterpError, match="replace the MLP of layer 0"):
        TranscoderSet(per_layer("transcoder", fp, layers=(0,)) * 2, tiny_model)
    with pytest.raises(InterpError, match="at most 64"):
        trace(tiny_model, torch.zeros(65, dtype=torch.long))
    ts = TranscoderSet(per_layer("transcoder", fp), tiny_model)
    tr = trace(tiny_model, PROMPT, ts)
    with pytest.raises(InterpError, match="outside the prompt"):
        feature_root(tiny_model, tr, 1, 0, 40)
    with pytest.raises(InterpError, match="hook_resid_pre"):
        vector_root(tiny_model, tr, "blocks.0.hook_mlp_out", torch.ones(D))
    with pytest.raises(InterpError, match="attn.hook_z"):
        attention_dfa(tiny_model, tr, per_layer("transcoder", fp, layers=(0,))[0], 0)
    with pytest.raises(InterpError, match="num_iters"):
        greedy_paths(tiny_model, tr, logit_root(tiny_model, tr, 1), num_iters=0)


# ---- planted paths (the `planted` fixture is in conftest.py) ----------------------------------------
def _best(search, depth):
    return [n.component.id for n in search.paths[depth - 1][0]]


def test_path_search_recovers_planted_paths_within_and_across_positions(planted):
    model, ts, X = planted
    tr = trace(model, PROMPT, ts)
    assert int(tr.tokens[1]) == X and tr.features[0].to_dense()[:, 0].nonzero().flatten().tolist() == [1]
    t = len(tr.tokens) - 1
    across = greedy_paths(model, tr, feature_root(model, tr, 1, 0, t), num_iters=2, num_branches=3)
    assert _best(across, 2) == [f"f1.0@{t}", f"a1.h0@1>{t}", "embed@1"]
    within = greedy_paths(model, tr, feature_root(model, tr, 1, 1, 1), num_iters=2, num_branches=3)
    assert _best(within, 2) == ["f1.1@1", "f0.0@1", "embed@1"]
    assert int(deembedding(model, ts.encoder(0)[0][:, 0]).argmax()) == X




def test_transcoder_paths_command_writes_a_graph(tiny_model_dir, tiny_model, tmp_path, capsys):
    import json

    from cli.main import main
    from interp.dictionaries import save_dictionary

    dirs = [str(save_dictionary(d, tmp_path / f"tc{i}"))
            for i, d in enumerate(per_layer("skip_transcoder", tiny_model.info.fingerprint, k=4))]
    common = ["circuit", "transcoder-paths", "--model", str(tiny_model_dir), "--transcoders", *dirs,
              "--prompt", PROMPT]
    assert main([*common, "--out", str(tmp_path / "logit"), "--num-iters", "2", "--num-branches", "3"]) == 0
    out = capsys.readouterr().out
    graph = json.loads((tmp_path / "logit" / "graph.json").read_text())
    assert graph["format"] == "interp-circuit-graph" and graph["metadata"]["method"] == "transcoder-paths"
    assert "paths of length 2:" in out and graph["metadata"]["root"] in {n["id"] for n in graph["nodes"]}
    assert main([*common, "--out", str(tmp_path / "f"), "--root", "feature", "--layer", "1", "--feature", "3",
                 "--position", "5", "--raw"]) == 0
    assert "L1 feature 3 @ 5" in capsys.readouterr().out
    assert main([*common, "--out", str(tmp_path / "x"), "--root", "feature", "--feature", "1"]) == 2
    assert "needs --layer" in capsys.readouterr().err
    assert main([*common, "--out", str(tmp_path / "x"), "--token", "def add"]) == 2
    assert "give one token" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()

@pytest.mark.parametrize("setup", ["skip transcoders", "cross-layer transcoder"])
def test_replacement_model_logits(tiny_lm, setup):
    from interp.circuits.replacement import replacement_logits
    from interp.training.evals import _run_spliced

    dictionaries = SETUPS[setup](tiny_lm.info.fingerprint)
    ts = TranscoderSet(dictionaries, tiny_lm)
    toks = tiny_lm.to_tokens([PROMPT, PROMPT.upper()])
    clean = tiny_lm.forward(toks)
    torch.testing.assert_close(replacement_logits(tiny_lm, ts, toks, with_error=True), clean, rtol=1e-4, atol=1e-4)
    replaced = replacement_logits(tiny_lm, ts, toks)
    assert (replaced - clean).abs().max() > 1e-2, "the transcoders are not the MLPs"
    if setup == "cross-layer transcoder":  # the evals' splice of a causal dictionary is the same closed loop
        mask = torch.ones(toks.shape, dtype=torch.bool)
        torch.testing.assert_close(_run_spliced(dictionaries[0], tiny_lm, toks, mask, ablate=False), replaced,
                                   rtol=1e-4, atol=1e-4)


def test_mean_attribution_averages_the_decomposition_over_the_tokens_where_the_feature_fires(tiny_lm):
    from interp.circuits.mean_attribution import mean_attribution

    ts = TranscoderSet([clt(tiny_lm.info.fingerprint)], tiny_lm)
    prompts = [PROMPT, "class Point:\n    x = 1\n"]
    toks = torch.nn.utils.rnn.pad_sequence([tiny_lm.to_tokens(p)[0] for p in prompts], batch_first=True)
    toks = toks[:, :12]
    feature = int(trace(tiny_lm, toks[0], ts).features[1].to_dense()[1:].sum(0).argmax())
    result = mean_attribution(tiny_lm, ts, 1, feature, 0, toks, quantile=0.0)
    terms = []
    for row in toks:
        tr = trace(tiny_lm, row, ts)
        root_vec = None
        for t in range(1, len(row)):
            if tr.features[1].at(t, feature) > 0:
                root_vec = feature_root(tiny_lm, tr, 1, feature, t)
                terms.append(decompose(tiny_lm, tr, root_vec.vector, root_vec.site).features[0])
    assert result.n_tokens == len(terms) > 0
    torch.testing.assert_close(result.mean, torch.stack(terms).mean(0), rtol=1e-4, atol=1e-6)
    assert 0.0 <= result.top_k_overlap(5) <= 1.0
    with pytest.raises(InterpError, match="write to no MLP below"):
        mean_attribution(tiny_lm, ts, 0, feature, 1, toks)
