"""Corpora, packing and the model layer."""

from __future__ import annotations

import json
import time

import pytest
import torch

from interp.errors import InterpError
from interp.model.corpus import CorpusConfig, iter_contexts, iter_documents, pack_contexts
from interp.model.model import load_model


class CharTokenizer:
    """Each character is its code point: makes packing easy to check by hand."""

    def __call__(self, texts, add_special_tokens=False):
        return {"input_ids": [[ord(c) for c in t] for t in texts]}


def test_packing_is_bos_explicit_and_tracks_documents():
    docs = ["abc", "", "defgh", "ij"]
    ctxs = list(pack_contexts(docs, CharTokenizer(), ctx_len=4, bos_token_id=0))
    # a b c fill context 0; "defgh" starts context 1 (its BOS is the separator); "ij" follows a BOS.
    assert [c.tokens.tolist() for c in ctxs] == [[0, 97, 98, 99], [0, 100, 101, 102], [0, 103, 104, 0]]
    assert [c.doc.tolist() for c in ctxs] == [[0, 0, 0, 0], [2, 2, 2, 2], [2, 2, 2, 3]]
    assert [c.pos.tolist() for c in ctxs] == [[-1, 0, 1, 2], [-1, 0, 1, 2], [-1, 3, 4, -1]]


def _pack_by_hand(docs, ctx_len, bos):
    """The packing rule token by token: a BOS between documents unless a context starts there, every context
    opening with its own BOS, the last partial context dropped."""
    stream = []  # (token, doc, pos)
    out = []
    for d, ids in enumerate(docs):
        if not ids:
            continue
        if stream:
            stream.append((bos, d, -1))
        stream += [(t, d, p) for p, t in enumerate(ids)]
        while len(stream) >= ctx_len - 1:
            part, stream = stream[: ctx_len - 1], stream[ctx_len - 1 :]
            out.append(([bos] + [t for t, _, _ in part], [part[0][1]] + [d for _, d, _ in part],
                        [-1] + [p for _, _, p in part]))
    return out


def test_packing_equals_the_rule_token_by_token():
    import random

    from interp.model.corpus import pack_token_ids

    rng = random.Random(0)
    for _ in range(200):
        docs = [[rng.randrange(1, 50) for _ in range(rng.choice([0, 1, 2, 3, 7, 8, 9, 16, 17, 40]))]
                for _ in range(rng.randrange(0, 10))]
        ctx_len = rng.choice([2, 3, 4, 8, 9, 16])
        got = list(pack_token_ids(docs, ctx_len, 0))
        assert [(c.tokens.tolist(), c.doc.tolist(), c.pos.tolist()) for c in got] == _pack_by_hand(docs, ctx_len, 0)
        assert all((c.tokens.dtype, c.doc.dtype, c.pos.dtype) == (torch.int64, torch.int64, torch.int32) for c in got)


def test_local_formats_and_seeded_order(tmp_path):
    jsonl = tmp_path / "c.jsonl"
    jsonl.write_text("".join(json.dumps({"body": f"doc {i}"}) + "\n" for i in range(30)))
    unshuffled = list(iter_documents(CorpusConfig(source=str(jsonl), text_field="body", seed=None)))
    assert unshuffled == [f"doc {i}" for i in range(30)]
    a = list(iter_documents(CorpusConfig(source=str(jsonl), text_field="body", seed=1)))
    b = list(iter_documents(CorpusConfig(source=str(jsonl), text_field="body", seed=1)))
    assert a == b and sorted(a) == sorted(unshuffled) and a != unshuffled
    with pytest.raises(InterpError, match="no 'text' field"):
        list(iter_documents(CorpusConfig(source=str(jsonl))))
    import datasets

    pq = tmp_path / "p" / "c.parquet"
    pq.parent.mkdir()
    datasets.Dataset.from_dict({"text": ["x y", "z"]}).to_parquet(str(pq))
    assert list(iter_documents(CorpusConfig(source=str(pq.parent), seed=None))) == ["x y", "z"]


def test_stdlib_corpus_is_read_in_place():
    docs = iter_documents(CorpusConfig(source="stdlib:heldout", seed=0))
    first = next(docs)
    assert isinstance(first, str) and len(first) > 0


def test_empty_corpus_is_an_error(tmp_path, tiny_model):
    (tmp_path / "a.txt").write_text("")
    with pytest.raises(InterpError, match="empty"):
        next(iter_contexts(CorpusConfig(source=str(tmp_path)), tiny_model.tokenizer, 16, 0))


def test_hook_validation_and_stop_layer(tiny_model):
    assert tiny_model.resolve_hooks("blocks.*.hook_resid_post") == ["blocks.0.hook_resid_post",
                                                                     "blocks.1.hook_resid_post"]
    with pytest.raises(InterpError, match="Did you mean: blocks.1.hook_mlp_out"):
        tiny_model.resolve_hooks(["blocks.1.hook_mlp_oot"])
    assert tiny_model.stop_layer(["blocks.0.hook_resid_post"]) == 1
    assert tiny_model.stop_layer(["blocks.1.hook_resid_post"]) is None
    assert tiny_model.info.d_model == 32 and len(tiny_model.info.fingerprint) == 16


def test_capture_stops_early_but_matches_full_run(tiny_model):
    tokens = torch.randint(0, 300, (2, 12))
    _, cache = tiny_model.bridge.run_with_cache(tokens)
    for path in ("bridge", "modules"):
        cap = tiny_model.capture(tokens, ["blocks.0.hook_mlp_out"], path=path)
        torch.testing.assert_close(cap.acts["blocks.0.hook_mlp_out"], cache["blocks.0.hook_mlp_out"],
                                   rtol=0 if path == "bridge" else 1e-5, atol=0 if path == "bridge" else 1e-6)


def test_hub_name_offline_fails_fast_with_a_hint(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    t = time.perf_counter()
    with pytest.raises(InterpError, match="--model ./gpt2"):
        load_model("gpt2-small")
    assert time.perf_counter() - t < 5


def test_missing_local_path_and_non_checkpoint_dir(tmp_path):
    with pytest.raises(InterpError, match="does not exist"):
        load_model(str(tmp_path / "nope" / "model"))
    with pytest.raises(InterpError, match="no config.json"):
        load_model(str(tmp_path))


def test_processing_sets_the_coordinate_system(tiny_model_dir, tiny_model):
    tokens = torch.randint(0, 300, (1, 10))
    hook = "blocks.0.hook_resid_post"
    with torch.no_grad():
        hidden = tiny_model.bridge.original_model(tokens, output_hidden_states=True).hidden_states[1]
    # default: LayerNorm folded, residual stream not centred, so it equals the checkpoint's hidden states
    assert torch.allclose(tiny_model.capture(tokens, [hook]).acts[hook], hidden, atol=1e-5)
    centred = load_model(str(tiny_model_dir), processing="transformer_lens")
    assert centred.capture(tokens, [hook]).acts[hook].mean(-1).abs().max() < 1e-5
    assert centred.info.fingerprint != tiny_model.info.fingerprint
    with pytest.raises(InterpError, match="processing must be one of"):
        load_model(str(tiny_model_dir), processing="folded")
