"""Auto-interpretation parts on small hand-made cases: metrics against hand-computed values, prompt parsing,
the n-gram explainer and simulator, example sampling, and scorers' handling of malformed answers."""

from __future__ import annotations

import asyncio
import math

import pytest
from llm_server import LLMServer, Reply, chat_body

from interp.autointerp import AutointerpConfig, LLMClient, LLMConfig, SampleConfig, sample_feature
from interp.autointerp.allatonce import simulation_prompt
from interp.autointerp.examples import Example, FeatureExamples, split_examples
from interp.autointerp.metrics import auroc, classification_metrics, pearson
from interp.autointerp.ngram import NgramSimulator, explain_ngrams, parse_items
from interp.autointerp.prompts import (
    Malformed,
    classifier_messages,
    expected_values,
    explainer_messages,
    mark,
    normalised,
    parse_explanation,
    parse_int_list,
    simulation_messages,
    value_distributions,
)
from interp.autointerp.scorers import detection, fuzzing_texts, simulation
from interp.autointerp.wire import TokenLogprob


# ---- metrics ------------------------------------------------------------------------------------
def test_classification_metrics_by_hand():
    m = classification_metrics([1, 1, 1, 0, 0], [1, 0, 1, 0, 1])
    # tp 2, fn 1, tn 1, fp 1: TPR 2/3, TNR 1/2
    assert (m["tp"], m["fn"], m["tn"], m["fp"]) == (2, 1, 1, 1)
    assert m["balanced_accuracy"] == pytest.approx((2 / 3 + 1 / 2) / 2)
    assert m["precision"] == pytest.approx(2 / 3) and m["recall"] == pytest.approx(2 / 3)
    assert m["f1"] == pytest.approx(2 / 3) and m["accuracy"] == pytest.approx(3 / 5)
    m = classification_metrics([1, 0, 0, 0], [0.9, None, 0.2, 0.7])  # probabilities, one failed answer
    assert m["n_failed"] == 1 and m["n"] == 3
    assert m["balanced_accuracy"] == pytest.approx((1 + 1 / 2) / 2) and m["f1"] == pytest.approx(2 / 3)
    assert classification_metrics([1, 1], [1, 0])["balanced_accuracy"] is None  # no negatives: undefined


def test_auroc_and_pearson_by_hand():
    # pairs (pos, neg): 0.9>0.6, 0.9>0.1, 0.4<0.6, 0.4>0.1 -> 3 of 4
    assert auroc([1, 1, 0, 0], [0.9, 0.4, 0.6, 0.1]) == pytest.approx(0.75)
    assert auroc([1, 0, 0], [0.5, 0.5, 0.2]) == pytest.approx(0.75)  # a tie counts one half
    assert auroc([1, 1, 0], [0.3, None, 0.1]) == 1.0 and auroc([1, 1], [0.1, 0.2]) is None
    # x = 1,2,3; y = 2,4,7: sum dx dy = 5, sum dx^2 = 2, sum dy^2 = 114/9
    assert pearson([1, 2, 3], [2, 4, 7]) == pytest.approx(5 / math.sqrt(2 * 114 / 9))
    assert pearson([1, 2, 3], [5, 5, 5]) is None and pearson([1], [2]) is None
    assert pearson([0, 1, 0, 1], [1, 0, 1, 0]) == pytest.approx(-1.0)


# ---- prompts and parsing ------------------------------------------------------------------------
def test_marks_merge_runs_and_activations_are_normalised():
    assert mark([" a", " b", " c", " d", "\n"], [False, True, True, False, True]) == " a<< b c>> d<<\\n>>"
    assert [normalised(a, 8.0) for a in (0, 0.1, 4.0, 8.0, 9.0)] == [0, 1, 5, 10, 10]
    msgs = explainer_messages([([" x", " y", " z"], [0.0, 8.0, 1.0])], max_act=8.0)
    assert msgs[0]["role"] == "system" and "[EXPLANATION]:" in msgs[0]["content"]
    assert [m["role"] for m in msgs[1:]] == ["user", "assistant", "user", "assistant", "user"]
    assert msgs[-1]["content"] == 'Excerpt 1:  x<< y>> z\nActivations: (" y", 10)'  # 1.0 < 0.3 * 8: unmarked


