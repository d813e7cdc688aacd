"""The residual-stream component graph and its patched forward pass."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import interp
from interp.circuits.components import ComponentGraph, capture_sources, check_decomposition, patched_logits
from interp.circuits.generators import induction_task
from interp.errors import InterpError

TORCH_THREADS = 1  # see conftest.py


def test_edge_counts_match_the_literature():
    assert ComponentGraph(2, 4).n_edges == 110  # auto-circuit's count for a 2-layer, 4-head model
    assert ComponentGraph(12, 12).n_edges == 32491  # MIB's count for GPT-2 small
    cg = ComponentGraph(2, 4)
    assert cg.src_names[:2] == ("input", "a0.h0") and cg.src_names[cg.mlp_src(1)] == "m1"
    assert cg.dst_names[cg.slot_dst(1, 1).start + 2] == ("a1.h2", "k") and cg.dst_names[-1] == ("logits", None)
    edges = cg.edge_index()
    assert len(edges) == 110 and all(cg.valid[s, d] for s, d in edges.tolist())
    assert not cg.valid[cg.head_src(1), cg.slot_dst(1, 0)].any()  # a layer's heads do not read each other
    assert cg.valid[cg.head_src(1), cg.mlp_dst(1)]  # but its MLP reads them



def test_every_listing_of_the_edges_has_one_order():
    """edge_index, a boolean mask of an (n_src, n_dst) matrix and a graph's edges list the edges in one order,
    so a vector from any of them lines up with the others (a mixed-up order once gave a Spearman of 0.33)."""
    from interp.circuits.scoring import edge_graph

    cg = ComponentGraph(2, 3)
    scores = torch.randn(cg.n_src, cg.n_dst, generator=torch.Generator().manual_seed(0)) * cg.valid
    index = cg.edge_index()
    assert torch.equal(index, cg.valid.nonzero())
    assert torch.equal(scores[index[:, 0], index[:, 1]], scores[cg.valid])
    graph = edge_graph(cg, scores, {})
    assert [e.score for e in graph.edges] == scores[cg.valid].tolist()
    assert [e.key for e in graph.edges][:2] == ["input->a0.h0<q>", "input->a0.h1<q>"]

def test_patching_every_edge_is_the_corrupted_run(demo_model):
    cg = ComponentGraph.of(demo_model)
    t = induction_task(demo_model, n_prompts=4, seq_len=6)
    check_decomposition(demo_model, cg, t.clean)
    last = t.clean_pos
    corrupted, corrupted_logits = capture_sources(demo_model, cg, t.corrupted, last)
    _, clean_logits = capture_sources(demo_model, cg, t.clean, last)
    keep = torch.ones(3, cg.n_src, cg.n_dst, dtype=torch.bool)
    keep[1] = False
    keep[2, :, cg.slot_dst(1, 1)] = False  # every key input of layer 1
    logits = patched_logits(demo_model, cg, t.clean, corrupted, keep, last).view(3, t.n, -1)
    assert torch.allclose(logits[0], clean_logits, atol=1e-5)
    assert torch.allclose(logits[1], corrupted_logits, atol=1e-4)
    grabbed = {}
    with demo_model.hooks([("blocks.1.hook_k_input", lambda x, hook: grabbed.setdefault("k", x.clone()))]):
        demo_model.forward(t.corrupted)
    with demo_model.hooks([("blocks.1.hook_k_input", lambda x, hook: grabbed["k"])]):
        want = demo_model.forward(t.clean)[:, -1]
    assert torch.allclose(logits[2], want, atol=1e-4)
    assert not torch.allclose(logits[2], clean_logits, atol=1e-2)


def test_source_outputs_sum_to_the_residual_stream(demo_model):
    cg = ComponentGraph.of(demo_model)
    t = induction_task(demo_model, n_prompts=3, seq_len=5)
    out, final = capture_sources(demo_model, cg, t.clean, t.clean_pos)
    assert torch.allclose(final, demo_model.forward(t.clean)[:, -1], atol=1e-4)
    got = {}
    last = f"blocks.{demo_model.info.n_layers - 1}.hook_resid_post"
    with demo_model.hooks([(last, lambda x, hook: got.setdefault("r", x))]):
        demo_model.forward(t.clean)
    # the sum of source outputs misses only the attention output biases b_O
    residual = got["r"] - out.sum(0)
    assert torch.allclose(residual, residual[:1, :1].expand_as(residual), atol=1e-4)


@pytest.mark.parametrize("kv_heads", [4, 2])
def test_llama_decomposes_and_grouped_query_attention_is_refused(kv_heads, tiny_model_dir: Path, tmp_path: Path):
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=kv_heads, max_position_embeddings=64,
                      bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    LlamaForCausalLM(cfg).save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    model = interp.load_model(str(tmp_path))
    task = induction_task(model, n_prompts=4, seq_len=5)
    if kv_heads == 4:
        check_decomposition(model, ComponentGraph.of(model), task.clean)
    else:
        with pytest.raises(InterpError, match="grouped-query attention"):
            check_decomposition(model, ComponentGraph.of(model), task.clean)
