"""Circuit tasks: construction, the length rule, metrics, and the inputs they refuse."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import make_tiny_model

import interp
from interp.circuits.generators import TASKS, induction_task, make_task
from interp.circuits.literature import NAMES, YEAR_NOUNS
from interp.circuits.tasks import Task, check_task, metric_values, task_from_text
from interp.errors import InterpError

TORCH_THREADS = 1  # see conftest.py


@pytest.fixture(scope="module")
def gpt2_like(tmp_path_factory: pytest.TempPathFactory):
    """A tiny model whose tokenizer has GPT-2's single-token names, years and two-digit numbers."""
    extra = ([" " + n for n in NAMES] + [f"{y:02d}" for y in range(100)] + [f" {c}" for c in range(11, 18)]
             + [" " + w for w in YEAR_NOUNS])
    path = make_tiny_model(tmp_path_factory.mktemp("gpt2-like"), extra_tokens=extra, n_ctx=128)
    return interp.load_model(str(path))


def test_induction_prompts_repeat_and_corruption_breaks_the_copy(demo_model):
    t = induction_task(demo_model, n_prompts=6, seq_len=5, seed=3)
    assert t.clean.shape == (6, 10) and t.clean[:, 0].eq(demo_model.info.bos_token_id).all()
    first, second = t.clean[:, 1:6], t.clean[:, 6:]
    assert torch.equal(second, first[:, :4]) and torch.equal(t.answers[:, 0], first[:, 4])
    other = t.corrupted[:, 1:6]
    for row in range(6):
        assert not set(other[row].tolist()) & set(first[row].tolist())
        assert len(set(first[row].tolist())) == 5
    assert torch.equal(t.corrupted[:, 6:], second) and torch.equal(t.wrong[:, 0], other[:, 4])
    assert torch.equal(induction_task(demo_model, n_prompts=6, seq_len=5, seed=3).clean, t.clean)
    assert not torch.equal(induction_task(demo_model, n_prompts=6, seq_len=5, seed=4).clean, t.clean)


def test_check_task_reports_the_two_ends(demo_model):
    t = induction_task(demo_model, n_prompts=8, seq_len=8)
    base = check_task(demo_model, t)
    logits = demo_model.forward(t.clean)[:, -1]
    want = logits.gather(1, t.answers)[:, 0] - logits.gather(1, t.wrong)[:, 0]
    assert torch.allclose(base.m_clean, want, atol=1e-4)
    assert base.gap == pytest.approx(float(base.m_clean.mean() - base.m_corrupted.mean()))


def test_metrics_by_hand():
    final = torch.tensor([[2.0, 0.0, 1.0, -1.0]])
    answers, wrong = torch.tensor([[0, -1]]), torch.tensor([[1, 2]])
    assert metric_values("logit_diff", final, answers, wrong).item() == pytest.approx(2.0 - 1.0)
    p = torch.softmax(final, -1)[0]
    assert metric_values("prob_diff", final, answers, wrong).item() == pytest.approx(float(p[0] - p[1] - p[2]))
    assert metric_values("kl", final, answers, wrong, final).item() == pytest.approx(0.0, abs=1e-7)
    other = torch.tensor([[0.0, 2.0, 1.0, -1.0]])
    q = torch.softmax(other, -1)[0]
    kl = float((p * (p.log() - q.log())).sum())
    assert metric_values("kl", other, answers, wrong, final).item() == pytest.approx(kl, rel=1e-5)


def test_length_rule_refuses_or_pads(gpt2_like):
    clean = ["When Mary and John went to the store, John gave a drink to"]
    corrupt = ["When Mary and John went to the big store, John gave a drink to"]
    with pytest.raises(InterpError, match="different lengths.*length_policy='pad'"):
        task_from_text(gpt2_like, "x", clean, corrupt, [" Mary"], [" John"])
    t = task_from_text(gpt2_like, "x", clean * 2, corrupt + clean, [" Mary"] * 2, [" John"] * 2, length_policy="pad")
    n_clean = len(gpt2_like.to_tokens(clean[0])[0])
    n_corrupt = len(gpt2_like.to_tokens(corrupt[0])[0])
    assert t.seq_len == n_corrupt > n_clean
    assert t.clean_pos.tolist() == [n_clean - 1] * 2 and t.corrupted_pos.tolist() == [n_corrupt - 1, n_clean - 1]
    logits = gpt2_like.forward(t.clean)
    alone = gpt2_like.forward(gpt2_like.to_tokens(clean[0]))
    assert torch.allclose(logits[0, n_clean - 1], alone[0, -1], atol=1e-4)  # padding at the end changes nothing