def test_descriptions_reach_the_llm_as_written_on_one_line():
    """A description quoting a token JSON-style keeps its one backslash (example text is escaped, descriptions are
    not: escaping them would show the LLM ``"\\\\n"`` for the newline token); its line breaks become spaces."""
    quoted = 'Tokens: "\\n"; " \\t" after "\\\\"'
    assert f"Feature description: {quoted}\n" in classifier_messages("system", None, quoted, ["a"])[-1]["content"]
    assert f"Feature description: {quoted}\n" in simulation_messages(quoted, [" a"])[-1]["content"]
    assert f"\nDescription: {quoted}\n" in simulation_prompt(quoted, [" a", "\n"]).text
    msg = simulation_messages("  Closing brackets\n\tat the end of a line\r\n", [" a"])[-1]["content"]
    assert msg.startswith("Feature description: Closing brackets at the end of a line\n\n")


@pytest.mark.parametrize("text,kind", [("", "empty"), ("   ", "empty"), ("I think they all fit.", "no_list"),
                                       ("[1, 0,]", "invalid_json"), ("[1, 0]", "wrong_length"),
                                       ('["yes", 0, 1]', "bad_values"), ("[2, 0, 1]", "bad_values")])
def test_malformed_lists_are_named(text, kind):
    with pytest.raises(Malformed) as e:
        parse_int_list(text, 3)
    assert e.value.kind == kind


def test_lists_explanations_and_logprob_distributions():
    assert parse_int_list("Sure: [1, 0, true] done", 3) == [1, 0, 1]
    assert parse_int_list('["1", 0.0, 1]', 3) == [1, 0, 1]
    assert parse_explanation("thinking...\n[EXPLANATION]: first\n[explanation]:  The token \"x\". ") == \
        'The token "x".'
    with pytest.raises(Malformed, match="no_explanation"):
        parse_explanation("The token x.")
    lp = [TokenLogprob("[", 0.0, {}), TokenLogprob("1", math.log(0.6), {"1": math.log(0.6), "0": math.log(0.2),
                                                                          "yes": math.log(0.2)}),
          TokenLogprob(",", 0.0, {}), TokenLogprob(" 0", math.log(0.9), {" 0": math.log(0.9), " 1": math.log(0.1)}),
          TokenLogprob("]", 0.0, {})]
    dists = value_distributions(lp, 2, 1)
    assert dists is not None and expected_values(dists) == pytest.approx([0.75, 0.1])  # 0.6/(0.6+0.2); 0.1
    assert value_distributions(lp, 3, 1) is None  # the answer holds 2 numbers, not 3
    sim = [TokenLogprob("10", 0.0, {"10": math.log(0.5), "8": math.log(0.25), "0": math.log(0.25)})]
    assert expected_values(value_distributions(sim, 1, 10)) == pytest.approx([7.0])


# ---- n-gram explainer and simulator -------------------------------------------------------------
def ex(tokens, acts, context, group="top"):
    return Example(tuple(tokens), tuple(range(len(tokens))), tuple(float(a) for a in acts), context, 0, group,
                   any(a > 0 for a in acts))


def test_ngram_explainer_finds_token_and_context():
    examples = [ex(["for", " i", " in", " x", " i"], [0, 5, 0, 0, 0], 0), ex(["for", " i", " ="], [0, 4, 0], 1),
                ex([" a", "for", " i"], [0, 0, 3], 2), ex(["def", " f"], [0, 2], 3)]
    text = explain_ngrams(examples)
    items = parse_items(text)
    assert items[0].token == " i" and items[0].after == "for"  # " i" alone is marked 3 of 5 times
    assert any(i.token == " f" for i in items)
    sim = NgramSimulator(text)
    assert sim.predict(["for", " i", " i", " f"]) == [0, 1, 0, 1]
    assert explain_ngrams([ex([" a"], [0], 9)]) == "Tokens: (none)"


