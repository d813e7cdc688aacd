"""A small feature store of the embedded demo model (the `make demo` pipeline at a smaller size), shared by
the auto-interpretation tests: import the fixture into a test module to use it."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def demo_features(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Feature store directory of a TopK SAE (512 latents, k=8) trained on 32k cached demo-model tokens."""
    from interp.demo import DemoConfig, run_demo

    out = tmp_path_factory.mktemp("autointerp-demo")
    run_demo(out, DemoConfig(n_tokens=32_768, train_tokens=131_072, expansion=4, k=8), progress=False)
    return out / "features"
