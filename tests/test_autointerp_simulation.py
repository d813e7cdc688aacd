"""All-at-once simulation (Bills et al.) against a real loopback server that answers /completions with echo
and prompt logprobs the way vLLM does (tests/llm_server.py): the prompt's structure, slots mapped back to
the right tokens (multi-token pieces, tabs and newlines inside tokens), expected values against hand
computation, unreadable answers counted, and the server check that stops a run before any work."""

from __future__ import annotations

import asyncio
import json
import logging
import math

import pytest
from llm_server import LLMServer, Reply, answer, echo_body, toy_tokens

from interp.autointerp import AutointerpConfig, LLMClient, LLMConfig, SampleConfig, run_autointerp
from interp.autointerp.allatonce import SHOTS, SLOT, simulation_mode, simulation_prompt
from interp.autointerp.examples import Example, FeatureExamples
from interp.autointerp.explanations import iter_records
from interp.autointerp.metrics import pearson
from interp.autointerp.scorers import simulation
from interp.errors import InterpError

VLLM_REFUSAL = {"object": "error", "message": "echo is not supported with logprobs for this model",
                "type": "BadRequestError", "param": None, "code": 400}
ACT_TOKENS = (" ImportError", ":", "a\tb", "\n    ", "\t")
NEG_TOKENS = (" return", " None", "<|endoftext|>")


def lp(probs: dict[str, float]) -> dict[str, float]:
    return {k: math.log(v) for k, v in probs.items()}


# the slot logprobs the server gives for each line (the escaped token before the tab)
SLOTS = {
    " ImportError": lp({"10": 0.5, "8": 0.25, SLOT: 0.2, "the": 0.05}),  # (10 x .5 + 8 x .25) / .75
    ":": lp({"0": 0.6, "1": 0.2, SLOT: 0.2}),  # .2 / .8
    "a\\tb": lp({" 2": 0.3, "2": 0.1, "0": 0.4, SLOT: 0.2}),  # " 2" and "2" are both 2: 2 x .4 / .8
    "\\n    ": lp({"0": 0.5, SLOT: 0.5}),
    "\\t": lp({"3": 0.25, "0": 0.25, "unknown": 0.5}),  # 3 x .25 / .5
    " return": lp({"0": 0.9, SLOT: 0.1}),
    " None": lp({"1": 0.5, "0": 0.5}),
    "<\\|endoftext|>": lp({"0": 1.0}),
}
EXPECTED = {" ImportError": 7 / 0.75, ":": 0.25, "a\tb": 1.0, "\n    ": 0.0, "\t": 1.5, " return": 0.0,
            " None": 0.5, "<|endoftext|>": 0.0}


def feature(n_act: int = 2, n_neg: int = 2) -> FeatureExamples:
    test = [Example(ACT_TOKENS, (0,) * 5, (6.0, 0.0, 1.5, 0.0, 0.5 + k), k, 0, "top", True) for k in range(n_act)]
    neg = [Example(NEG_TOKENS, (0,) * 3, (0.0,) * 3, 10 + k, 0, "random", False) for k in range(n_neg)]
    return FeatureExamples(0, [], test, neg, 6.0)


def scripted(body, n) -> Reply:
    return Reply(body=echo_body(body["prompt"], SLOTS.get, int(body["logprobs"])))


def simulate(script, feature_examples: FeatureExamples, **cfg_kw):
    n = 2 * max(len(feature_examples.test), len(feature_examples.negatives))  # every text of both kinds
    cfg = AutointerpConfig(n_simulation=n, **cfg_kw)
    with LLMServer(script) as server:
        async def go():
            async with LLMClient(LLMConfig(base_url=server.url, llm="m", cache=False, backoff=0.01)) as c:
                return await simulation(c, cfg, feature_examples, 'Tokens: " ImportError"', mode="all_at_once")

        return asyncio.run(go()), server.requests