def test_simulator_reads_llm_style_explanations():
    sim = NgramSimulator('The token "er" at the end of comparatives, and "Self" after "(".')
    assert sim.predict(["wid", "er", "self", "(", " self"]) == [0, 1, 0, 0, 1]  # case and spaces ignored


# ---- sampling -----------------------------------------------------------------------------------
def test_train_and_test_never_share_a_context(demo_features):
    from interp.features import load_feature_store

    fs = load_feature_store(demo_features)
    checked = 0
    for i in range(0, fs.n_features, 7):
        if int(fs.tensors["count"][i]) == 0:
            continue
        for how in ("mix", "top", "quantiles", "random"):
            s = sample_feature(fs, i, SampleConfig(train=how, n_train=10, n_test=10))
            train, test, neg = ({e.context for e in part} for part in (s.train, s.test, s.negatives))
            assert not train & test and not (train | test) & neg
            assert all(e.activating for e in s.train + s.test) and not any(e.activating for e in s.negatives)
            assert len(train) == len(s.train) and len(test) == len(s.test)  # no repeated context either
        checked += 1
    assert checked > 20


def test_stratified_test_and_small_pools_are_split():
    top = [ex(["a"], [10 - k], k) for k in range(6)]
    quant = [ex(["a"], [b + 1], 100 + 10 * b + j, f"q{b}") for b in range(3) for j in range(2)]
    s = split_examples(0, top, quant, [ex(["b"], [0], 500 + k, "random") for k in range(4)], [],
                       SampleConfig(n_train=4, n_test=4, n_non_activating=3), 10.0)
    assert [e.context for e in s.train[:2]] == [0, 1]  # mix: strongest top examples first
    assert [e.group for e in s.test[:3]] == ["q2", "q1", "q0"] or s.test[0].group == "q2"
    assert len(s.negatives) == 3
    small = split_examples(0, top[:3], [], [], [], SampleConfig(n_train=20, n_test=20), 10.0)
    assert len(small.train) == 1 and len(small.test) == 2  # 3 contexts split 20:20


def test_fuzzing_marks():
    import random

    e_act = ex([" a", " b", " c", " d"], [0, 9, 1, 0], 1)
    neg = Example((" w", " x", " y", " z"), (0, 1, 2, 3), (0.0,) * 4, 2, 0, "random", False)
    hard = Example((" p", " q", " r", " s"), (0, 1, 2, 3), (0.0,) * 4, 3, 0, "neighbour", False, source=5,
                   source_acts=(0.0, 0.0, 4.0, 3.0))
    shown = fuzzing_texts(FeatureExamples(0, [], [e_act], [neg, hard], 9.0), 0.3, random.Random(0))
    # activating: its tokens over 0.3 x 9; random: ceil(mean non-zero tokens per activating example) = 2
    # marks, one at the peak position W - W // 4 = 3; hard negative: its neighbour's active tokens
    assert shown[0].text == " a<< b>> c d" and shown[2].text == " p q<< r s>>"
    assert shown[1].text.endswith("<< z>>") and shown[1].text.count("<<") == 2
    assert [s.label for s in shown] == [True, False, False]


# ---- scorers on a scripted server ---------------------------------------------------------------
def _feature() -> FeatureExamples:
    test = [ex([" the", " cat", " sat"], [0, 5, 0], k) for k in range(5)]
    neg = [Example((" a", " dog", " ran"), (0, 1, 2), (0.0,) * 3, 10 + k, 0, "random", False) for k in range(5)]
    return FeatureExamples(0, [], test, neg, 5.0)


def _detect(script, retries: int):
    cfg = AutointerpConfig(n_per_prompt=10, parse_retries=retries)
    with LLMServer(script) as server:
        async def go():
            async with LLMClient(LLMConfig(base_url=server.url, llm="m", cache=False, backoff=0.01)) as c:
                return await detection(c, cfg, _feature(), 'The token "cat"')

        return asyncio.run(go()), server.requests


