"""Tests of interp.zoo: the stdlib corpus, the induction probe, the recipe and the shipped demo checkpoint."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer, GPT2Config, GPT2LMHeadModel

from cli import zoo as zoo_cli
from interp.errors import InterpError
from interp.zoo import DEMO_DIR, ZooConfig, induction_score, iter_stdlib_documents, stdlib_files, train_demo
from interp.zoo.probes import induction_pattern_score, repeated_random_tokens
from interp.zoo.recipe import copy_spans, pack, random_repeats, repeat_spans, training_batches

# The aim for the shipped model is an induction head scoring >= 0.3 (the circuit work needs one). The
# checkpoint shipped now does not reach it (README, "The embedded demo model"); the test checks that the
# card reports what the model really does, so a better checkpoint only needs its card.


def test_split_is_deterministic_disjoint_and_complete() -> None:
    train, heldout, everything = stdlib_files("train"), stdlib_files("heldout"), stdlib_files("all")
    assert stdlib_files("train") == train and stdlib_files("heldout") == heldout
    assert not set(train) & set(heldout)
    assert sorted(train + heldout) == sorted(everything)
    assert 0.01 < len(heldout) / len(everything) < 0.15
    assert all(
        p.suffix == ".py" and "site-packages" not in p.parts and "test" not in p.parts for p in everything
    )


def test_corpus_exclusions_and_order(tmp_path: Path) -> None:
    for name in ["b.py", "a.py", "pkg/c.py", "test/t.py", "site-packages/x/y.py", "idlelib/i.py", "big.py"]:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("x = 1\n" * (40_000 if name == "big.py" else 1))
    names = [p.relative_to(tmp_path).as_posix() for p in stdlib_files("all", root=tmp_path)]
    assert names == ["a.py", "b.py", "pkg/c.py"]
    assert list(iter_stdlib_documents("all", root=tmp_path)) == ["x = 1\n"] * 3


def test_corpus_errors(tmp_path: Path) -> None:
    with pytest.raises(InterpError, match="no Python source files"):
        stdlib_files("all", root=tmp_path)
    with pytest.raises(InterpError, match="unknown corpus split"):
        stdlib_files("validation")  # type: ignore[arg-type]


def _tiny_gpt2() -> GPT2LMHeadModel:
    torch.manual_seed(0)
    config = GPT2Config(
        vocab_size=50, n_positions=40, n_embd=16, n_layer=2, n_head=2, bos_token_id=0, eos_token_id=0
    )
    return GPT2LMHeadModel(config)


def test_induction_score_shape_range_and_model_state() -> None:
    model = _tiny_gpt2().train()
    scores = induction_score(model, seq_len=8, batch=3)
    assert scores.shape == (2, 2) and scores.dtype == torch.float32
    assert ((scores >= 0) & (scores <= 1)).all()
    assert model.training and model.config._attn_implementation != "eager"
    assert torch.equal(scores, induction_score(model, seq_len=8, batch=3))
    with pytest.raises(InterpError, match="positions"):
        induction_score(model, seq_len=20)


def test_probe_tokens_repeat_and_avoid_bos() -> None:
    tokens = repeated_random_tokens(vocab_size=5, seq_len=30, batch=4, bos_token_id=2, seed=1)
    assert tokens.shape == (4, 61) and (tokens[:, 0] == 2).all()
    assert torch.equal(tokens[:, 1:31], tokens[:, 31:]) and not (tokens[:, 1:] == 2).any()


def test_ideal_induction_pattern_scores_one() -> None:
    seq_len, t = 5, 11
    ideal = torch.zeros(1, 2, 3, t, t)  # (layers, B, H, T, T)
    ideal[..., 0] = 1.0  # attend to BOS by default
    for q in range(seq_len + 1, t):
        ideal[..., q, :] = 0.0
        ideal[..., q, q - seq_len + 1] = 1.0
    assert torch.allclose(induction_pattern_score(ideal, seq_len), torch.ones(1, 3))
    on_bos = torch.zeros(1, 2, 3, t, t)
    on_bos[..., 0] = 1.0
    assert torch.allclose(induction_pattern_score(on_bos, seq_len), torch.zeros(1, 3))


def test_pack_starts_every_context_with_bos_and_keeps_every_token() -> None:
    documents = [np.arange(1, 8, dtype=np.int32), np.arange(10, 15, dtype=np.int32)]
    contexts = pack(documents, seq_len=6, bos_token_id=0, drop_last=False)
    assert all(c[0] == 0 for c in contexts) and [len(c) for c in contexts] == [6, 6, 3]
    assert torch.cat([c[1:] for c in contexts]).tolist() == list(range(1, 8)) + list(range(10, 15))
    assert [len(c) for c in pack(documents, seq_len=6, bos_token_id=0, drop_last=True)] == [6, 6]


def test_repeat_spans_tiles_a_sample_of_the_row() -> None:
    contexts = torch.arange(1, 1 + 40 * 33).reshape(40, 33)
    contexts[:, 0] = 0
    out = repeat_spans(contexts, 0.5, np.random.default_rng(0))
    assert torch.equal(out, repeat_spans(contexts, 0.5, np.random.default_rng(0)))
    changed = [i for i in range(40) if not torch.equal(out[i], contexts[i])]
    assert 10 <= len(changed) <= 30 and (out[:, 0] == 0).all()
    for i in changed:
        body = out[i, 1:]
        span = next(n for n in range(2, 17) if torch.equal(body[n:], body[: len(body) - n]))
        assert set(body[:span].tolist()) <= set(contexts[i, 1:].tolist())


def test_copy_spans_copies_earlier_text_forward() -> None:
    contexts = torch.arange(1, 1 + 40 * 129).reshape(40, 129)  # every token distinct
    contexts[:, 0] = 0
    out = copy_spans(contexts, 0.5, np.random.default_rng(0))
    assert torch.equal(out, copy_spans(contexts, 0.5, np.random.default_rng(0))) and (out[:, 0] == 0).all()
    changed = [i for i in range(40) if not torch.equal(out[i], contexts[i])]
    assert 10 <= len(changed) <= 30
    for i in changed:
        moved = (out[i] != contexts[i]).nonzero().flatten()
        assert len(moved) >= 16  # at least a quarter of the row, give or take overwritten copies
        first_seen = {int(t): int(p) for p, t in reversed(list(enumerate(contexts[i])))}
        # every overwritten token is an original token of the row, from an earlier position
        assert all(first_seen[int(out[i, p])] < p for p in moved.tolist())


def test_random_repeats_copy_segments_not_periods() -> None:
    rows = random_repeats(64, 64, vocab_size=50_000, bos_token_id=7, rng=np.random.default_rng(0))
    assert rows.shape == (64, 64) and (rows[:, 0] == 7).all() and not (rows[:, 1:] == 7).any()
    repeats = 0
    for row in rows.tolist():
        seen, periods = {}, set()
        for p, t in enumerate(row[1:]):
            if t in seen:  # with 50,000 ids, a repeated token is a copied segment
                repeats += 1
                periods.add(p - seen[t])
            seen[t] = p
        assert len(periods) != 1  # copies come back at varying distances, not with one period
    assert 0.25 < repeats / (64 * 63) < 0.75
    assert torch.equal(rows, random_repeats(64, 64, 50_000, 7, np.random.default_rng(0)))


def test_curriculum_batches_are_short_random_repeats() -> None:
    cfg = ZooConfig(seq_len=64, batch_size=4, curriculum_steps=2, curriculum_seq_len=16, random_fraction=0.5)
    documents = [np.arange(1, 2000, dtype=np.int32)]
    batches = training_batches(cfg, documents, bos_token_id=0, vocab_size=4096)
    assert [tuple(next(batches).shape) for _ in range(3)] == [(16, 16), (16, 16), (4, 64)]


@pytest.mark.parametrize(
    "bad",
    [
        {"n_layer": 0},
        {"d_model": 30, "n_head": 4},
        {"seq_len": 512},
        {"warmup_steps": 5, "steps": 5},
        {"lr": 0.0},
        {"max_files": 0},
        {"probe_seq_len": 200},
        {"random_fraction": 1.0},
        {"curriculum_steps": 600},
        {"curriculum_seq_len": 4},
        {"copy_fraction": -0.1},
        {"save_dtype": "int8"},
        {"vocab_size": 100},
        {"repeat_fraction": 1.0},
    ],
)
def test_config_rejects_bad_values(bad: dict) -> None:
    with pytest.raises(InterpError, match="ZooConfig"):
        ZooConfig(**bad)


TINY = ZooConfig(
    vocab_size=300,
    n_layer=1,
    n_head=2,
    d_model=16,
    d_mlp=32,
    n_ctx=32,
    seq_len=32,
    batch_size=4,
    steps=3,
    warmup_steps=1,
    max_files=3,
    probe_seq_len=8,
    probe_batch=2,
    curriculum_steps=1,
    random_fraction=0.5,
    num_threads=1,
)


def test_train_demo_end_to_end_and_reproducible(tmp_path: Path) -> None:
    card = train_demo(TINY, tmp_path / "a")
    again = train_demo(TINY, tmp_path / "b")
    for name in [
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
        "zoo_card.json",
    ]:
        assert (tmp_path / "a" / name).is_file()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary directory left
    weights_a, weights_b = (
        load_file(tmp_path / "a" / "model.safetensors"),
        load_file(tmp_path / "b" / "model.safetensors"),
    )
    assert weights_a.keys() == weights_b.keys() and all(
        torch.equal(weights_a[k], weights_b[k]) for k in weights_a
    )
    assert card["heldout_loss"] == again["heldout_loss"] and card["config"] == again["config"]
    assert json.loads((tmp_path / "a" / "zoo_card.json").read_text())["training_tokens"] == 3 * 4 * 32
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "a")
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "a")
    assert model.config.bos_token_id == tokenizer.bos_token_id == tokenizer.eos_token_id
    assert tokenizer.decode(tokenizer("def f(x):\n    return x")["input_ids"]) == "def f(x):\n    return x"
    train_demo(TINY, tmp_path / "a")  # replaces an existing checkpoint
    assert (tmp_path / "a" / "zoo_card.json").is_file()


def test_cli_flags_come_from_the_config() -> None:
    parser = argparse.ArgumentParser()
    zoo_cli.add_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(
        ["zoo", "train", "--out", "x", "--steps", "7", "--max-files", "2", "--lr", "1e-3"]
    )
    assert (args.steps, args.max_files, args.lr, args.seed, args.out) == (7, 2, 1e-3, ZooConfig().seed, "x")
    assert parser.parse_args(["zoo", "train", "--out", "x", "--max-files", "none"]).max_files is None


def test_shipped_demo_checkpoint_matches_its_card() -> None:
    card = json.loads((DEMO_DIR / "zoo_card.json").read_text())
    assert sum(p.stat().st_size for p in DEMO_DIR.iterdir()) <= 25 * 2**20
    assert card["config"] == {**ZooConfig().__dict__, "save_dtype": card["config"]["save_dtype"]}
    assert card["heldout_loss"] < card["unigram_loss"] - 1.0
    model = AutoModelForCausalLM.from_pretrained(DEMO_DIR).float()
    tokenizer = AutoTokenizer.from_pretrained(DEMO_DIR)
    assert model.config.bos_token_id == tokenizer.bos_token_id
    best, probe = card["best_induction_head"], card["induction_probe"]
    scores = induction_score(model, probe["seq_len"], probe["batch"], probe["seed"])
    assert abs(scores[best["layer"], best["head"]].item() - best["score"]) <= 0.02
    assert torch.allclose(scores, torch.tensor(card["induction_scores"]), atol=0.02)
