"""Training on activations computed on the fly (interp.stream.ModelSource), and bf16 autocast training."""

from __future__ import annotations

import json

import pytest
import torch

from interp.activations.cache import CacheConfig, cache_activations
from interp.activations.live import ModelSource
from interp.activations.source import act_key, grad_key
from interp.activations.synthetic import toy_superposition
from interp.activations.tensors import TensorSource
from interp.dictionaries import load_dictionary
from interp.errors import InterpError
from interp.model.corpus import CorpusConfig
from interp.training import TrainConfig, train_dictionary

HOOK = "blocks.0.hook_resid_post"


def _source(tiny_model, corpus_dir, **kw):
    return ModelSource(tiny_model, [HOOK], CorpusConfig(source=str(corpus_dir)), ctx_len=32, batch_contexts=4, **kw)


def test_rows_equal_the_cached_store_with_gradients(tiny_model_dir, tiny_model, corpus_dir, tmp_path):
    """The same corpus and ctx_len give the same rows, activations and LM-loss gradients, as the cache."""
    cfg = CacheConfig(model=str(tiny_model_dir), hooks=(HOOK,), corpus=CorpusConfig(source=str(corpus_dir)),
                      n_tokens=32 * 12, ctx_len=32, batch_size=4, with_grads=True)
    store = cache_activations(cfg, tmp_path / "store", progress=False)
    src = _source(tiny_model, corpus_dir, n_tokens=32 * 12)
    assert src.d(HOOK) == store.d(HOOK) and src.has_grads
    assert src.model["fingerprint"] == store.model["fingerprint"]
    rows = {k: torch.cat([r[k] for r in src._epoch([HOOK], True, 0, None, exclude_bos=False)])
            for k in (act_key(HOOK), grad_key(HOOK))}
    for key, got in rows.items():
        want = torch.cat([store.read(key, i) for i in range(len(store.shards))])
        assert got.shape == want.shape
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


def test_batches_are_seeded_shuffled_and_drop_bos(tiny_model, corpus_dir):
    src = _source(tiny_model, corpus_dir, n_tokens=32 * 16)
    a = [b.acts[HOOK] for b in src.batches(HOOK, 64, seed=3)]
    b = [b.acts[HOOK] for b in src.batches(HOOK, 64, seed=3)]
    c = [b.acts[HOOK] for b in src.batches(HOOK, 64, seed=4)]
    assert len(a) == len(b) > 2 and all(torch.equal(x, y) for x, y in zip(a, b))
    assert not all(torch.equal(x, y) for x, y in zip(a, c))
    unshuffled = torch.cat([r[act_key(HOOK)] for r in src._epoch([HOOK], False, 0, None, exclude_bos=True)])
    every = torch.cat(a)
    assert len(every) == len(unshuffled) - len(unshuffled) % 64
    dist = torch.cdist(every, unshuffled, compute_mode="donot_use_mm_for_euclid_dist")
    assert dist.min(1).values.max() == 0, "every batch row is a corpus row"
    assert not torch.equal(every, unshuffled[: len(every)]), "shuffled"


def test_trains_gsae_on_the_fly_and_resumes_bit_identically(tiny_model, corpus_dir, tmp_path, interrupting):
    cfg = TrainConfig(architecture="gsae", hook=HOOK, d_sae=64, k=4, n_tokens=64 * 24, batch_size=64,
                      checkpoint_every=5, init_tokens=256, log_every=4)
    full = train_dictionary(cfg, _source(tiny_model, corpus_dir), tmp_path / "a", progress=False)
    d = load_dictionary(full.dictionaries[0])
    assert d.cfg.training["source"] == "ModelSource" and d.cfg.model_name
    (metrics,) = full.metrics.values()
    assert metrics["l0"] <= 4 and metrics["fvu"] < 1
    with pytest.raises(KeyboardInterrupt):  # stopped after the checkpoint at step 10
        train_dictionary(cfg, interrupting(_source(tiny_model, corpus_dir), after=12), tmp_path / "b",
                         progress=False)
    assert json.loads((tmp_path / "b" / "checkpoint" / "state.json").read_text())["step"] == 10
    resumed = load_dictionary(
        train_dictionary(cfg, _source(tiny_model, corpus_dir), tmp_path / "b", progress=False).dictionaries[0]
    )
    for name, value in d.state_dict().items():
        assert torch.equal(value, resumed.state_dict()[name]), name


