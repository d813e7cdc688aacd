"""Attribution graphs on real shapes: the demo model with a cross-layer transcoder trained by interp's trainer, a
GPT-2-small-shaped model (d_model 768, 12 heads, 2 layers); QK attribution sums exactly to the attention score;
``interp circuit attribution-graph`` writes interp's graph and circuit-tracer's JSON, which imports back."""

from __future__ import annotations

import json

import pytest
import torch

from interp.circuits.attribution import Linearised, Target, active_nodes
from interp.circuits.graph_api import AttributionGraphConfig, attribution_graph
from interp.circuits.paths_api import TranscoderPathsConfig, transcoder_paths
from interp.circuits.qk import qk_attribution, residual_writes
from interp.circuits.replacement import TranscoderSet, trace
from interp.circuits.truth import card_ground_truth, card_path
from interp.dictionaries import create, load_dictionary
from interp.errors import InterpError

TORCH_THREADS = 1  # see conftest.py
PROMPT = "def add(a, b):\n    return a + b\n"
MLP_IN, MLP_OUT = "blocks.*.ln2.hook_normalized", "blocks.*.hook_mlp_out"


def _exact_rows(model, ts, prompt, n_rows=None):
    """Rows of (up to ``n_rows``) active features and every logit: edges + bias == value, values = the model's."""
    tr = trace(model, prompt, ts)
    nodes = active_nodes(model, tr, max_n_logits=5)
    engine = Linearised(model, tr, nodes)
    pick = torch.randperm(len(nodes.features), generator=torch.Generator().manual_seed(0))
    feats = nodes.features if n_rows is None else nodes.features[pick[:n_rows]]
    targets = [Target("feature", int(l), int(p), int(f)) for l, p, f in feats]
    targets += [Target("logit", tr.n_layers, len(tr.tokens) - 1, int(t)) for t in nodes.logit_tokens]
    rows = engine.rows(targets)
    rel = (rows.edges.sum(1) + rows.bias - rows.values).abs() / rows.values.abs().clamp(min=1.0)
    assert rel.max() < 1e-4, rel.max()
    acts = torch.tensor([tr.features[int(l)].at(int(p), int(f)) for l, p, f in feats])
    torch.testing.assert_close(rows.values[: len(feats)], acts, rtol=1e-4, atol=1e-5)
    logits = model.forward(tr.tokens[None])[0, -1].float()
    torch.testing.assert_close(rows.values[len(feats):], (logits - logits.mean())[nodes.logit_tokens], rtol=1e-4,
                               atol=1e-4)
    return tr, nodes


@pytest.fixture(scope="module")
def demo_clt(demo_model, corpus_dir, tmp_path_factory):
    from cli.main import main

    out = tmp_path_factory.mktemp("demo-clt")
    rc = main(["train", "--model", "demo", "--corpus", str(corpus_dir), "--ctx-len", "32", "--architecture", "clt",
               "--hook", MLP_IN, "--hook-out", MLP_OUT, "--expansion", "2", "--n-tokens", "8192", "--lr", "3e-3",
               "--batch-size", "128", "--name", "clt", "--out", str(out), "--no-progress"])
    assert rc == 0
    return out / "clt"


def test_demo_model_with_a_trained_clt_is_exact(demo_model, demo_clt, tmp_path):
    ts = TranscoderSet([load_dictionary(demo_clt)], demo_model)
    tr, nodes = _exact_rows(demo_model, ts, PROMPT)
    assert nodes.n_features > 20
    from interp.circuits.replacement import replacement_logits

    torch.testing.assert_close(replacement_logits(demo_model, ts, tr.tokens[None], with_error=True),
                               demo_model.forward(tr.tokens[None]), rtol=1e-4, atol=1e-4)
    result = attribution_graph(demo_model, ts, AttributionGraphConfig(prompt=PROMPT, max_feature_nodes=64))
    meta = result.graph.metadata
    assert 0 < meta["replacement_score"] <= 1 and 0 < meta["completeness_score"] <= 1
    assert any(n.kind == "feature" for n in result.graph.nodes)


