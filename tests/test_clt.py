"""Cross-layer transcoders: the multi-hook contract, the per-layer views circuits use, the loss against a
reference computation, training from a store and on the fly, and CE loss recovered with every MLP spliced."""

from __future__ import annotations

import math

import pytest
import torch

from interp.dictionaries import TrainBatch, TrainState, create, load_dictionary, save_dictionary
from interp.errors import InterpError

TORCH_THREADS = 1  # see conftest.py
L, D, N_FEAT = 3, 5, 7
HOOKS_IN = tuple(f"blocks.{i}.ln2.hook_normalized" for i in range(L))
HOOKS_OUT = tuple(f"blocks.{i}.hook_mlp_out" for i in range(L))


def _clt(**kw):
    d = create("clt", L * D, L * N_FEAT, hook_in="blocks.*.ln2.hook_normalized", hook_out="blocks.*.hook_mlp_out",
               hooks_in=HOOKS_IN, hooks_out=HOOKS_OUT, normalization="scalar", **kw)
    torch.manual_seed(0)
    with torch.no_grad():
        d.in_scale.copy_(torch.tensor([0.5, 2.0, 1.5]))
        d.out_scale.copy_(torch.tensor([3.0, 0.25, 1.0]))
        d.log_threshold.copy_(torch.randn(L, N_FEAT) * 0.3 - 1.0)
        d.b_enc.normal_()
        d.b_dec.normal_()
        if d.W_skip is not None:
            d.W_skip.normal_()
    return d


@pytest.mark.parametrize("skip", [False, True])
def test_per_layer_views_rebuild_the_forward_and_outputs_read_only_earlier_layers(skip):
    d = _clt(skip=skip)
    x = torch.randn(9, L * D)
    f, y = d.encode(x), d(x)
    xs = x.view(9, L, D)
    assert d.W_enc.shape == (L * D, L * N_FEAT) and d.W_dec.shape == (L * N_FEAT, L * D)
    for m in range(L):
        torch.testing.assert_close(d.encode_layer(xs[:, m], m), f.view(9, L, N_FEAT)[:, m])
        want = d.layer_bias(m) + sum(d.encode_layer(xs[:, s], s) @ d.layer_decoder(s, m) for s in range(m + 1))
        if skip:
            want = want + xs[:, m] @ d.layer_skip(m).T
        torch.testing.assert_close(y.view(9, L, D)[:, m], want, rtol=1e-5, atol=1e-5)
        later = x.clone().view(9, L, D)
        later[:, m + 1 :] = torch.randn_like(later[:, m + 1 :])
        torch.testing.assert_close(d(later.view(9, -1)).view(9, L, D)[:, : m + 1], y.view(9, L, D)[:, : m + 1])
    assert d.W_dec.view(L, N_FEAT, L, D)[2, :, :2].abs().sum() == 0, "no decoder to earlier layers"
    assert [d.layer_of(i) for i in range(L)] == [0, 1, 2]
    with pytest.raises(InterpError, match="writes only to layers"):
        d.layer_decoder(2, 1)


def test_loss_is_mse_plus_tanh_sparsity_plus_preact_and_the_threshold_gets_the_ste():
    d = _clt(sparsity_coeff=0.7, sparsity_c=3.0, preact_coeff=0.01, bandwidth=0.5, sparsity_warmup=0.0)
    x, y = torch.randn(16, L * D), torch.randn(16, L * D)
    out = d.training_step(TrainBatch(x, y, None), TrainState(0, 10, torch.zeros(L * N_FEAT, dtype=torch.bool)))
    h = torch.einsum("bld,ldn->bln", x.view(16, L, D), d.W_enc_).detach() + d.b_enc.detach()
    theta = d.threshold.detach()
    a = h * (h > theta)
    W = d.W_dec.detach()
    norms = W.view(L, N_FEAT, L * D).norm(dim=2)  # decoder norm over every output layer
    y_hat = a.flatten(1) @ W + d.b_dec.detach().flatten()
    mse = (y_hat - y).pow(2).sum(1).mean()
    sparsity = torch.tanh(3.0 * norms * a).sum((1, 2)).mean()
    preact = (torch.relu(theta - h) * norms).sum((1, 2)).mean()
    torch.testing.assert_close(out.loss, mse + 0.7 * sparsity + 0.01 * preact)
    out.loss.backward()
    # d loss / d theta: the rectangle STE on the reconstruction and tanh terms, plus the pre-act term.
    window = ((h - theta).abs() < 0.25).float()
    g_tanh = 0.7 * 3.0 * norms * (1 - torch.tanh(3.0 * norms * a) ** 2) / 16
    g_a = (2 * (y_hat - y) @ W.T / 16).view(16, L, N_FEAT) + g_tanh
    g_theta = (-(theta / 0.5) * window * g_a).sum(0) + 0.01 * (norms * (theta > h)).sum(0) / 16
    torch.testing.assert_close(d.log_threshold.grad, g_theta * theta, rtol=1e-4, atol=1e-5)