def test_bad_model_source_input_is_refused(tiny_model, corpus_dir, tmp_path):
    with pytest.raises(InterpError, match="blocks.0.hook_resid_post"):
        ModelSource(tiny_model, ["blocks.0.hook_resid_postt"], CorpusConfig(source=str(corpus_dir)), ctx_len=32)
    with pytest.raises(InterpError, match="ctx_len"):
        ModelSource(tiny_model, [HOOK], str(corpus_dir), ctx_len=10_000)
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "a.txt").write_text("")
    with pytest.raises(InterpError):
        ModelSource(tiny_model, [HOOK], CorpusConfig(source=str(empty)), ctx_len=32)


def test_cli_trains_from_a_model_without_a_store(tiny_model_dir, corpus_dir, tmp_path, capsys):
    from cli.main import main

    out = tmp_path / "run"
    rc = main(["train", "--model", str(tiny_model_dir), "--corpus", str(corpus_dir), "--ctx-len", "32",
               "--hook", HOOK, "--architecture", "topk", "-k", "4", "--d-sae", "64", "--n-tokens", "1024",
               "--batch-size", "128", "--out", str(out), "--no-progress"])
    assert rc == 0
    d = load_dictionary(out / f"topk-{HOOK}")
    assert d.cfg.d_in == 32 and d.cfg.hook_in == HOOK
    capsys.readouterr()
    rc = main(["train", "--model", str(tiny_model_dir), "--corpus", str(corpus_dir), "--out", str(tmp_path / "x"),
               "--architecture", "topk", "--no-progress"])
    assert rc != 0 and "needs --hook" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize("arch", ["topk", "batchtopk", "mp"])
def test_bf16_autocast_trains_and_keeps_fp32_weights(arch, tmp_path):
    toy = toy_superposition(4096, d=32, n_features=64, p_active=0.04, seed=0)
    kw = dict(architecture=arch, d_sae=64, k=4, n_tokens=4096 * 4, batch_size=256, normalization="none")
    fp32 = train_dictionary(TrainConfig(**kw), TensorSource({"x": toy.x}), tmp_path / "a", progress=False)
    bf16 = train_dictionary(TrainConfig(**kw, autocast="bfloat16"), TensorSource({"x": toy.x}), tmp_path / "b",
                            progress=False)
    d = load_dictionary(bf16.dictionaries[0])
    assert all(p.dtype == torch.float32 for p in d.parameters())
    (m32,), (m16,) = fp32.metrics.values(), bf16.metrics.values()
    assert m16["fvu"] < 0.5 and abs(m16["fvu"] - m32["fvu"]) < 0.1, (m32["fvu"], m16["fvu"])
    assert not torch.equal(load_dictionary(fp32.dictionaries[0]).W_dec, d.W_dec), "autocast had no effect"
    with pytest.raises(InterpError, match="autocast"):
        TrainConfig(architecture=arch, autocast="float16")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("arch", ["topk", "batchtopk", "jumprelu", "mp"])
def test_cuda_training_with_bf16_autocast_matches_cpu_quality(arch, tmp_path):
    """On a GPU: the embedding_bag sparse path, fused Adam and bf16 autocast train as well as float32 on CPU."""
    toy = toy_superposition(4096, d=32, n_features=64, p_active=0.04, seed=0)
    kw = dict(architecture=arch, d_sae=64, n_tokens=4096 * 4, batch_size=256, normalization="none")
    if arch != "jumprelu":
        kw["k"] = 4
    cpu = train_dictionary(TrainConfig(**kw), TensorSource({"x": toy.x}), tmp_path / "cpu", progress=False)
    gpu = train_dictionary(TrainConfig(**kw, device="cuda", autocast="bfloat16"), TensorSource({"x": toy.x}),
                           tmp_path / "gpu", progress=False)
    (m_cpu,), (m_gpu,) = cpu.metrics.values(), gpu.metrics.values()
    assert abs(m_gpu["fvu"] - m_cpu["fvu"]) < 0.1 and m_gpu["l0"] <= 1.5 * max(m_cpu["l0"], 1)
    assert load_dictionary(gpu.dictionaries[0]).W_dec.device.type == "cpu"