def test_malformed_answers_are_reasked_and_counted():
    answers = ["Both kinds of text could fit, hard to say.", "[1, 0, 1, 0, 1, 0, 1, 0, 1,]"]

    def script(body, n):
        if n < len(answers):
            return Reply(body=chat_body(answers[n]))
        texts = body["messages"][-1]["content"].split("Texts:\n")[1].split("\n\nReply")[0].splitlines()
        return Reply(body=chat_body(str([int("cat" in t) for t in texts]), top=5))

    result, requests = _detect(script, retries=2)
    assert result["failures"] == {"no_list": 1, "invalid_json": 1}
    assert result["score"] == 1.0 and result["metrics"]["n_failed"] == 0
    assert result["metrics"]["auroc_from"] == "logprobs" and result["metrics"]["auroc"] == 1.0
    assert len(requests) == 3 and requests[1]["body"]["temperature"] > 0  # re-asked, not the same request


def test_answers_that_stay_malformed_never_crash_a_run():
    bad = ["", "[1]", '["maybe", 1, 1, 1, 1, 1, 1, 1, 1, 1]']
    result, requests = _detect(lambda body, n: Reply(body=chat_body(bad[n % 3])), retries=2)
    assert result["failures"] == {"empty": 1, "wrong_length": 1, "bad_values": 1}
    assert result["score"] is None and result["metrics"]["n_failed"] == 10 and len(requests) == 3


def test_simulation_uses_expected_values_from_logprobs():
    cfg = AutointerpConfig(n_simulation=4)
    with LLMServer() as server:  # the default script: 10 on tokens quoted in the description, with p = 0.8
        async def go():
            async with LLMClient(LLMConfig(base_url=server.url, llm="m", cache=False)) as c:
                return await simulation(c, cfg, _feature(), 'The token "cat"')

        result = asyncio.run(go())
    ex0 = result["examples"][0]
    assert ex0["tokens"] == [" the", " cat", " sat"]
    # a "10" answered with p 0.8 and 0.2 spread over 0..9 (mean 4.5): 8 + 0.9; a "0": 0.2 x mean of 1..10
    assert ex0["predicted"] == pytest.approx([0.2 * 5.5, 8.9, 0.2 * 5.5], abs=1e-3)
    assert result["score"] == pytest.approx(1.0) and result["metrics"]["n_texts"] == 4


def test_embedding_scorer_on_a_local_encoder(tmp_path):
    """The embedding scorer's loader and pooling on a tiny BERT saved to disk (the packaged MiniLM, when the
    optional extra is installed, goes through the same code)."""
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import BertConfig, BertModel, PreTrainedTokenizerFast

    from interp.autointerp.localscorers import Embedder, embedding, find_embedding_model

    words = ["[PAD]", "[UNK]", "the", "cat", "sat", "a", "dog", "ran", "token"]
    tok = Tokenizer(models.WordPiece({w: k for k, w in enumerate(words)}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]").save_pretrained(tmp_path)
    torch.manual_seed(0)
    BertModel(BertConfig(vocab_size=len(words), hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                         intermediate_size=32)).save_pretrained(tmp_path)
    assert find_embedding_model(str(tmp_path)) == tmp_path
    emb = Embedder(tmp_path)
    vecs = emb.encode(["the cat sat", "the cat sat", "a dog ran"])
    assert vecs.shape == (3, 16) and torch.allclose(vecs.norm(dim=1), torch.ones(3), atol=1e-5)
    assert torch.allclose(vecs[0], vecs[1]) and not torch.allclose(vecs[0], vecs[2])
    result = embedding(emb, _feature(), "the cat sat")
    sims = [e["similarity"] for e in result["examples"]]
    assert result["score"] == 1.0 and min(sims[:5]) > max(sims[5:])  # identical texts are the most similar