@pytest.fixture(scope="module")
def gpt2_small_shaped(tiny_model_dir, tmp_path_factory):
    """GPT-2 small's widths (d_model 768, 12 heads of 64, d_mlp 3072) with 2 layers, random weights."""
    from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel

    from interp.model import load_model

    torch.manual_seed(0)
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    hf = GPT2LMHeadModel(GPT2Config(n_layer=2, n_embd=768, n_head=12, vocab_size=len(tok), n_positions=256,
                                    bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id))
    out = tmp_path_factory.mktemp("gpt2-small-shaped")
    hf.save_pretrained(out)
    tok.save_pretrained(out)
    return load_model(str(out))


def test_gpt2_small_shaped_model_is_exact(gpt2_small_shaped):
    model = gpt2_small_shaped
    fp = model.info.fingerprint
    g = torch.Generator().manual_seed(1)
    tcs = []
    for layer in range(2):
        d = create("skip_transcoder", 768, 1536, hook_in=f"blocks.{layer}.ln2.hook_normalized",
                   hook_out=f"blocks.{layer}.hook_mlp_out", normalization="none", model_fingerprint=fp, k=32)
        with torch.no_grad():
            for p in d.parameters():
                p.copy_(torch.randn(p.shape, generator=g) * 0.05)
        tcs.append(d)
    _exact_rows(model, TranscoderSet(tcs, model), PROMPT * 3, n_rows=64)


def _clt(fp):
    d = create("clt", 64, 32, hook_in=MLP_IN, hook_out=MLP_OUT, hooks_in=tuple(MLP_IN.replace("*", str(i))
                                                                                for i in range(2)),
               hooks_out=tuple(MLP_OUT.replace("*", str(i)) for i in range(2)), normalization="none", skip=True,
               model_fingerprint=fp)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in d.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.3)
        d.log_threshold.fill_(-2.0)
    return d


def test_qk_attribution_sums_to_the_attention_score(tiny_lm):
    ts = TranscoderSet([_clt(tiny_lm.info.fingerprint)], tiny_lm)
    tr = trace(tiny_lm, PROMPT, ts)
    for layer in range(3):
        comps, writes = residual_writes(tiny_lm, tr, layer, 5)
        assert len(comps) == len(writes)
        torch.testing.assert_close(writes.sum(0), tr.resid("pre", layer)[5], rtol=1e-4, atol=1e-4)
    t = 9
    for layer in (0, 1):
        for head in (0, 3):
            results = [qk_attribution(tiny_lm, tr, layer, head, t, s) for s in range(t + 1)]
            for r in results:
                assert abs(float(r.pairs.sum()) - r.score) <= 1e-4 * max(1.0, abs(r.score))
            # the scores are the model's own: their softmax is the traced attention pattern
            pattern = tr.acts[f"blocks.{layer}.attn.hook_pattern"][head, t, : t + 1]
            torch.testing.assert_close(torch.tensor([r.score for r in results]).softmax(0), pattern, atol=1e-5,
                                       rtol=1e-4)
    r = qk_attribution(tiny_lm, tr, 1, 2, t, 4)
    assert r.pairs.shape == (len(r.query), len(r.key)) and r.query[-1].kind == "q_bias"
    assert any(c.kind == "feature" for c in r.query) and any(c.kind == "head" for c in r.key)
    top = r.top(3)
    assert abs(top[0][2]) >= abs(top[1][2]) >= abs(top[2][2])
    with pytest.raises(InterpError, match="key_position <= query_position"):
        qk_attribution(tiny_lm, tr, 1, 0, 3, 5)
    with pytest.raises(InterpError, match="No head 9"):
        qk_attribution(tiny_lm, tr, 1, 9, 5, 3)