def test_save_load_round_trip_and_wrong_hooks_are_refused(tmp_path):
    d = _clt(skip=True)
    save_dictionary(d, tmp_path / "clt")
    e = load_dictionary(tmp_path / "clt")
    x = torch.randn(4, L * D)
    assert e.cfg == d.cfg and e.cfg.hooks_in == HOOKS_IN and torch.equal(e(x), d(x))
    with pytest.raises(InterpError, match="needs 3 input and 3 output hooks"):
        create("clt", L * D, L * N_FEAT, d_out=2 * D, hooks_in=HOOKS_IN, hooks_out=HOOKS_OUT[:2])
    with pytest.raises(InterpError, match="multiples"):
        create("clt", L * D, L * N_FEAT + 1, hooks_in=HOOKS_IN, hooks_out=HOOKS_OUT)


def test_init_sets_the_decoder_bias_to_the_mean_and_the_firing_rate():
    d = create("clt", L * D, L * 40, hooks_in=HOOKS_IN, hooks_out=HOOKS_OUT, init_density=0.25)
    x, y = torch.randn(4000, L * D), torch.randn(4000, L * D) + 3
    d.init_from_data(x, y, torch.Generator())
    torch.testing.assert_close(d.b_dec.flatten(), y.mean(0))
    density = (d.encode_normalized(x) > 0).float().mean()
    assert abs(float(density) - 0.25) < 0.01
    assert math.isclose(float(d.threshold.detach()[0, 0]), math.exp(0.1), rel_tol=1e-6)


MLP_IN, MLP_OUT = "blocks.*.ln2.hook_normalized", "blocks.*.hook_mlp_out"


@pytest.fixture(scope="module")
def mlp_store(tiny_model_dir, tiny_model, corpus_dir, tmp_path_factory):
    from interp.activations import CacheConfig, cache_activations
    from interp.model import CorpusConfig

    cfg = CacheConfig(model=str(tiny_model_dir), hooks=(MLP_IN, MLP_OUT), corpus=CorpusConfig(source=str(corpus_dir)),
                      n_tokens=2048, ctx_len=32)
    return cache_activations(cfg, tmp_path_factory.mktemp("mlp-store"), model=tiny_model)


def _manual_replacement_logits(clt, model, toks):
    """Every MLP output replaced, layer by layer, through the CLT's per-layer API (the reference splice)."""
    acts: dict[int, torch.Tensor] = {}

    def read(layer):
        def hook(x, hook):
            acts[layer] = clt.encode_layer(x, layer)
        return hook

    def write(layer):
        def hook(y, hook):
            return clt.layer_bias(layer) + sum(acts[s] @ clt.layer_decoder(s, layer) for s in range(layer + 1))
        return hook

    hooks = [(f"blocks.{i}.ln2.hook_normalized", read(i)) for i in range(2)]
    hooks += [(f"blocks.{i}.hook_mlp_out", write(i)) for i in range(2)]
    with model.hooks(hooks):
        return model.forward(toks)


def test_trains_from_a_store_of_every_layer_and_splices_every_mlp(mlp_store, tiny_model, tmp_path):
    from interp.training import TrainConfig, evaluate, train_dictionary
    from interp.training.evals import _run_spliced

    cfg = TrainConfig(architecture="clt", hook=MLP_IN, hook_out=MLP_OUT, d_sae=128, n_tokens=1024, batch_size=128,
                      lr=3e-3, params={"sparsity_coeff": 0.1})
    d = load_dictionary(train_dictionary(cfg, mlp_store, tmp_path, progress=False).dictionaries[0])
    assert d.cfg.hooks_in == tuple(f"blocks.{i}.ln2.hook_normalized" for i in range(2))
    assert d.cfg.d_in == 64 and d.cfg.d_sae == 128 and d.in_scale.shape == (2,)
    r = evaluate(d, mlp_store, model=tiny_model, n_tokens=512, ce_tokens=256)
    assert 0 < r.l0 and 0 < r.fvu < 1.5 and r.ce_spliced is not None and r.ce_tokens
    toks = mlp_store.column("tokens")[:64].long().view(2, 32)
    mask = torch.ones(2, 32, dtype=torch.bool)
    torch.testing.assert_close(_run_spliced(d, tiny_model, toks, mask, ablate=False),
                               _manual_replacement_logits(d, tiny_model, toks), rtol=1e-4, atol=1e-4)


def test_cli_trains_a_clt_on_the_fly(tiny_model_dir, corpus_dir, tmp_path):
    from cli.main import main

    rc = main(["train", "--model", str(tiny_model_dir), "--corpus", str(corpus_dir), "--ctx-len", "32",
               "--architecture", "clt", "--hook", MLP_IN, "--hook-out", MLP_OUT, "--expansion", "2",
               "--n-tokens", "512", "--batch-size", "128", "--name", "clt", "--out", str(tmp_path), "--no-progress"])
    assert rc == 0
    d = load_dictionary(tmp_path / "clt")
    assert d.cfg.hooks_out == ("blocks.0.hook_mlp_out", "blocks.1.hook_mlp_out") and d.cfg.d_sae == 2 * 64
    assert d.cfg.training["source"] == "ModelSource"