def test_prompt_lists_every_token_with_an_escaped_slot():
    p = simulation_prompt("Errors\tin an except clause,\nby name.", ACT_TOKENS + NEG_TOKENS[2:])
    tail = ("\nFeature 3\nDescription: Errors in an except clause, by name.\nActivations:\n<start>\n"
            " ImportError\t?\n:\t?\na\\tb\t?\n\\n    \t?\n\\t\t?\n<\\|endoftext|>\t?\n<end>\n")
    assert p.text.endswith(tail)
    assert p.n_slots == 6 and p.n_before == sum(len(lines) for _, lines, _ in SHOTS)
    assert p.text.count("\t") == p.n_before + p.n_slots  # one real tab per listed token, none elsewhere
    first = p.text.split("Feature 1\n")[1].split("<end>")[0]
    # the few-shot lines: Bills' trick of a few leading slots, then the values
    assert first.startswith('Description: The name of a loop variable, right after the keyword "for".\n'
                            "Activations:\n<start>\nfor\t?\n i\t?\n in\t?\n range\t0\n")
    assert " key\t8\n" in first and "\\n       \t0\n" in first


def test_slot_logprobs_give_hand_computed_expected_values():
    assert toy_tokens(" ImportError\t?") == [" Impo", "rtEr", "ror", "\t", "?"]  # a token in several pieces
    result, requests = simulate(scripted, feature())
    ex = feature()
    assert {r["path"] for r in requests} == {"/v1/completions"}
    # requests run concurrently, so the server may see them in any order: find an activating text's
    prompt = simulation_prompt('Tokens: " ImportError"', ACT_TOKENS).text
    body = next(r["body"] for r in requests if r["body"]["prompt"] == prompt)
    assert body["echo"] is True and body["logprobs"] == 15 and body["max_tokens"] == 1
    first = result["examples"][0]
    assert first["tokens"] == list(ACT_TOKENS)
    assert first["predicted"] == pytest.approx([round(EXPECTED[t], 3) for t in ACT_TOKENS], abs=1e-9)
    assert result["examples"][-1]["predicted"] == pytest.approx([EXPECTED[t] for t in NEG_TOKENS])
    assert first["normalised"] == [10, 0, 2, 0, 0]  # floor(10 a / 6): Bills' 0..10 scale
    assert result["mode"] == "all_at_once" and result["failures"] == {} and result["metrics"]["n_failed"] == 0
    true = [a for e in ex.test + ex.negatives for a in e.acts]
    pred = [EXPECTED[t] for e in ex.test + ex.negatives for t in e.tokens]
    assert result["score"] == pytest.approx(pearson(true, pred))
    assert result["metrics"]["pearson_activating"] == pytest.approx(
        pearson([a for e in ex.test for a in e.acts], [EXPECTED[t] for e in ex.test for t in e.tokens]))


def test_unreadable_answers_are_counted_and_never_crash_the_run():
    """Per text: no logprobs, no echo (llama.cpp answers
    for the generated token only), null slot entries, logprobs of the wrong shape, a tab merged with the
    slot, a refused request (told apart by the number of "q" tokens); the good text is still scored."""
    def script(body, n):
        prompt = body["prompt"]
        last = prompt.rsplit("<start>\n", 1)[1]
        kind = last.count("q")
        good = echo_body(prompt, lambda line: SLOTS.get(line, lp({"0": 1.0})))
        if kind == 1:
            del good["choices"][0]["logprobs"]
        elif kind == 2:
            lps = good["choices"][0]["logprobs"]
            for key in ("tokens", "token_logprobs", "top_logprobs", "text_offset"):
                lps[key] = lps[key][-1:]
        elif kind == 3:
            good = echo_body(prompt, lambda line: None)
        elif kind == 4:
            good["choices"][0]["logprobs"]["top_logprobs"] = "n/a"
        elif kind == 5:
            good = echo_body(prompt, SLOTS.get, merge_tab=True)
        elif kind == 6:
            return Reply(400, {"object": "error", "message": "This model's maximum context length is 64 tokens",
                               "type": "BadRequestError", "code": 400})
        return Reply(body=good)

    texts = [Example(("q",) * k + (" None",), (0,) * (k + 1), (0.0,) * k + (float(k),), k, 0, "top", True)
             for k in range(1, 7)] + [Example(NEG_TOKENS, (0,) * 3, (0.0, 1.0, 0.0), 9, 0, "top", True)]
    result, requests = simulate(script, FeatureExamples(0, [], texts, [], 6.0), parse_retries=1)
    assert result["failures"] == {"no_logprobs": 2, "no_echo": 2, "no_slot_values": 2, "slot_merged": 1,
                                  "request_refused": 1}
    assert result["metrics"]["n_failed"] == 6 and result["metrics"]["n_texts"] == 1
    assert [e["predicted"] is None for e in result["examples"]] == [True] * 6 + [False]
    assert result["score"] == pytest.approx(1.0)  # the good text: 0 / 0.5 / 0 against 0 / 1 / 0
    # answer-level kinds were asked again past the cache (parse_retries=1); slot-level ones were not
    assert len(requests) == 7 + 2