def test_rotary_models_rotate_every_term_and_bias_free_views_are_zero(tiny_llama, tiny_llama_dir, tmp_path,
                                                                       monkeypatch):
    """A bias-free Llama: zero bias views of TransformerLens's shapes; with grouped-query attention, QK attribution
    and recomputed patterns (from the traced rotated queries and keys) give the traced pattern; without those, or for
    a model with neither learned nor rotary positions, a clear refusal."""
    from conftest import make_tiny_llama

    from interp.circuits.attribution import attention_pattern
    from interp.model import load_model, rotate

    m = tiny_llama
    assert m.rotary and m.W_pos is None
    shapes = {"b_Q": (2, 4, 8), "b_K": (2, 4, 8), "b_V": (2, 4, 8), "b_O": (2, 32), "b_U": (m.info.d_vocab,)}
    for name, shape in shapes.items():
        bias = getattr(m, name)
        assert bias.shape == shape and not bias.any(), name
    gqa = load_model(str(make_tiny_llama(tmp_path / "gqa", tiny_llama_dir, kv_heads=2, seed=1)))
    assert gqa.W_K.shape[1] == 2 and gqa.b_K.shape == (2, 2, 8)
    tr = trace(gqa, PROMPT, TranscoderSet([_clt(gqa.info.fingerprint)], gqa))
    lean = trace(gqa, PROMPT, TranscoderSet([_clt(gqa.info.fingerprint)], gqa), patterns=False)
    t = 9
    for head in (1, 2):  # they read key-value heads 0 and 1
        results = [qk_attribution(gqa, lean, 1, head, t, s) for s in range(t + 1)]
        assert all(abs(float(r.pairs.sum()) - r.score) <= 1e-4 * max(1.0, abs(r.score)) for r in results)
        pattern = tr.acts["blocks.1.attn.hook_pattern"][head, t, : t + 1]
        torch.testing.assert_close(torch.tensor([r.score for r in results]).softmax(0), pattern, atol=1e-5,
                                   rtol=1e-4)
        torch.testing.assert_close(torch.tensor([r.pattern for r in results]), pattern, atol=1e-5, rtol=1e-4)
    x, angles = torch.randn(3, 8), torch.tensor([0.3, 2.0]).repeat(2)  # feature i pairs with i + 2
    half = rotate(x, angles.cos(), angles.sin())  # partial rotary: the first 4 features rotate, the rest stay
    assert torch.equal(half[:, 4:], x[:, 4:]) and torch.allclose(half.norm(dim=1), x.norm(dim=1), atol=1e-5)
    del lean.acts["blocks.1.attn.hook_rot_q"]
    with pytest.raises(InterpError, match="rotated queries and keys"):
        attention_pattern(gqa, lean, 1, 0, 4, 4)
    monkeypatch.setattr(type(m), "rotary", property(lambda self: False))  # as if positions were, e.g., ALiBi
    with pytest.raises(InterpError, match="learned or rotary"):
        qk_attribution(m, trace(m, PROMPT), 1, 0, 4, 2)


def test_command_writes_interp_and_circuit_tracer_graphs_that_import_back(tiny_model_dir, tiny_model, tmp_path,
                                                                           capsys):
    from cli.main import main
    from interp.circuits.graph import load_graph
    from interp.dictionaries import save_dictionary
    from interp.formats.circuit_tracer import import_circuit_tracer

    clt = str(save_dictionary(_clt(tiny_model.info.fingerprint), tmp_path / "clt"))
    out = tmp_path / "graph"
    common = ["circuit", "attribution-graph", "--model", str(tiny_model_dir), "--transcoders", clt, "--prompt", PROMPT]
    assert main([*common, "--max-feature-nodes", "32", "--out", str(out), "--circuit-tracer", "--slug", "tiny",
                 "--qk", "1", "0", "9", "3"]) == 0
    text = capsys.readouterr().out
    assert "replacement score" in text and "tiny.json" in text
    graph = load_graph(out / "graph.json")
    assert graph.metadata["method"] == "attribution-graph" and graph.metadata["n_feature_rows"] <= 32
    assert graph.metadata["qk"]["layer"] == 1 and len(graph.metadata["qk"]["top"]) == 20
    ct = json.loads((out / "tiny.json").read_text())
    assert set(ct) == {"metadata", "qParams", "nodes", "links"} and ct["metadata"]["schema_version"] == 1
    fields = {"node_id", "feature", "layer", "ctx_idx", "feature_type", "token_prob", "is_target_logit", "run_idx",
              "reverse_ctx_idx", "jsNodeId", "clerp", "influence", "activation"}
    assert all(set(n) == fields for n in ct["nodes"])
    kinds = {n["feature_type"] for n in ct["nodes"]}
    assert {"cross layer transcoder", "embedding", "logit"} <= kinds
    feature = next(n for n in ct["nodes"] if n["feature_type"] == "cross layer transcoder")
    layer, index, pos = (int(v) for v in feature["node_id"].split("_"))
    assert feature["feature"] == (layer + index) * (layer + index + 1) // 2 + index and feature["ctx_idx"] == pos
    assert sum(n["is_target_logit"] for n in ct["nodes"]) == 1
    index_file = json.loads((out / "graph-metadata.json").read_text())
    assert [g["slug"] for g in index_file["graphs"]] == ["tiny"]
    back = import_circuit_tracer(out / "tiny.json")
    assert {n.id for n in back.nodes} == {n.id for n in graph.nodes}
    assert {e.key: e.score for e in back.edges} == {e.key: e.score for e in graph.edges}
    assert main([*common, "--out", str(tmp_path / "bad"), "--edge-threshold", "0"]) == 2
    assert "in (0, 1]" in capsys.readouterr().err and not (tmp_path / "bad").exists()


