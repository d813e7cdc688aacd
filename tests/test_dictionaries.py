"""Dictionary architectures: the registry, shapes, save/load, and the maths that has a reference."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from interp.dictionaries import (
    REGISTRY,
    check_compatible,
    create,
    head_attribution,
    load_dictionary,
    save_dictionary,
)
from interp.dictionaries.linear import auxk_loss, geometric_median, normalized_mse
from interp.dictionaries.sparse import LinearCode, sparse_code, sparse_decode, topk_indices
from interp.errors import InterpError

TORCH_THREADS = 1  # see conftest.py
D_IN, D_SAE = 12, 48


def _make(arch: str, **kw):
    params = {"k": 3} if "k" in REGISTRY[arch].param_defaults else {}
    return create(arch, D_IN, D_SAE, **{**params, **kw})


@pytest.mark.parametrize("arch", sorted(REGISTRY))
def test_shapes_and_exact_save_load(arch, tmp_path):
    d = _make(arch, normalization="scalar", hook_in="blocks.0.hook_resid_post", model_fingerprint="abc")
    with torch.no_grad():
        d.in_scale.fill_(0.7)
        d.out_scale.fill_(0.7)
        for p in d.parameters():
            p.add_(0.01 * torch.randn_like(p))
    x = torch.randn(10, D_IN)
    f = d.encode(x)
    assert f.shape == (10, D_SAE) and d.decode(f).shape == (10, D_IN) and d(x).shape == (10, D_IN)
    assert d.W_dec.shape == (D_SAE, D_IN) and d.W_enc.shape == (D_IN, D_SAE)
    save_dictionary(d, tmp_path / "d")
    assert sorted(p.name for p in (tmp_path / "d").iterdir()) == ["cfg.json", "weights.safetensors"]
    e = load_dictionary(tmp_path / "d")
    assert type(e) is type(d) and e.cfg == d.cfg
    assert all(torch.equal(v, e.state_dict()[k]) for k, v in d.state_dict().items())
    assert torch.equal(e(x), d(x))


@pytest.mark.parametrize("arch", ["topk", "relu", "jumprelu", "gated", "batchtopk"])
def test_forward_is_decode_of_encode_in_raw_scale(arch):
    d = _make(arch, normalization="scalar")
    d.in_scale.fill_(0.25)
    d.out_scale.fill_(0.25)
    x = 4 * torch.randn(6, D_IN)
    torch.testing.assert_close(d(x), d.decode(d.encode(x)))
    torch.testing.assert_close(d(x), d.decode_normalized(d.encode_normalized(x * 0.25)) / 0.25)


def test_standardize_is_inverted_after_decoding():
    d = _make("relu", normalization="standardize")
    x = 3 + 5 * torch.randn(6, D_IN)
    xn, stats = d.normalize_input(x)
    torch.testing.assert_close(xn.mean(1), torch.zeros(6), atol=1e-5, rtol=0)
    torch.testing.assert_close(d(x), d.decode(d.encode(x), stats))


def test_unknown_architecture_and_param_are_refused_with_the_choices():
    with pytest.raises(InterpError, match="Registered: .*topk") as e:
        create("topkk", 4, 8)
    assert "Did you mean 'topk'" in str(e.value)
    with pytest.raises(InterpError, match="it takes: .*k_aux"):
        create("topk", 4, 8, l1_coeff=3.0)


@pytest.mark.parametrize("use_csr", [True, False], ids=["csr", "embedding_bag"])
def test_sparse_code_value_and_gradients_equal_dense_autograd(use_csr):
    torch.manual_seed(0)
    n, d_in, d_sae, d_out, m = 37, 5, 11, 4, 3
    x, b_in = torch.randn(n, d_in, requires_grad=True), torch.randn(d_in, requires_grad=True)
    W, b = torch.randn(d_in, d_sae, requires_grad=True), torch.randn(d_sae, requires_grad=True)
    W_dec = torch.randn(d_sae, d_out, requires_grad=True)
    idx = torch.stack([torch.randperm(d_sae)[:m] for _ in range(n)])  # distinct per row, unsorted
    gy = torch.randn(n, d_out)
    z = (x - b_in) @ W + b
    dense = torch.zeros(n, d_sae).scatter(1, idx, torch.relu(z.gather(1, idx))) @ W_dec
    expected = torch.autograd.grad(dense, [x, b_in, W, b, W_dec], gy)
    y, vals = sparse_code(LinearCode(z.detach(), x, b_in, W, b, W_dec), idx, use_csr=use_csr)
    torch.testing.assert_close(y, dense)
    torch.testing.assert_close(vals, torch.relu(z.detach().gather(1, idx)))
    for got, want in zip(torch.autograd.grad(y, [x, b_in, W, b, W_dec], gy), expected):
        torch.testing.assert_close(got, want)
    torch.testing.assert_close(sparse_decode(idx, vals, W_dec.detach()), dense.detach())


@pytest.mark.parametrize("n_dead,k_aux", [(30, 8), (200, 4)], ids=["dense-over-dead", "sparse-pairs"])
def test_auxk_loss_and_gradients_equal_dense_autograd(n_dead, k_aux):
    """Both AuxK paths (matmuls over the dead columns; sparse pairs when dead latents are many) are exact."""
    torch.manual_seed(1)
    n, d_in, d_sae = 64, 8, 256
    x, y, y_hat = torch.randn(n, d_in), torch.randn(n, d_in), torch.randn(n, d_in)
    params = [torch.randn(d_in, requires_grad=True), torch.randn(d_in, d_sae, requires_grad=True),
              torch.randn(d_sae, requires_grad=True), torch.randn(d_sae, d_in, requires_grad=True)]
    b_in, W, b, W_dec = params
    dead = torch.zeros(d_sae, dtype=torch.bool)
    dead[torch.randperm(d_sae)[:n_dead]] = True
    z = (x - b_in) @ W + b
    idx = z.detach().masked_fill(~dead, float("-inf")).topk(k_aux, dim=1).indices
    f = torch.zeros(n, d_sae).scatter(1, idx, torch.relu(z.gather(1, idx)))
    want = normalized_mse(f @ W_dec, y - y_hat)
    got = auxk_loss(LinearCode(z.detach(), x, b_in, W, b, W_dec), y, y_hat, dead, k_aux)
    torch.testing.assert_close(got, want)
    for g_got, g_want in zip(torch.autograd.grad(got, params), torch.autograd.grad(want, params)):
        torch.testing.assert_close(g_got, g_want)


@pytest.mark.parametrize("n,k", [(8192, 32), (4096, 16), (16384, 256), (65536, 64), (8192, 8), (100, 5)])
def test_topk_indices_select_the_k_largest_exactly(n, k):
    torch.manual_seed(n + k)
    z = torch.randn(48, n)
    z[:, n // 2 : n // 2 + 32] = z[:, :32]  # ties across groups
    z[3] = 0.0  # a row of ties
    idx = topk_indices(z, k)
    assert idx.shape == (48, k)
    assert (idx.sort(1).values.diff(1) > 0).all(), "indices within a row are distinct"
    torch.testing.assert_close(z.gather(1, idx).sort(1).values, z.topk(k, dim=1).values.sort(1).values)


def test_topk_keeps_k_and_decoder_stays_unit_norm_with_orthogonal_grad():
    d = _make("topk")
    x = torch.randn(20, D_IN)
    assert ((d.encode(x) > 0).sum(1) <= 3).all()
    from interp.dictionaries import TrainBatch, TrainState

    out = d.training_step(TrainBatch(x, x, None), TrainState(0, 1, torch.zeros(D_SAE, dtype=torch.bool)))
    out.loss.backward()
    d.constrain_grads()
    assert (d.W_dec_.grad * d.W_dec_).sum(1).abs().max() < 1e-6
    torch.testing.assert_close(d.W_dec.norm(dim=1), torch.ones(D_SAE))


def test_jumprelu_threshold_gradient_is_the_rectangle_ste_times_theta():
    from interp.dictionaries import TrainBatch, TrainState

    d = _make("jumprelu", bandwidth=0.5, threshold_init=0.3, l0_coeff=1.0, l0_warmup=0.0)
    x = torch.randn(64, D_IN)
    pi = d.pre_acts(x).detach()
    out = d.training_step(TrainBatch(x, x, None), TrainState(0, 1, torch.zeros(D_SAE, dtype=torch.bool)))
    out.loss.backward()
    theta, eps = 0.3, 0.5
    window = ((pi - theta).abs() < eps / 2).float()
    f = pi * (pi > theta)
    g_f = 2 * ((f @ d.W_dec_ + d.b_dec - x) @ d.W_dec_.T).detach() / len(x)
    g_theta = (-(theta / eps) * window * g_f).sum(0) + (-(1 / eps) * window / len(x)).sum(0)
    torch.testing.assert_close(d.log_threshold.grad, g_theta * theta, rtol=1e-4, atol=1e-5)


def test_matching_pursuit_residual_is_monotone_and_orthogonal_to_the_last_atom():
    d = _make("mp", use_bias=False)
    x = torch.randn(30, D_IN)
    norms = [d.pursue(x, t)[1].norm(dim=1) for t in range(6)]
    assert all((b <= a + 1e-5).all() for a, b in zip(norms, norms[1:]))
    z1, r1 = d.pursue(x, 1)
    j = z1.argmax(1)
    assert (r1 * d.D[j]).sum(1).abs().max() < 1e-5
    full = d.encode(x, threshold=0.5, n_steps=200)
    assert (x - d.decode(full)).norm(dim=1).max() < 0.5 + 1e-4


def test_batchtopk_keeps_k_per_row_on_average_then_thresholds():
    from interp.dictionaries import TrainBatch, TrainState

    d = _make("batchtopk")
    x = torch.randn(40, D_IN)
    out = d.training_step(TrainBatch(x, x, None), TrainState(0, 1, torch.zeros(D_SAE, dtype=torch.bool)))
    assert out.l0 == pytest.approx(3.0)
    a = F.relu(d.pre_acts(x))
    assert d.threshold.item() == pytest.approx(a.flatten().topk(120).values.min().item())
    assert ((d.encode(x) > 0) == (a > d.threshold)).all()


def test_codebook_code_is_the_mean_of_k_codes():
    d = _make("codebook")
    x = torch.randn(5, D_IN)
    f = d.encode(x)
    assert torch.allclose(f.sum(1), torch.ones(5)) and ((f > 0).sum(1) == 3).all()
    xt = (x - x.mean(1, keepdim=True)) / (x.var(1, unbiased=False, keepdim=True) + 1e-5).sqrt()
    best = (xt @ (d.C / d.C.norm(dim=1, keepdim=True)).T).topk(3).indices
    torch.testing.assert_close(d.decode(f), d.C[best].mean(1))


def test_geometric_median_resists_outliers():
    x = torch.cat([torch.randn(200, 3) * 0.1, torch.full((20, 3), 100.0)])
    assert geometric_median(x).norm() < 1.0 < x.mean(0).norm()


def test_head_attribution_fractions():
    d = create("relu", 8, 3)
    with torch.no_grad():
        d.W_dec_.zero_()
        d.W_dec_[0, :4] = 1.0  # only head 0 of 2 heads (d_head 4)
        d.W_dec_[1] = 1.0
    w = head_attribution(d, 2)
    torch.testing.assert_close(w[0], torch.tensor([1.0, 0.0]))
    torch.testing.assert_close(w[1], torch.tensor([0.5, 0.5]))
    with pytest.raises(InterpError, match="multiple of n_heads"):
        head_attribution(d, 3)


def test_check_compatible_refuses_other_models_and_widths():
    d = create("topk", 6, 12, k=2, hook_in="h", model_name="a", model_fingerprint="f1")
    check_compatible(d, {"name": "a", "fingerprint": "f1"})
    with pytest.raises(InterpError, match="trained on model 'a'"):
        check_compatible(d, {"name": "b", "fingerprint": "f2"})
    with pytest.raises(InterpError, match="width 7"):
        check_compatible(d, {"fingerprint": "f1"}, {"h": 7})
