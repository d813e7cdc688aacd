"""What keeps an attribution graph's memory linear in the prompt (issue 12, item 4): the trace of a model with
learned positions runs on the module path (fused attention, no n_heads x P x P pattern) and records what the
bridge records; rows computed in position-sorted batches equal one pass over every target; a rotary model's trace
keeps its rotated queries and keys instead of its patterns, and its rows equal those from kept patterns; feature
activations are kept as their active entries only."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from transcoders import D, clt, per_layer

from interp.circuits.attribution import Linearised, Target, active_nodes
from interp.circuits.graph_api import AttributionGraphConfig, _compute_rows, attribution_graph
from interp.circuits.replacement import SparseActs, TranscoderSet, trace

TORCH_THREADS = 1  # see conftest.py
PROMPT = "def add(a, b):\n    return a + b\n\nclass Point:\n    pass\n"


def test_the_lean_trace_runs_on_the_module_path_and_equals_the_bridge(tiny_model):
    ts = TranscoderSet([clt(tiny_model.info.fingerprint)], tiny_model)
    lean = trace(tiny_model, PROMPT, ts, patterns=False)
    hooks = list(lean.acts)
    assert {"ln_final.hook_scale", "blocks.1.ln2.hook_scale", "blocks.0.attn.hook_v", "hook_pos_embed"} <= set(hooks)
    assert tiny_model.capture_path(hooks) == "modules"
    bridge = tiny_model.capture(lean.tokens[None], hooks, path="bridge").acts
    for h in hooks:
        torch.testing.assert_close(lean.acts[h], bridge[h][0].float(), rtol=1e-5, atol=2e-6, msg=h)
    # with patterns the trace needs the bridge (the module path's fused attention never forms them)
    assert tiny_model.capture_path([*hooks, "blocks.0.attn.hook_pattern"]) == "bridge"


def test_rows_in_position_batches_equal_one_pass(tiny_model):
    ts = TranscoderSet([clt(tiny_model.info.fingerprint)], tiny_model)
    tr = trace(tiny_model, PROMPT, ts, patterns=False)
    nodes = active_nodes(tiny_model, tr, max_n_logits=3)
    engine = Linearised(tiny_model, tr, nodes)
    targets = [Target("feature", int(l), int(p), int(f)) for l, p, f in nodes.features]
    targets += [Target("logit", tr.n_layers, nodes.n_positions - 1, int(t)) for t in nodes.logit_tokens]
    targets = targets[::-1]  # out of position order: the batches sort them and put them back
    whole = engine.rows(targets)

    class Bar:
        def update(self, n: int) -> None:
            self.n = getattr(self, "n", 0) + n

    bar = Bar()
    batched = _compute_rows(engine, targets, 5, bar)  # type: ignore[arg-type]
    assert bar.n == len(targets) > 10
    torch.testing.assert_close(batched.edges, whole.edges, rtol=1e-4, atol=1e-5)  # float32 sums
    torch.testing.assert_close(batched.bias, whole.bias, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(batched.values, whole.values)


@pytest.fixture(scope="module")
def tiny_llama(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    """A tiny rotary model (grouped-query attention, RMSNorm) on the tiny model's tokenizer."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from interp.model import load_model

    bos = json.loads((tiny_model_dir / "config.json").read_text())["bos_token_id"]
    vocab = json.loads((tiny_model_dir / "config.json").read_text())["vocab_size"]
    torch.manual_seed(3)
    llama = LlamaForCausalLM(LlamaConfig(vocab_size=vocab, hidden_size=D, intermediate_size=64, num_hidden_layers=2,
                                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                                         bos_token_id=bos, eos_token_id=bos, tie_word_embeddings=False))
    out = tmp_path_factory.mktemp("tiny-llama")
    llama.save_pretrained(out)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(tiny_model_dir / name, out / name)
    return load_model(str(out))


def test_a_rotary_model_recomputes_its_patterns_from_rotated_queries_and_keys(tiny_llama, monkeypatch):
    import interp.circuits.attribution as attribution

    monkeypatch.setattr(attribution, "_CHUNK_ROWS", 4)
    ts = TranscoderSet(per_layer("skip_transcoder", tiny_llama.info.fingerprint, k=4), tiny_llama)
    kept, lean = trace(tiny_llama, PROMPT, ts), trace(tiny_llama, PROMPT, ts, patterns=False)
    assert "blocks.1.attn.hook_rot_k" in lean.acts and not any("hook_pattern" in h for h in lean.acts)
    assert tiny_llama.capture_path(list(lean.acts)) == "modules"
    P = len(lean.tokens)
    for layer in range(2):
        torch.testing.assert_close(attribution.attention_pattern(tiny_llama, lean, layer, 3, P, P),
                                   kept.acts[f"blocks.{layer}.attn.hook_pattern"][:, 3:], rtol=1e-4, atol=1e-6)
    nodes = active_nodes(tiny_llama, kept, max_n_logits=3)
    targets = [Target("feature", int(l), int(p), int(f)) for l, p, f in nodes.features]
    targets += [Target("logit", 2, P - 1, int(t)) for t in nodes.logit_tokens]
    want = Linearised(tiny_llama, kept, nodes).rows(targets)
    got = Linearised(tiny_llama, lean, nodes).rows(targets)
    torch.testing.assert_close(got.edges, want.edges, rtol=1e-4, atol=1e-5)
    # exact up to float32 rounding of the terms (the random model's logit rows cancel terms of ~250 to ~0.25)
    size = got.edges.abs().sum(1) + got.bias.abs()
    assert ((got.edges.sum(1) + got.bias - got.values).abs() / size).max() < 1e-6
    logits = tiny_llama.forward(lean.tokens[None])[0, -1].float()  # the targets are the model's own logits
    torch.testing.assert_close(got.values[-len(nodes.logit_tokens):], (logits - logits.mean())[nodes.logit_tokens],
                               rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(got.values[: nodes.n_features], nodes.activations, rtol=1e-4, atol=1e-5)
    graph = attribution_graph(tiny_llama, ts, AttributionGraphConfig(prompt=PROMPT, max_feature_nodes=20))
    assert not any("hook_pattern" in h for h in graph.trace.acts) and graph.graph.edges


def test_feature_activations_are_kept_sparse_and_read_like_the_dense_ones(tiny_model):
    dense = torch.relu(torch.randn(7, 50, generator=torch.Generator().manual_seed(0)) - 1.0)
    dense[3] = 0.0  # a position with nothing active
    acts = SparseActs(dense)
    assert acts.shape == (7, 50) and torch.equal(acts.to_dense(), dense)
    assert torch.equal(acts.nonzero(), dense.nonzero()) and torch.equal(acts.values(), dense[dense != 0])
    for t in range(7):
        assert torch.equal(acts.row(t), dense[t])
    assert acts.at(3, 4) == 0.0 and all(acts.at(int(t), int(f)) == float(dense[t, f]) for t, f in dense.nonzero())
    w = torch.randn(50, 6)
    torch.testing.assert_close(acts @ w, dense @ w)
    # a trace holds the active entries, not positions x features
    ts = TranscoderSet(per_layer("skip_transcoder", tiny_model.info.fingerprint, k=4), tiny_model)
    tr = trace(tiny_model, PROMPT, ts, patterns=False)
    for f in tr.features.values():
        nnz = len(f.values())
        assert nnz <= 4 * f.shape[0] and f.nbytes <= nnz * 12 + (f.shape[0] + 1) * 8