def _mode(script, **kw):
    cfg = AutointerpConfig(**{k: v for k, v in kw.items() if k != "api"})
    with LLMServer(script) as server:
        async def go():
            llm = LLMConfig(base_url=server.url, llm="m", cache=False, backoff=0.01, api=kw.get("api", "chat"))
            async with LLMClient(llm) as c:
                return await simulation_mode(c, cfg)

        return asyncio.run(go()), server.requests


def test_server_check_chooses_the_mode():
    assert _mode(answer)[0] == "chat"  # auto on a chat server: no request at all
    mode, requests = _mode(answer, api="completions")  # auto on a completions server: checked, then used
    assert mode == "all_at_once" and len(requests) == 1 and requests[0]["body"]["echo"] is True
    assert _mode(answer, simulation="all_at_once")[0] == "all_at_once"
    assert _mode(answer, simulation="chat", api="completions") == ("chat", [])


@pytest.mark.parametrize("script,match", [
    (lambda b, n: Reply(400, VLLM_REFUSAL), "refused a /completions request with echo and logprobs: "
                                            ".*HTTP 400: echo is not supported with logprobs"),
    (lambda b, n: Reply(400, {"error": {"message": "Requested sample logprobs of 15, which is greater than max "
                                                   "allowed: 5", "type": "BadRequestError", "code": 400}}),
     "HTTP 400: Requested sample logprobs"),
    (lambda b, n: Reply(404, {"detail": "Not Found"}), "HTTP 404"),
    (lambda b, n: Reply(body={"choices": [{"text": "ok", "logprobs": None}]}), "without log-probabilities"),
    (lambda b, n: Reply(body=echo_body(b["prompt"], SLOTS.get, merge_tab=True)), "tokenizes a tab"),
    (lambda b, n: Reply(body={"choices": [{"text": " ok", "logprobs": {
        "tokens": [" ok"], "token_logprobs": [-0.1], "top_logprobs": [{" ok": -0.1}], "text_offset": [0]}}]}),
     "did not echo"),
])
def test_a_server_that_cannot_stops_before_any_work(script, match):
    with pytest.raises(InterpError, match=match) as e:
        _mode(script, simulation="all_at_once")
    assert "--simulation chat" in str(e.value) and "--simulation-fallback" in str(e.value)


def test_fallback_to_chat_only_when_asked(caplog):
    with caplog.at_level(logging.WARNING):
        mode, requests = _mode(lambda b, n: Reply(400, VLLM_REFUSAL), simulation="all_at_once",
                               simulation_fallback=True)
    assert mode == "chat" and len(requests) == 1 and "Falling back to chat simulation" in caplog.text


def test_run_checks_the_server_before_explaining(own_demo_features):
    with LLMServer(lambda b, n: Reply(400, VLLM_REFUSAL)) as server:
        with pytest.raises(InterpError, match="echo"):
            run_autointerp(own_demo_features, AutointerpConfig(explainer="llm", run_name="sim-refused", max_features=4,
                                                           scorers="detection,simulation", simulation="all_at_once"),
                           SampleConfig(hard_negatives=0), LLMConfig(base_url=server.url, llm="fixture", cache=False),
                           progress=False)
        assert len(server.requests) == 1 and server.requests[0]["body"]["echo"] is True
    assert list(iter_records(own_demo_features / "explanations" / "sim-refused")) == []


