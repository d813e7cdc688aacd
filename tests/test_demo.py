"""The whole pipeline, as `make demo` runs it, on the tiny model (the real demo model is exercised by `make demo`)."""

from __future__ import annotations

import json

import pytest

from interp.demo import DemoConfig, run_demo


@pytest.mark.slow
def test_pipeline_end_to_end(tiny_model_dir, corpus_dir, tmp_path):
    cfg = DemoConfig(model=str(tiny_model_dir), corpus=str(corpus_dir), n_tokens=2048, train_tokens=8192, k=4)
    result = run_demo(tmp_path / "demo", cfg, progress=False)
    assert result.index_html.is_file() and result.index_html.name == "index.html"
    assert 0 < result.metrics["l0"] <= 4.0 + 1e-6
    assert 0 <= result.metrics["fvu"] < 1.5
    saved = json.loads((tmp_path / "demo" / "eval.json").read_text())
    assert saved["l0"] == pytest.approx(result.metrics["l0"])
    # Every stage left its own directory with its manifest / cfg, and a rerun reuses them.
    for sub in ("store/manifest.json", "features/manifest.json"):
        assert (tmp_path / "demo" / sub).is_file(), sub
    again = run_demo(tmp_path / "demo", cfg, progress=False)
    assert again.index_html == result.index_html
