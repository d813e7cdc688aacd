"""Registry defaults that need no tuning: JumpReLU and Gated derive their scale-dependent settings from the init
sample, and recover a toy set unlike the one the other tests use (``toy_varied``: other sizes, scales,
frequencies and correlations, and a large mean) with no parameter given."""

from __future__ import annotations

import pytest
import torch

from interp.activations.synthetic import toy_varied
from interp.activations.tensors import TensorSource
from interp.dictionaries import create, load_dictionary, read_metrics, save_dictionary
from interp.io import load_tensors, save_tensors
from interp.training import TrainConfig, train_dictionary
from interp.training.evals import mmcs

TORCH_THREADS = 1


def _init(arch: str, x: torch.Tensor, **params):
    d = create(arch, x.shape[1], 16, **params)
    d.init_from_data(x, x, torch.Generator().manual_seed(0))
    return d


def test_scale_dependent_settings_follow_the_data():
    x = toy_varied(2048, seed=3).x
    small, large = _init("jumprelu", x), _init("jumprelu", 10 * x)
    torch.testing.assert_close(large.l0_coeff_, 100 * small.l0_coeff_)  # squared error: scale squared
    torch.testing.assert_close(large.threshold, 10 * small.threshold)
    torch.testing.assert_close(large.bandwidth_, 10 * small.bandwidth_)
    torch.testing.assert_close(small.threshold, small.l0_coeff_.sqrt().expand(16))
    torch.testing.assert_close(_init("gated", 10 * x).l1_coeff_, 10 * _init("gated", x).l1_coeff_)  # L1: scale
    given = _init("jumprelu", x, l0_coeff=3.0, threshold_init=1.0, bandwidth=0.1)
    assert (float(given.l0_coeff_), float(given.bandwidth_)) == (3.0, pytest.approx(0.1))
    assert torch.allclose(given.threshold, torch.ones(16)) and float(_init("gated", x, l1_coeff=5.0).l1_coeff_) == 5


@pytest.mark.parametrize("arch", ["jumprelu", "gated"])
def test_defaults_recover_a_varied_toy_set(arch, tmp_path):
    """96 features in 48 dims, as many latents as features (no spare ones), 2048 steps: every feature found
    (MMCS >= 0.9) and fewer than 10% of the latents dead, with the registry's defaults."""
    toy = toy_varied(65536, seed=0)
    cfg = TrainConfig(architecture=arch, d_sae=96, n_tokens=256 * 2048, batch_size=256, lr=3e-3, log_every=512)
    path = train_dictionary(cfg, TensorSource({"x": toy.x}), tmp_path, progress=False).dictionaries[0]
    d = load_dictionary(path)
    score, dead = mmcs(d.W_dec.detach(), toy.directions), read_metrics(path)["dead_fraction"]
    assert score >= 0.9 and dead < 0.1, f"{arch}: MMCS {score:.3f}, dead {dead:.1%}"
    assert d.cfg.params.get("l0_coeff", d.cfg.params.get("l1_coeff")) is None  # nothing was tuned


@pytest.mark.parametrize("arch", ["jumprelu", "gated"])
def test_dictionaries_saved_before_the_derived_settings_still_load(arch, tmp_path):
    x = toy_varied(512, seed=1).x
    d = _init(arch, x, **({"l0_coeff": 2.0} if arch == "jumprelu" else {"l1_coeff": 4.0}))
    path = save_dictionary(d, tmp_path / arch)
    old = {k: v for k, v in load_tensors(path / "weights.safetensors").items() if not k.endswith("_coeff_")
           and k != "bandwidth_"}
    save_tensors(path / "weights.safetensors", old)
    back = load_dictionary(path)
    torch.testing.assert_close(back.encode(x), d.encode(x))
