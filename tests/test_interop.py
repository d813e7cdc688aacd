"""SAELens and sparsify interop: round trips reproduce the dictionary; hand-written directories in each
library's own layout load and reproduce the maths written out here; what has no counterpart is refused."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from interp.dictionaries import REGISTRY, TrainBatch, TrainState, create
from interp.errors import InterpError
from interp.formats import convert, export_dictionary, import_dictionary
from interp.formats.saelens import TO_SAELENS
from interp.formats.sparsify import TO_SPARSIFY

TORCH_THREADS = 1  # see conftest.py
D_IN, D_SAE, D_OUT = 12, 48, 10
# (registry name, extra create() kwargs): every mappable architecture, autoencoders and transcoders
SAELENS_CASES = [
    ("relu", {}),
    ("relu_normweighted", {}),
    ("relu_unitnorm", {}),
    ("transcoder", {"d_out": D_OUT}),
    ("transcoder", {"d_out": D_OUT, "skip": True}),
    ("topk", {"k": 5}),
    ("gsae", {"k": 5}),
    ("jumprelu", {}),
    ("jumprelu", {"d_out": D_OUT, "transcoder": True}),
    ("gated", {}),
    ("batchtopk", {"k": 5}),
    ("matryoshka", {"k": 5}),
    ("mp", {"k": 4, "normalization": "none"}),
    ("mp", {"k": 4, "threshold": 0.5, "max_steps": 30, "normalization": "none"}),
]
SPARSIFY_CASES = [
    ("topk", {"k": 5}),
    ("gsae", {"k": 5}),
    ("topk", {"k": 5, "transcoder": True}),
    ("skip_transcoder", {"k": 5}),
]


def _randomised(arch: str, **kw):
    """A dictionary with every parameter perturbed, scalar normalisation unless told, trained one step
    where training sets state the inference path reads (BatchTopK's threshold)."""
    kw = {"normalization": "scalar", **kw}
    d = create(arch, D_IN, D_SAE, **kw)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in d.named_parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=gen))
            if name == "log_threshold":
                p.copy_(torch.log(0.05 + 0.2 * torch.rand(p.shape, generator=gen)))
        if kw["normalization"] == "scalar":
            d.in_scale.fill_(0.7)
            d.out_scale.fill_(0.7 if d.cfg.d_out == d.cfg.d_in and not d.cfg.is_transcoder else 1.3)
        d.constrain_weights()
    if arch in ("batchtopk", "matryoshka"):
        x = torch.randn(64, D_IN, generator=gen)
        d.training_step(TrainBatch(x, x, None), TrainState(0, 1, torch.zeros(D_SAE, dtype=torch.bool)))
    return d