def test_llm_run_all_at_once_end_to_end(own_demo_features, caplog):
    with LLMServer() as server:
        cfg = AutointerpConfig(explainer="llm", run_name="sim-all", max_features=8, scorers="simulation",
                               simulation="all_at_once")
        s = run_autointerp(own_demo_features, cfg, SampleConfig(hard_negatives=0),
                           LLMConfig(base_url=server.url, llm="fixture", concurrency=8, cache=False), progress=False)
        paths = [r["path"] for r in server.requests]
    assert s.scored == 8 and s.failures == {}
    recs = list(iter_records(s.run_dir))
    n_texts = sum(len(r["scores"]["simulation"]["examples"]) for r in recs)
    # 1 check + one request per text for the explanation and for its control; only the explainer on chat
    assert n_texts >= 8 * 6 and paths.count("/v1/completions") == 1 + 2 * n_texts
    assert paths.count("/v1/chat/completions") == 8
    assert all(r["scores"]["simulation"]["mode"] == "all_at_once" for r in recs)
    sim = s.summary["simulation"]
    assert sim["explanation"]["mean"] > sim["control"]["mean"]
    # where the control says something else (two features may share an explanation), the explanation wins clearly
    pairs = [(r["scores"]["simulation"]["score"], r["scores"]["simulation"]["control"]["score"]) for r in recs
             if r["scores"]["simulation"]["control"]["explanation"] != r["explanation"]]
    assert len(pairs) >= 5 and sum(e for e, _ in pairs) / len(pairs) > sum(c for _, c in pairs) / len(pairs) + 0.2
    assert s.usage["by_purpose"]["simulation_check"]["requests"] == 1
    with LLMServer() as server, caplog.at_level(logging.WARNING):  # resumed on chat: the 8 are kept, and said so
        more = AutointerpConfig(**{**cfg.__dict__, "max_features": 10, "simulation": "chat"})
        again = run_autointerp(own_demo_features, more, SampleConfig(hard_negatives=0),
                               LLMConfig(base_url=server.url, llm="fixture", cache=False), progress=False)
        assert not any(r["body"].get("echo") for r in server.requests)
    assert again.scored == 2 and "8 features of run sim-all were simulated all_at_once, not chat" in caplog.text
    modes = [r["scores"]["simulation"]["mode"] for r in iter_records(s.run_dir)]
    assert sorted(modes) == ["all_at_once"] * 8 + ["chat"] * 2


def test_unreadable_slots_are_counted_in_the_run(own_demo_features):
    """Every other simulation request is answered by a tokenizer that merges tabs with the slot: those texts
    are counted as slot_merged in the records and in run.json, and the run finishes."""
    def script(body, n):
        if body.get("echo") and n > 0 and n % 2:
            return Reply(body=echo_body(body["prompt"], lambda line: None, merge_tab=True))
        return answer(body, n)

    with LLMServer(script) as server:
        cfg = AutointerpConfig(explainer="llm", run_name="sim-merged", max_features=4, scorers="simulation",
                               simulation="all_at_once")
        s = run_autointerp(own_demo_features, cfg, SampleConfig(hard_negatives=0),
                           LLMConfig(base_url=server.url, llm="fixture", cache=False), progress=False)
        n_bad = sum(1 for k, r in enumerate(server.requests) if r["body"].get("echo") and k > 0 and k % 2)
    assert n_bad > 4 and s.scored == 4 and s.failures == {"slot_merged": n_bad}
    recs = list(iter_records(s.run_dir))
    mine = sum(r["scores"]["simulation"]["metrics"]["n_failed"] for r in recs)
    assert sum(r["scores"]["simulation"]["failures"].get("slot_merged", 0) for r in recs) == n_bad >= mine
    assert json.loads((s.run_dir / "run.json").read_text())["failures"] == {"slot_merged": n_bad}
