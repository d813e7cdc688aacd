"""The analyze stage against a brute-force computation over a small real activation store."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import pytest
import torch

from interp.activations.cache import CacheConfig, cache_activations
from interp.activations.store import ActivationStore
from interp.errors import InterpError
from interp.features import AnalyzeConfig, analyze_features, load_feature_store
from interp.features.stats import hash_keys
from interp.model.corpus import CorpusConfig

RESID = "blocks.0.hook_resid_post"  # the stand-in SAEs of conftest.py read it
HOOK_Z = "blocks.1.attn.hook_z"


CFG = AnalyzeConfig(
    n_top=5,
    n_quantiles=3,
    per_quantile=2,
    quantile_pool=7,
    n_random=3,
    window=12,
    bins_per_decade=4,
    n_logits=4,
    n_neighbours=3,
    cooc_rows=1 << 20,
    chunk_rows=64,
)


@pytest.fixture(scope="module")
def store(tiny_model_dir, corpus_dir, tmp_path_factory) -> ActivationStore:
    cfg = CacheConfig(
        model=str(tiny_model_dir),
        hooks=(RESID, HOOK_Z),
        corpus=CorpusConfig(source=str(corpus_dir)),
        n_tokens=1024,
        ctx_len=32,
        batch_size=4,
        shard_mb=0.05,
    )
    return cache_activations(cfg, tmp_path_factory.mktemp("store") / "s", progress=False)


@pytest.fixture(scope="module")
def analyzed(store, tiny_model, tmp_path_factory, stand_in_sae):
    sae = stand_in_sae(32, 24, RESID, store.model["fingerprint"])
    path = analyze_features(sae, store, tmp_path_factory.mktemp("fs") / "f", CFG, tiny_model, progress=False)
    return sae, load_feature_store(path)


def _brute(sae: Any, store: ActivationStore, hook: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Every row's activations (BOS rows zeroed), and per-context (max, argmax), in one big encode."""
    x = torch.cat([store.read(f"act/{hook}", i) for i in range(len(store.shards))])
    with torch.no_grad():
        f = sae.encode(x)
    f[store.column("pos") < 0] = 0
    return f, f.view(-1, store.ctx_len, f.shape[1])


def test_counts_and_histograms_equal_brute_force(analyzed, store):
    sae, fs = analyzed
    f, _ = _brute(sae, store, RESID)
    t = fs.tensors
    n = int((store.column("pos") >= 0).sum())
    assert len(store.shards) > 1 and fs.manifest["n_rows"] == store.n_rows
    assert torch.equal(t["count"], (f > 0).sum(0))
    assert (t["density"] > 0).sum() >= 20 and t["density"].max() < 1  # sparse, mostly alive, one dead
    torch.testing.assert_close(t["density"], (f > 0).sum(0).float() / n)
    torch.testing.assert_close(t["max_act"], f.max(0).values)
    torch.testing.assert_close(t["mean_act"], (f.sum(0) / (f > 0).sum(0)).nan_to_num(0.0))
    edges = t["hist_edges"]
    assert edges[0] == pytest.approx(CFG.hist_min) and edges[-1] == pytest.approx(CFG.hist_max)
    for j in range(f.shape[1]):
        a = f[:, j][f[:, j] > 0]
        ref = [int((a < edges[0]).sum())]
        ref += [int(((a >= lo) & (a < hi)).sum()) for lo, hi in zip(edges[:-1], edges[1:])]
        ref += [int((a >= edges[-1]).sum())]
        assert t["hist"][j].tolist() == ref, j