def _assert_same_function(a, b, d_in: int = D_IN) -> None:
    x = 3 * torch.randn(32, d_in, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(b.encode(x), a.encode(x), rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(b(x), a(x), rtol=1e-4, atol=1e-4)
        assert (b.encode(x) != 0).sum() == (a.encode(x) != 0).sum()


@pytest.mark.parametrize(("arch", "kw"), SAELENS_CASES, ids=lambda v: str(v))
def test_saelens_round_trip_reproduces_encode_and_forward(arch, kw, tmp_path):
    d = _randomised(arch, **kw)
    out = export_dictionary(d, tmp_path / "sl", "saelens")
    assert sorted(p.name for p in out.iterdir()) == ["cfg.json", "sae_weights.safetensors"]
    cfg = json.loads((out / "cfg.json").read_text())
    assert cfg["metadata"]["sae_lens_version"].startswith("6.") and cfg["normalize_activations"] == "none"
    back = import_dictionary(out, "saelens")
    _assert_same_function(d, back)


@pytest.mark.parametrize(("arch", "kw"), SPARSIFY_CASES, ids=lambda v: str(v))
def test_sparsify_round_trip_reproduces_encode_and_forward(arch, kw, tmp_path):
    d = _randomised(arch, **kw)
    back = import_dictionary(export_dictionary(d, tmp_path / "sp", "sparsify"), "sparsify")
    assert back.cfg.is_transcoder == d.cfg.is_transcoder and back.p["k"] == 5
    _assert_same_function(d, back)


def test_unnormalised_round_trip_is_bit_exact(tmp_path):
    d = _randomised("topk", k=5, normalization="none")
    back = import_dictionary(export_dictionary(d, tmp_path / "sl", "saelens"), "saelens")
    for name in ("W_enc_", "b_enc", "W_dec_", "b_dec"):
        assert torch.equal(back.state_dict()[name], d.state_dict()[name]), name


def test_trained_topk_converts_through_every_format(tmp_path):
    """interp -> sparsify -> SAELens -> interp (via convert, as the CLI runs it) after real training."""
    from interp.activations.synthetic import toy_superposition
    from interp.activations.tensors import TensorSource
    from interp.training import TrainConfig, train_dictionary

    toy = toy_superposition(4096, d=D_IN, n_features=24, seed=0)
    cfg = TrainConfig(architecture="topk", d_sae=D_SAE, k=4, n_tokens=4096 * 4, batch_size=256, lr=3e-3)
    src = train_dictionary(cfg, TensorSource({"x": toy.x}), tmp_path / "t", progress=False).dictionaries[0]
    convert(src, "interp", tmp_path / "x", "sparsify")  # sparsify names the directory after the hook
    convert(tmp_path / "x", "sparsify", tmp_path / "sl", "saelens")
    convert(tmp_path / "sl", "saelens", tmp_path / "back", "interp")
    original = import_dictionary(src, "interp")
    assert original.cfg.normalization == "scalar" and float(original.in_scale) != 1.0
    back = import_dictionary(tmp_path / "back", "interp")
    assert back.cfg.normalization == "none" and back.cfg.hook_in == "x"
    _assert_same_function(original, back)


# ---- directories written by hand in each library's layout ----------------------------------------
def _write(path: Path, cfg: dict, tensors: dict, weights: str) -> Path:
    path.mkdir(parents=True)
    (path / "cfg.json").write_text(json.dumps(cfg))
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(path / weights))
    return path


def _saelens_cfg(arch: str, **extra) -> dict:
    return {
        "architecture": arch,
        "d_in": D_IN,
        "d_sae": D_SAE,
        "dtype": "float32",
        "device": "cpu",
        "apply_b_dec_to_input": True,
        "normalize_activations": "none",
        "reshape_activations": "none",
        "metadata": {"model_name": "gpt2", "hook_name": "blocks.3.hook_resid_pre", "sae_lens_version": "6.54.12"},
        **extra,
    }


def _linear_tensors(gen: torch.Generator, d_out: int = D_IN) -> dict[str, torch.Tensor]:
    return {
        "W_enc": torch.randn(D_IN, D_SAE, generator=gen) / D_IN**0.5,
        "b_enc": 0.1 * torch.randn(D_SAE, generator=gen),
        "W_dec": torch.randn(D_SAE, d_out, generator=gen),  # rows deliberately not unit norm
        "b_dec": torch.randn(d_out, generator=gen),
    }


def test_hand_written_saelens_topk_reproduces_the_reference(tmp_path):
    t = _linear_tensors(torch.Generator().manual_seed(0))
    path = _write(tmp_path / "sl", _saelens_cfg("topk", k=6), t, "sae_weights.safetensors")
    d = import_dictionary(path, "saelens")
    assert d.cfg.architecture == "topk" and d.cfg.hook_in == "blocks.3.hook_resid_pre"
    x = torch.randn(20, D_IN)
    pre = (x - t["b_dec"]) @ t["W_enc"] + t["b_enc"]
    top = pre.topk(6, dim=1)
    f = torch.zeros_like(pre).scatter(1, top.indices, top.values.relu())
    torch.testing.assert_close(d.encode(x), f, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(d(x), f @ t["W_dec"] + t["b_dec"], rtol=1e-5, atol=1e-5)


def test_hand_written_saelens_topk_with_decoder_norm_rescaling(tmp_path):
    t = _linear_tensors(torch.Generator().manual_seed(1))
    cfg = _saelens_cfg("topk", k=6, rescale_acts_by_decoder_norm=True)
    d = import_dictionary(_write(tmp_path / "sl", cfg, t, "sae_weights.safetensors"), "saelens")
    x = torch.randn(20, D_IN)
    norms = t["W_dec"].norm(dim=1)
    pre = ((x - t["b_dec"]) @ t["W_enc"] + t["b_enc"]) * norms
    top = pre.topk(6, dim=1)
    f = torch.zeros_like(pre).scatter(1, top.indices, top.values.relu())
    torch.testing.assert_close(d.encode(x), f, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(d(x), (f / norms) @ t["W_dec"] + t["b_dec"], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("apply_b_dec", [True, False])
def test_hand_written_saelens_standard_and_jumprelu(tmp_path, apply_b_dec):
    gen = torch.Generator().manual_seed(2)
    t = _linear_tensors(gen)
    threshold = 0.05 + 0.2 * torch.rand(D_SAE, generator=gen)
    x = torch.randn(20, D_IN)
    pre = (x - apply_b_dec * t["b_dec"]) @ t["W_enc"] + t["b_enc"]
    for arch, extra, f in (
        ("standard", {}, pre.relu()),
        ("jumprelu", {"threshold": threshold}, pre.relu() * (pre > threshold)),
    ):
        cfg = _saelens_cfg(arch, apply_b_dec_to_input=apply_b_dec)
        d = import_dictionary(_write(tmp_path / arch, cfg, {**t, **extra}, "sae_weights.safetensors"), "saelens")
        torch.testing.assert_close(d.encode(x), f, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(d(x), f @ t["W_dec"] + t["b_dec"], rtol=1e-5, atol=1e-5)


def test_hand_written_saelens_gated_reproduces_the_reference(tmp_path):
    gen = torch.Generator().manual_seed(3)
    t = _linear_tensors(gen)
    b_gate = t.pop("b_enc")
    r_mag, b_mag = 0.3 * torch.randn(D_SAE, generator=gen), 0.1 * torch.randn(D_SAE, generator=gen)
    tensors = {**t, "b_gate": b_gate, "r_mag": r_mag, "b_mag": b_mag}
    d = import_dictionary(_write(tmp_path / "g", _saelens_cfg("gated"), tensors, "sae_weights.safetensors"), "saelens")
    x = torch.randn(20, D_IN)
    xc = x - t["b_dec"]
    f = ((xc @ t["W_enc"] + b_gate) > 0) * (xc @ (t["W_enc"] * r_mag.exp()) + b_mag).relu()
    torch.testing.assert_close(d.encode(x), f, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(d(x), f @ t["W_dec"] + t["b_dec"], rtol=1e-5, atol=1e-5)


def test_hand_written_saelens_skip_transcoder_reproduces_the_reference(tmp_path):
    gen = torch.Generator().manual_seed(4)
    t = {**_linear_tensors(gen, D_OUT), "W_skip": torch.randn(D_OUT, D_IN, generator=gen)}
    cfg = _saelens_cfg("skip_transcoder", d_out=D_OUT, apply_b_dec_to_input=False)
    cfg["metadata"]["hook_name_out"] = "blocks.3.hook_mlp_out"
    d = import_dictionary(_write(tmp_path / "tc", cfg, t, "sae_weights.safetensors"), "saelens")
    assert d.cfg.is_transcoder and d.cfg.hook_out == "blocks.3.hook_mlp_out" and d.cfg.d_out == D_OUT
    x = torch.randn(20, D_IN)
    f = (x @ t["W_enc"] + t["b_enc"]).relu()
    torch.testing.assert_close(d.encode(x), f, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(d(x), f @ t["W_dec"] + t["b_dec"] + x @ t["W_skip"].T, rtol=1e-5, atol=1e-5)


def test_hand_written_saelens_matching_pursuit_reproduces_the_reference(tmp_path):
    gen = torch.Generator().manual_seed(5)
    W = torch.randn(D_SAE, D_IN, generator=gen)
    W = W / W.norm(dim=1, keepdim=True)
    b = 0.1 * torch.randn(D_IN, generator=gen)
    cfg = _saelens_cfg("matching_pursuit", residual_threshold=0.0, max_iterations=3, stop_on_duplicate_support=False)
    d = import_dictionary(_write(tmp_path / "mp", cfg, {"W_dec": W, "b_dec": b}, "sae_weights.safetensors"), "saelens")
    x = torch.randn(20, D_IN)
    r, f = x - b, torch.zeros(20, D_SAE)
    for _ in range(3):
        j = (r @ W.T).relu().argmax(1)
        c = (r * W[j]).sum(1).relu()
        f[torch.arange(20), j] += c
        r = r - c[:, None] * W[j]
    torch.testing.assert_close(d.encode(x), f, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(d(x), f @ W + b, rtol=1e-5, atol=1e-5)
    cfg["stop_on_duplicate_support"] = True
    (tmp_path / "mp" / "cfg.json").write_text(json.dumps(cfg))
    with pytest.raises(InterpError, match="stop_on_duplicate_support"):
        import_dictionary(tmp_path / "mp", "saelens")


@pytest.mark.parametrize("transcode", [False, True])
def test_hand_written_sparsify_coder_reproduces_the_reference(tmp_path, transcode):
    gen = torch.Generator().manual_seed(6)
    tensors = {
        "encoder.weight": torch.randn(D_SAE, D_IN, generator=gen) / D_IN**0.5,
        "encoder.bias": 0.1 * torch.randn(D_SAE, generator=gen),
        "W_dec": torch.randn(D_SAE, D_IN, generator=gen),
        "b_dec": torch.randn(D_IN, generator=gen),
    }
    if transcode:
        tensors["W_skip"] = torch.randn(D_IN, D_IN, generator=gen)
    cfg = {
        "activation": "topk",
        "expansion_factor": 4,
        "normalize_decoder": True,
        "num_latents": D_SAE,
        "k": 6,
        "multi_topk": False,
        "skip_connection": transcode,
        "transcode": transcode,
        "d_in": D_IN,
    }
    d = import_dictionary(_write(tmp_path / "layers.3.mlp", cfg, tensors, "sae.safetensors"), "sparsify")
    assert d.cfg.hook_in == ("layers.3.mlp" if transcode else "blocks.3.hook_mlp_out")
    assert d.cfg.hook_out == ("blocks.3.hook_mlp_out" if transcode else None)
    assert d.cfg.architecture == ("skip_transcoder" if transcode else "topk")
    x = torch.randn(20, D_IN)
    centred = x if transcode else x - tensors["b_dec"]
    top = F.relu(centred @ tensors["encoder.weight"].T + tensors["encoder.bias"]).topk(6, dim=1)
    f = torch.zeros(20, D_SAE).scatter(1, top.indices, top.values)
    y = f @ tensors["W_dec"] + tensors["b_dec"] + (x @ tensors["W_skip"].T if transcode else 0)
    torch.testing.assert_close(d.encode(x), f, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(d(x), y, rtol=1e-5, atol=1e-5)


# ---- refusals ------------------------------------------------------------------------------------
def test_architectures_without_a_counterpart_are_refused_by_name(tmp_path):
    unmapped_saelens = sorted(set(REGISTRY) - set(TO_SAELENS))
    assert unmapped_saelens == ["clt", "codebook", "skip_transcoder"]
    with pytest.raises(InterpError, match="'clt' dictionary has no SAELens counterpart"):
        export_dictionary(create("clt", 2 * D_IN, 2 * D_SAE, hooks_in=("a.0", "a.1"), hooks_out=("b.0", "b.1")),
                          tmp_path / "a", "saelens")
    with pytest.raises(InterpError, match="reads several hooks"):
        export_dictionary(create("topk", 2 * D_IN, D_SAE, k=3, hook_in="a.*", hooks_in=("a.0", "a.1")),
                          tmp_path / "a", "sparsify")
    with pytest.raises(InterpError, match="'codebook' dictionary has no SAELens counterpart.*gated.*topk"):
        export_dictionary(create("codebook", D_IN, D_SAE), tmp_path / "a", "saelens")
    with pytest.raises(InterpError, match="'relu' dictionary has no sparsify counterpart.*skip_transcoder"):
        export_dictionary(create("relu", D_IN, D_SAE), tmp_path / "b", "sparsify")
    with pytest.raises(InterpError, match="'mp' dictionary has no sparsify"):
        export_dictionary(create("mp", D_IN, D_SAE), tmp_path / "c", "sparsify")
    with pytest.raises(InterpError, match="SAELens has transcoders only with ReLU or JumpReLU"):
        export_dictionary(create("topk", D_IN, D_SAE, k=3, transcoder=True), tmp_path / "d", "saelens")
    with pytest.raises(InterpError, match="maps 12 to 10"):
        export_dictionary(create("skip_transcoder", D_IN, D_SAE, d_out=D_OUT, k=3), tmp_path / "e", "sparsify")
    assert set(TO_SPARSIFY) == {"topk", "gsae", "skip_transcoder"}
    assert not any((tmp_path / n).exists() and any((tmp_path / n).iterdir()) for n in "abcde")


def test_normalisations_that_cannot_be_folded_are_refused(tmp_path):
    with pytest.raises(InterpError, match="standardize"):
        export_dictionary(create("relu", D_IN, D_SAE, normalization="standardize"), tmp_path / "a", "saelens")
    mp = create("mp", D_IN, D_SAE, normalization="scalar")
    mp.in_scale.fill_(0.5)
    mp.out_scale.fill_(0.5)
    with pytest.raises(InterpError, match="normalization='none'"):
        export_dictionary(mp, tmp_path / "b", "saelens")
    with pytest.raises(InterpError, match="never trained"):
        export_dictionary(create("batchtopk", D_IN, D_SAE), tmp_path / "c", "saelens")
    t = _linear_tensors(torch.Generator().manual_seed(7))
    cfg = _saelens_cfg("standard", normalize_activations="layer_norm")
    with pytest.raises(InterpError, match="layer_norm"):
        import_dictionary(_write(tmp_path / "ln", cfg, t, "sae_weights.safetensors"), "saelens")
    with pytest.raises(InterpError, match="Unknown dictionary format 'hf'"):
        import_dictionary(tmp_path / "ln", "hf")


def test_saelens_expected_average_scaling_becomes_scalar_normalisation(tmp_path):
    t = _linear_tensors(torch.Generator().manual_seed(8))
    cfg = _saelens_cfg("standard", normalize_activations="expected_average_only_in")
    path = _write(tmp_path / "ea", cfg, t, "sae_weights.safetensors")
    with pytest.raises(InterpError, match="scaling_factor"):
        import_dictionary(path, "saelens")
    d = import_dictionary(path, "saelens", scaling_factor=0.25)
    x = torch.randn(20, D_IN)
    f = ((0.25 * x - t["b_dec"]) @ t["W_enc"] + t["b_enc"]).relu()
    assert d.cfg.normalization == "scalar"
    torch.testing.assert_close(d.encode(x), f, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(d(x), (f @ t["W_dec"] + t["b_dec"]) / 0.25, rtol=1e-5, atol=1e-5)


def test_cli_convert_writes_the_target_format_and_reports_bad_formats(tmp_path, capsys):
    from cli.main import main

    d = _randomised("jumprelu")
    export_dictionary(d, tmp_path / "src", "interp")
    assert main(["convert", "--from", "interp", str(tmp_path / "src"), "--to", "saelens", str(tmp_path / "out")]) == 0
    assert json.loads((tmp_path / "out" / "cfg.json").read_text())["architecture"] == "jumprelu"
    _assert_same_function(d, import_dictionary(tmp_path / "out", "saelens"))
    assert main(["convert", "--from", "hf", str(tmp_path / "src"), "--to", "saelens", str(tmp_path / "o2")]) == 2
    assert "Unknown dictionary format 'hf'" in capsys.readouterr().err