def test_answers_must_be_single_tokens(gpt2_like):
    with pytest.raises(InterpError, match="'zebrafish' is .* tokens.*single"):
        task_from_text(gpt2_like, "x", ["When Mary"], ["When John"], ["zebrafish"], [" John"])


def test_constant_metric_is_refused(demo_model):
    t = induction_task(demo_model, n_prompts=4, seq_len=4)
    same = Task("same", t.clean, t.clean.clone(), t.answers, t.wrong)
    with pytest.raises(InterpError, match="same on clean and corrupted"):
        check_task(demo_model, same)


def test_nan_metric_is_refused(tmp_path: Path):
    from safetensors.torch import load_file, save_file

    path = make_tiny_model(tmp_path / "nan")
    weights = load_file(path / "model.safetensors")
    weights["transformer.ln_f.weight"][0] = float("nan")
    save_file(weights, path / "model.safetensors", metadata={"format": "pt"})
    model = interp.load_model(str(path))
    with pytest.raises(InterpError, match="NaN or infinite"):
        check_task(model, induction_task(model, n_prompts=4, seq_len=4))


def test_bad_token_ids_and_metric_names(demo_model):
    t = induction_task(demo_model, n_prompts=2, seq_len=4)
    with pytest.raises(InterpError, match="metric must be one of"):
        Task("x", t.clean, t.corrupted, t.answers, t.wrong, metric="accuracy")
    with pytest.raises(InterpError, match="needs a wrong-answer token"):
        Task("x", t.clean, t.corrupted, t.answers, t.wrong[:, :0])
    big = Task("x", t.clean, t.corrupted, t.answers + demo_model.info.d_vocab, t.wrong)
    with pytest.raises(InterpError, match="only 4096 tokens"):
        check_task(demo_model, big)
    with pytest.raises(InterpError, match="Unknown task 'inductoin'.*'induction'"):
        make_task("inductoin", demo_model)


def test_gpt2_tasks_build_with_single_token_words(gpt2_like):
    ioi = make_task("ioi", gpt2_like, n_prompts=12, seed=1)
    for text, a, w in zip(ioi.texts, ioi.answers[:, 0], ioi.wrong[:, 0]):
        io, s = gpt2_like.tokenizer.decode([int(a)]), gpt2_like.tokenizer.decode([int(w)])
        assert text.count(io) == 1 and text.count(s) == 2 and text.endswith(" to")
    assert (ioi.clean != ioi.corrupted).any(1).all()
    gt = make_task("greater-than", gpt2_like, n_prompts=12, seed=1)
    assert gt.metric == "prob_diff"
    for text, answers, wrong in zip(gt.texts, gt.answers, gt.wrong):
        yy = int(text.split("year ")[1][2:4])
        got = sorted(int(gpt2_like.tokenizer.decode([int(i)])) for i in answers if i >= 0)
        bad = sorted(int(gpt2_like.tokenizer.decode([int(i)])) for i in wrong if i >= 0)
        assert got == list(range(yy + 1, 100)) and bad == list(range(0, yy + 1))


def test_gpt2_tasks_on_the_demo_tokenizer(demo_model):
    """The demo's code tokenizer cannot express IOI or greater-than (clear refusal); docstring builds."""
    with pytest.raises(InterpError, match="names are single tokens"):
        make_task("ioi", demo_model)
    with pytest.raises(InterpError, match="two-digit number"):
        make_task("greater-than", demo_model)
    doc = make_task("docstring", demo_model, n_prompts=8)
    assert doc.clean.shape == doc.corrupted.shape and doc.metric == "logit_diff"
    assert all(":param" in t for t in doc.texts) and set(TASKS) >= {"induction", "ioi", "greater-than", "docstring"}


@pytest.mark.parametrize("name", ["repeated-identifier", "self-attribute"])
def test_code_tasks_corrupt_only_the_evidence(demo_model, name):
    t = make_task(name, demo_model, n_prompts=8, seed=1)
    assert t.metric == "logit_diff" and torch.equal(t.clean_pos, t.corrupted_pos)
    for row in range(t.n):
        differ = (t.clean[row] != t.corrupted[row]).nonzero().flatten().tolist()
        assert len(differ) == 1 and differ[0] < t.clean_pos[row]
        source = differ[0]
        assert t.clean[row, source] == t.answers[row, 0] and t.corrupted[row, source] == t.wrong[row, 0]
        assert int(t.wrong[row, 0]) not in t.clean[row, : t.clean_pos[row] + 1].tolist()
    assert t.clean[:, 0].eq(demo_model.info.bos_token_id).all()
    base = check_task(demo_model, t)
    assert base.gap > 0  # the evidence helps the demo model predict the target