REPEATED = "x = alpha_beta + gamma_delta * epsilon_zeta; y = alpha_beta + gamma"
"""The second half repeats the first: after the last ``ma`` the answer is the token that followed ``ma`` before."""


def test_demo_paths_run_through_the_heads_of_its_card(demo_model, demo_clt):
    """Issue 12's ground truth on the demo model: the top logit's largest head path is an induction head of the
    per-head card reading the token after the earlier occurrence, and a previous-token head of the card feeds a
    feature on the last token."""
    truth = card_ground_truth(card_path("demo")).nodes  # heads with a previous-token or induction score >= 0.3
    ts = TranscoderSet([load_dictionary(demo_clt)], demo_model)
    result = transcoder_paths(demo_model, ts, TranscoderPathsConfig(prompt=REPEATED))
    tokens = demo_model.token_strings(result.trace.tokens.tolist())
    last = len(tokens) - 1
    earlier = max(i for i in range(last) if tokens[i] == tokens[last])
    heads = [p[-1].component for p in result.search.paths[0] if p[-1].component.kind == "head"]
    assert heads, "no head path among the largest paths of length 1"
    top = heads[0]
    assert f"a{top.layer}.h{top.index}" in truth and top.layer == 1
    assert (top.position, top.target) == (earlier + 1, last)
    deeper = [p[-1].component for p in result.search.all_paths() if p[-1].component.kind == "head"
              and p[-1].component.layer == 0]
    assert any(f"a0.h{c.index}" in truth and c.position == c.target - 1 for c in deeper)


def test_demo_induction_keys_are_written_by_the_previous_token_head(demo_model):
    """QK attribution on the demo's induction heads finds K-composition: on ``[BOS] r r`` (random tokens), the score
    of each card induction head from the second ``r_i`` to the ``r_(i+1)`` after the first is fed, among all heads'
    writes at the key position, most by the card's previous-token head, and on the query side by ``r_i``'s own
    embedding."""
    from interp.io import read_json

    heads = read_json(card_path("demo"))["heads"]
    prev = max((h for h in heads if h["layer"] == 0), key=lambda h: h["previous_token"])
    induction = [h for h in heads if h["induction"] >= 0.5]
    assert prev["previous_token"] >= 0.5 and induction
    n = 16
    r = torch.randint(100, demo_model.info.d_vocab, (n,), generator=torch.Generator().manual_seed(1))
    tr = trace(demo_model, torch.cat([torch.tensor([demo_model.info.bos_token_id]), r, r]))
    for h in induction:
        for i in range(1, n - 1, 3):
            a = qk_attribution(demo_model, tr, h["layer"], h["head"], 1 + n + i, 2 + i)
            key, query = a.pairs.sum(0), a.pairs.sum(1)
            assert float(key.sum()) == pytest.approx(a.score, rel=1e-4) and a.pattern > 0.3
            by_head = sorted(((float(key[j]), c.layer, c.index) for j, c in enumerate(a.key) if c.kind == "head"),
                             reverse=True)
            assert by_head[0][1:] == (prev["layer"], prev["head"]) and by_head[0][0] > 1.5 * abs(by_head[1][0])
            embed = next(j for j, c in enumerate(a.query) if c.kind == "embed")
            assert a.query[embed].index == int(r[i]) and query[embed] > 0
