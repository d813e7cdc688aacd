"""Evaluation metrics on a real cached store of the tiny model, and the train/eval CLI."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from interp.activations.cache import CacheConfig, cache_activations
from interp.dictionaries import create
from interp.errors import InterpError
from interp.model.corpus import CorpusConfig
from interp.training import TrainConfig, train_dictionary
from interp.training.evals import density_histogram_figure, evaluate, frontier_figure, mmcs

TORCH_THREADS = 1  # see conftest.py
RESID, LN2, MLP = "blocks.0.hook_resid_post", "blocks.0.ln2.hook_normalized", "blocks.0.hook_mlp_out"


@pytest.fixture(scope="module")
def store(tiny_model_dir, corpus_dir, tmp_path_factory):
    cfg = CacheConfig(
        model=str(tiny_model_dir),
        hooks=(RESID, LN2, MLP),
        corpus=CorpusConfig(source=str(corpus_dir)),
        n_tokens=2048,
        ctx_len=32,
        batch_size=8,
    )
    return cache_activations(cfg, tmp_path_factory.mktemp("store"), progress=False)


@pytest.fixture(scope="module")
def trained(store, tmp_path_factory):
    cfg = TrainConfig(
        architecture="topk", hook=RESID, expansion=4, k=8, n_tokens=16384, batch_size=256, lr=3e-3
    )
    return train_dictionary(cfg, store, tmp_path_factory.mktemp("dict"), progress=False).dictionaries[0]


def test_identity_dictionary_scores_perfectly(store, tiny_model):
    """A ReLU dictionary whose atoms are +-e_i reconstructs exactly: FVU 0, CE recovered 1, KL 0."""
    d_model = store.d(RESID)
    d = create("relu", d_model, 2 * d_model, hook_in=RESID, model_fingerprint=store.model["fingerprint"])
    with torch.no_grad():
        eye = torch.eye(d_model)
        d.W_enc_.copy_(torch.cat([eye, -eye], 1))
        d.W_dec_.copy_(torch.cat([eye, -eye], 0))
        d.b_enc.zero_()
        d.b_dec.zero_()
    r = evaluate(d, store, model=tiny_model, n_tokens=1024, ce_tokens=256)
    assert r.fvu < 1e-10 and r.cosine == pytest.approx(1.0) and r.shrinkage == pytest.approx(1.0)
    assert r.l0 == pytest.approx(d_model, abs=0.5)
    assert r.ce_loss_recovered == pytest.approx(1.0, abs=1e-4) and r.kl < 1e-6
    assert (
        r.ce_ablated != r.ce_clean and r.kl_ablated > 0
    )  # the tiny model is random: ablation only changes CE
    assert r.dead_fraction == 0.0 and 0 <= r.dense_fraction <= 1


def test_trained_topk_metrics_are_consistent(store, trained, tiny_model):
    from interp.dictionaries import load_dictionary

    d = load_dictionary(trained)
    r = evaluate(d, store, model=tiny_model, n_tokens=2048, ce_tokens=512)
    assert r.l0 <= 8 and 0 < r.fvu < 1 and 0 < r.cosine <= 1
    assert r.ce_clean <= r.ce_spliced + 0.5 and r.ce_loss_recovered > 0.5
    m = r.to_dict()
    assert (
        sum(m["density_log10_histogram"]["counts"]) + m["density_log10_histogram"]["dead"][0] == d.cfg.d_sae
    )
    assert density_histogram_figure(r).data and frontier_figure([("topk", r)]).data[0].x == (r.l0,)
    json.dumps(m)


def test_transcoder_on_a_real_store(store, tiny_model, tmp_path):
    cfg = TrainConfig(
        architecture="skip_transcoder",
        hook=LN2,
        hook_out=MLP,
        expansion=4,
        k=8,
        n_tokens=8192,
        batch_size=256,
        lr=3e-3,
    )
    from interp.dictionaries import load_dictionary

    d = load_dictionary(train_dictionary(cfg, store, tmp_path, progress=False).dictionaries[0])
    assert d.cfg.hook_out == MLP and d.W_skip is not None
    r = evaluate(d, store, model=tiny_model, n_tokens=1024, ce_tokens=256)
    assert r.fvu < 1.0 and r.ce_loss_recovered is not None


def test_dictionary_for_another_model_is_refused(store, trained):
    from interp.dictionaries import load_dictionary

    d = load_dictionary(trained)
    d.cfg = dataclasses.replace(d.cfg, model_fingerprint="0" * 16)
    with pytest.raises(InterpError, match="trained on model"):
        evaluate(d, store)


def test_mmcs_matches_its_definition():
    gt = torch.eye(3)
    learned = torch.tensor([[1.0, 0, 0], [0, 1, 1], [5, 0, 0]])
    assert mmcs(learned, gt) == pytest.approx((1 + 2 * 2**-0.5) / 3)


def test_cli_train_then_eval(store, tiny_model_dir, tmp_path, capsys):
    from cli.main import main

    (tmp_path / "cfg.json").write_text(json.dumps({"expansion": 2, "n_tokens": 2048, "batch_size": 256}))
    rc = main(
        [
            "train",
            "--store",
            str(store.path),
            "--out",
            str(tmp_path / "o"),
            "--config",
            str(tmp_path / "cfg.json"),
            "--architecture",
            "relu",
            "--hook",
            RESID,
            "--param",
            "l1_coeff=1.5",
            "--no-progress",
        ]
    )
    assert rc == 0
    cfg = json.loads((tmp_path / "o" / f"relu-{RESID}" / "cfg.json").read_text())
    assert cfg["params"]["l1_coeff"] == 1.5 and cfg["d_sae"] == 2 * store.d(RESID)
    rc = main(
        [
            "eval",
            "--dictionary",
            str(tmp_path / "o" / f"relu-{RESID}"),
            "--store",
            str(store.path),
            "--model",
            str(tiny_model_dir),
            "--ce-tokens",
            "128",
        ]
    )
    assert rc == 0 and "ce_loss_recovered" in capsys.readouterr().out
    assert json.loads((tmp_path / "o" / f"relu-{RESID}" / "eval.json").read_text())["n_tokens"] > 0
    assert (
        main(
            [
                "train",
                "--store",
                str(store.path),
                "--out",
                str(tmp_path / "p"),
                "--architecture",
                "topk",
                "--param",
                "bogus=1",
            ]
        )
        == 2
    )


def test_cli_trains_a_sweep_from_a_list_config_in_one_pass(store, tmp_path, capsys):
    from cli.main import main

    sweep = [{"name": f"topk-k{k}", "architecture": "topk", "k": k} for k in (2, 8)]
    sweep.append({"name": "relu", "architecture": "relu", "expansion": 4})
    (tmp_path / "sweep.json").write_text(json.dumps(sweep))
    common = ["--store", str(store.path), "--hook", RESID, "--n-tokens", "2048", "--batch-size", "256", "--no-progress"]
    rc = main(["train", "--out", str(tmp_path / "o"), "--config", str(tmp_path / "sweep.json"), "--expansion", "2",
               *common])
    assert rc == 0
    out = capsys.readouterr().out
    got = {n: json.loads((tmp_path / "o" / n / "cfg.json").read_text()) for n in ("topk-k2", "topk-k8", "relu")}
    assert got["topk-k2"]["params"]["k"] == 2 and got["topk-k8"]["params"]["k"] == 8
    assert got["relu"]["architecture"] == "relu"
    assert {c["d_sae"] for c in got.values()} == {2 * store.d(RESID)}, "--expansion overrides every entry"
    assert "L0 2.0" in out and "L0 8.0" in out
    log = [json.loads(line) for line in (tmp_path / "o" / "train_log.jsonl").read_text().splitlines()]
    assert {row["dictionary"] for row in log} == {"topk-k2", "topk-k8", "relu"}
    (tmp_path / "bad.json").write_text("[1, 2]")
    rc = main(["train", "--out", str(tmp_path / "b"), "--config", str(tmp_path / "bad.json"), *common])
    assert rc != 0 and "list of them" in capsys.readouterr().err and not (tmp_path / "b").exists()