def test_examples_equal_brute_force(analyzed, store):
    sae, fs = analyzed
    f, fc = _brute(sae, store, RESID)
    t, L, W = fs.tensors, store.ctx_len, CFG.window
    cmax, cpos = fc.max(dim=1)  # (C, F)
    keys = hash_keys(torch.arange(cmax.shape[0]), cmax.shape[1], CFG.seed)
    rkeys = hash_keys(torch.arange(cmax.shape[0]), cmax.shape[1], CFG.seed + 1)
    tokens = store.column("tokens").long()
    for j in range(f.shape[1]):
        fired = [c for c in range(cmax.shape[0]) if cmax[c, j] > 0]
        top = sorted(fired, key=lambda c: -cmax[c, j].item())[: CFG.n_top]  # sorted() is stable
        assert t["top_ctx"][j].tolist() == top + [-1] * (CFG.n_top - len(top))
        pool = sorted(fired, key=lambda c: keys[c, j].item())[: CFG.quantile_pool]
        by_val = sorted(pool, key=lambda c: cmax[c, j].item()) or [None]
        bands = [
            [c for r, c in enumerate(by_val) if r * CFG.n_quantiles // len(by_val) == b]
            for b in range(CFG.n_quantiles)
        ]
        want = [
            sorted((c for c in b if c is not None), key=lambda c: keys[c, j].item())[: CFG.per_quantile]
            for b in bands
        ]
        got = t["quant_ctx"][j].view(CFG.n_quantiles, CFG.per_quantile)
        assert [[c for c in row if c >= 0] for row in got.tolist()] == want
        quiet = [c for c in range(cmax.shape[0]) if cmax[c, j] <= 0]
        rand = sorted(quiet, key=lambda c: rkeys[c, j].item())[: CFG.n_random]
        assert [c for c in t["rand_ctx"][j].tolist() if c >= 0] == rand
        assert (t["rand_acts"][j, : len(rand)] == 0).all() and (t["rand_tokens"][j, : len(rand)] >= 0).all()
        for k, c in enumerate(top):  # windows: ids and per-token activations of the feature
            start = min(max(int(cpos[c, j]) - (W - W // 4), 0), L - W)
            rows = slice(c * L + start, c * L + start + W)
            assert int(t["top_start"][j, k]) == start
            assert t["top_tokens"][j, k].tolist() == tokens[rows].tolist()
            torch.testing.assert_close(t["top_acts"][j, k], f[rows, j])
            assert t["top_acts"][j, k, int(cpos[c, j]) - start] == pytest.approx(float(cmax[c, j]), rel=1e-5)
    # common features lack negatives, rare ones fill few slots, a dead one has none: all paths ran
    assert (t["top_ctx"] < 0).any() and (t["top_ctx"] >= 0).any() and (t["rand_start"] >= 0).any()
    assert (t["quant_band"] == CFG.n_quantiles - 1).any()


def test_weight_statistics(analyzed, tiny_model, store):
    sae, fs = analyzed
    t = fs.tensors
    logits = sae.W_dec.detach() @ tiny_model.W_U.detach()
    assert torch.equal(t["logit_pos_ids"].long(), logits.topk(CFG.n_logits, dim=1).indices)
    torch.testing.assert_close(t["logit_neg"], logits.topk(CFG.n_logits, dim=1, largest=False).values)
    unit = torch.nn.functional.normalize(sae.W_dec.detach(), dim=1)
    cos = unit @ unit.T
    cos.fill_diagonal_(-2)
    torch.testing.assert_close(t["nbr_dec_cos"], cos.topk(CFG.n_neighbours, dim=1).values)
    f, _ = _brute(sae, store, RESID)
    b = (f > 0).float()  # cooc_rows covers the store, so the sample is every row
    both = b.T @ b
    jac = both / (b.sum(0)[:, None] + b.sum(0)[None, :] - both).clamp(min=1)
    jac.fill_diagonal_(0)
    torch.testing.assert_close(t["nbr_cooc"], jac.topk(CFG.n_neighbours, dim=1).values)
    rec = fs.feature(3)
    assert rec["logits"]["pos"][0][0] == tiny_model.token_strings([int(t["logit_pos_ids"][3, 0])])[0]
    assert rec["examples"]["top"][0]["tokens"] == tiny_model.token_strings(t["top_tokens"][3, 0])
    assert "head_attr" not in rec


def test_attention_sae_head_attribution_and_resume(store, tiny_model, tmp_path, stand_in_sae):
    sae = stand_in_sae(32, 8, HOOK_Z, store.model["fingerprint"], seed=1)
    cfg = AnalyzeConfig(n_top=2, quantile_pool=10, window=8, n_logits=3, cooc_rows=64, max_rows=256)
    out = analyze_features(sae, store, tmp_path / "z", cfg, tiny_model, progress=False)
    fs = load_feature_store(out)
    norms = sae.W_dec.detach().view(8, 4, 8).norm(dim=-1)
    torch.testing.assert_close(fs.tensors["head_attr"], norms / norms.sum(1, keepdim=True))
    assert "logit_pos" not in fs.tensors  # hook_z is not the residual stream
    assert fs.manifest["n_rows"] == 256 and fs.manifest["hook_shape"] == [4, 8]
    stamp = (out / "features.safetensors").stat().st_mtime_ns
    analyze_features(sae, store, out, cfg, tiny_model, progress=False)  # complete: nothing is redone
    assert (out / "features.safetensors").stat().st_mtime_ns == stamp


def test_bad_inputs_fail_before_work(store, tiny_model, tmp_path, stand_in_sae):
    with pytest.raises(InterpError, match="d_in=16"):
        analyze_features(stand_in_sae(16, 4, RESID, None), store, tmp_path / "a", CFG, tiny_model)
    with pytest.raises(InterpError, match="trained on model"):
        analyze_features(stand_in_sae(32, 4, RESID, "0" * 16), store, tmp_path / "b", CFG, tiny_model)
    with pytest.raises(InterpError, match="Did you mean"):
        analyze_features(stand_in_sae(32, 4, "blocks.0.hook_resid_pst", None), store, tmp_path / "c", CFG)
    with pytest.raises(InterpError, match="n_top"):
        AnalyzeConfig(n_top=0)
    assert not Path(tmp_path / "a").exists()


def test_every_analyze_config_field_is_a_cli_flag():
    import dataclasses

    from cli.analyze import CONFIG
    from cli.config_flags import config_fields, config_kwargs
    from cli.main import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices["analyze"]
    flags = {a.dest: a for a in sub._actions}
    fields = dataclasses.fields(AnalyzeConfig)
    docs = {f.name: f.doc for f in config_fields(*CONFIG)}
    for f in fields:
        assert f.name in flags, f"AnalyzeConfig.{f.name} has no interp analyze flag"
        assert flags[f.name].default == f.default and flags[f.name].help.startswith(docs[f.name])
        assert len(docs[f.name]) > 10  # every field carries a docstring, which is the help
    required = ["--dictionary", "d", "--store", "s", "--out", "o"]
    args = parser.parse_args(["analyze", *required, "--n-top", "7", "--max-rows", "64", "--hist-min", "0.5"])
    cfg = AnalyzeConfig(**config_kwargs(args, *CONFIG))
    assert (cfg.n_top, cfg.max_rows, cfg.hist_min, cfg.window) == (7, 64, 0.5, AnalyzeConfig().window)
    assert config_kwargs(parser.parse_args(["analyze", *required]), *CONFIG) == dataclasses.asdict(AnalyzeConfig())


def test_peak_memory_does_not_grow_with_the_store():
    """Peak RSS of analyze (bench/analyze.py --memory: each size in a fresh process) on stores 16x apart.

    Holding the activations of the larger store would take 131072 x 2048 x 4 B = 1 GiB more."""
    import re
    import subprocess
    import sys

    bench = Path(__file__).resolve().parents[1] / "bench" / "analyze.py"
    cmd = [sys.executable, str(bench), "--memory", "8192", "131072", "--d", "32", "--features", "2048"]
    out = subprocess.run([*cmd, "--threads", "1"], check=True, capture_output=True, text=True, timeout=120).stdout
    small, large = (float(x) for x in re.findall(r"peak RSS\s+(\d+) MiB", out))
    assert large - small < 160, out


def test_signed_dictionary_windows_equal_brute_force(store, tiny_model, tmp_path, stand_in_sae):
    sae = stand_in_sae(32, 6, RESID, store.model["fingerprint"], seed=2, signed=True)
    cfg = AnalyzeConfig(n_top=3, quantile_pool=8, n_quantiles=2, per_quantile=2, n_random=3, window=8)
    fs = load_feature_store(analyze_features(sae, store, tmp_path / "s", cfg, tiny_model, progress=False))
    f, _ = _brute(sae, store, RESID)
    t, L = fs.tensors, store.ctx_len
    assert (f < 0).any() and (t["rand_acts"] < 0).any()
    for kind in ("top", "quant", "rand"):
        for j, k in (t[f"{kind}_start"] >= 0).nonzero().tolist():
            row = int(t[f"{kind}_ctx"][j, k]) * L + int(t[f"{kind}_start"][j, k])
            torch.testing.assert_close(t[f"{kind}_acts"][j, k], f[row : row + cfg.window, j])
