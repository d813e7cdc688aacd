"""The weight views read from the module path's own weights equal the TransformerBridge's, so reading a view of a
local checkpoint never boots the bridge (a second copy of the model)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import make_tiny_llama

from interp.model.model import load_model
from interp.model.views import BridgeWeights

TORCH_THREADS = 1  # see conftest.py

VIEWS = ("W_E", "W_pos", "W_U", "b_U", "W_Q", "W_K", "W_V", "W_O", "b_Q", "b_K", "b_V", "b_O", "rotary")


def _compare(path: str, processing: str = "default") -> None:
    model = load_model(path, processing=processing)
    model.capture(torch.arange(1, 9)[None], ["blocks.0.hook_resid_post"])  # the module path
    ours = {name: getattr(model, name) for name in VIEWS}
    assert model._bridge is None  # no view booted it
    model.bridge  # noqa: B018 (boot it: the views now read the bridge)
    assert isinstance(model._weights(), BridgeWeights)
    for name in VIEWS:
        theirs = getattr(model, name)
        if isinstance(theirs, torch.Tensor):
            assert isinstance(ours[name], torch.Tensor) and ours[name].shape == theirs.shape, name
            assert torch.allclose(ours[name], theirs, atol=1e-6), name
        else:
            assert ours[name] == theirs, name


@pytest.mark.parametrize("processing", ["default", "transformer_lens", "none"])
def test_gpt2_views_match_the_bridge(tiny_model_dir: Path, processing: str):
    _compare(str(tiny_model_dir), processing)


def test_llama_views_match_the_bridge(tiny_llama_dir: Path):
    _compare(str(tiny_llama_dir))


@pytest.mark.parametrize("biases", [True, False])
def test_grouped_query_llama_matches_the_bridge(tiny_llama_dir: Path, tmp_path: Path, biases: bool):
    path = make_tiny_llama(tmp_path / "gqa", tiny_llama_dir, kv_heads=2, seed=3, attention_bias=biases)
    _compare(str(path))  # without biases, the zeros have the bridge's shapes too


def test_demo_views_match_the_bridge():
    _compare("demo")
