"""The static site's data files, explanation loading and the Neuronpedia export (no browser needed)."""

from __future__ import annotations

import json

import pytest

from cli.main import main
from interp.autointerp import load_explanations
from interp.errors import InterpError
from interp.features import AnalyzeConfig
from interp.site.build import (
    build_dashboard,
    feature_payloads,
    safe_json,
    top_tokens,
)

RESID = "blocks.0.hook_resid_post"  # the hook conftest's feature store reads


@pytest.fixture(scope="module")
def fs(tiny_model_dir, tiny_model, corpus_dir, tmp_path_factory, make_feature_store):
    cfg = AnalyzeConfig(n_top=4, quantile_pool=20, n_quantiles=4, per_quantile=2, window=10, n_random=2)
    return make_feature_store(tiny_model_dir, corpus_dir, tmp_path_factory.mktemp("ds"), tiny_model, 20, cfg)[1]


def _js_payload(path, name):
    text = path.read_text()
    prefix = f"window.{name} = "
    assert text.startswith(prefix) and text.endswith(";\n")
    return json.loads(text[len(prefix) : -2])


def test_safe_json_cannot_close_a_script():
    obj = {"t": "</script><script>alert(1)</script> & \u2028\u2029 <!--"}
    text = safe_json(obj)
    assert "<" not in text and ">" not in text and "&" not in text and "\u2028" not in text
    assert json.loads(text) == obj


def test_explanations_are_normalised(tmp_path):
    (tmp_path / "e.json").write_text(
        json.dumps([{"feature": 2, "explanation": "x", "scores": {"fuzz": 0.5}}])
    )
    assert load_explanations(tmp_path / "e.json") == {2: {"text": "x", "scores": {"fuzz": 0.5}}}
    assert load_explanations({"3": "loops", 4: {"text": "y", "score": 0.25}}) == {
        3: {"text": "loops", "scores": {}},
        4: {"text": "y", "scores": {"score": 0.25}},
    }
    with pytest.raises(InterpError, match="not a feature index"):
        load_explanations({"x": "bad"})


def test_site_files_hold_the_feature_store(fs, tmp_path):
    expl = {1: {"explanation": "<b>bold</b>", "scores": {"detection": 0.75}}}
    index = build_dashboard(fs, tmp_path / "site", expl, progress=False)
    site = index.parent
    for name in ("index.html", "feature.html", "prompt.html", "plotly.min.js", "common.js", "style.css"):
        assert (site / name).is_file(), name
    assert (site / "plotly.min.js").stat().st_size > 1_000_000  # the real bundle, shipped locally
    assert "cdn" not in (site / "feature.html").read_text().lower()
    meta = _js_payload(site / "data" / "meta.js", "INTERP_META")
    assert meta["n_features"] == 20 and meta["score_name"] == "detection" and meta["hook"] == RESID
    rec = _js_payload(site / "data" / "features" / "1.js", "INTERP_FEATURE")
    ref = fs.feature(1)
    assert rec["expl"] == {"text": "<b>bold</b>", "scores": {"detection": 0.75}}
    assert [[rec["strs"][t] for t in ex["t"]] for ex in rec["ex"]["top"]] == [
        ex["tokens"] for ex in ref["examples"]["top"]
    ]
    assert rec["count"] == ref["count"] and sum(rec["hist"]["n"]) + rec["hist"]["under"] == ref["count"]
    for ex, want in zip(rec["ex"]["top"], ref["examples"]["top"]):
        assert ex["a"] == pytest.approx(want["acts"], abs=1e-3 * ref["max_act"])  # 4 digits of the max
        assert ex["a"][ex["p"]] == pytest.approx(max(want["acts"]), rel=1e-3)
    assert len(list((site / "data" / "features").iterdir())) == 20
    assert rec == feature_payloads(fs, range(1, 2), top_tokens(fs), load_explanations(expl))[0]
    with pytest.raises(InterpError, match="not empty"):
        (tmp_path / "other").mkdir()
        (tmp_path / "other" / "keep.txt").write_text("x")
        build_dashboard(fs, tmp_path / "other", progress=False)


def test_cli_dashboard_and_neuronpedia_export(fs, tmp_path, capsys):
    assert (
        main(["dashboard", "--features", str(fs.path), "--out", str(tmp_path / "site"), "--no-progress"]) == 0
    )
    assert "file://" in capsys.readouterr().out
    assert (
        main(
            [
                "export",
                "--neuronpedia",
                "--features",
                str(fs.path),
                "--out",
                str(tmp_path / "np"),
                "--batch-size",
                "8",
            ]
        )
        == 0
    )
    batches = sorted((tmp_path / "np").glob("batch-*.json"))
    assert len(batches) == 3
    feats = [f for b in batches for f in json.loads(b.read_text())["features"]]
    assert [f["feature_index"] for f in feats] == list(range(20))
    f0, ref = feats[5], fs.feature(5)
    assert f0["frac_nonzero"] == pytest.approx(ref["density"])
    assert f0["pos_str"] == [s for s, _ in ref["logits"]["pos"]]
    top, quant = ref["examples"]["top"], ref["examples"]["quant"]
    acts = f0["activations"]
    assert len(acts) == len(top) + len(quant)  # random non-firing examples are not exported
    assert acts[0]["tokens"] == top[0]["tokens"] and acts[0]["bin_min"] == -1
    assert acts[0]["bin_max"] == pytest.approx(ref["max_act"])
    assert acts[0]["values"][acts[0]["qualifying_token_index"]] == pytest.approx(max(top[0]["acts"]), abs=1e-3)
    bands = acts[len(top) :]
    assert bands and all(a["bin_min"] <= max(a["values"]) + 1e-3 <= a["bin_max"] + 2e-3 for a in bands)
    assert all(a["bin_contains"] == 1 / 4 for a in bands)
    assert f0["correlated_features_indices"] == [j for j, _ in ref["neighbours"]["cooc"]]
    assert f0["n_tokens_in_prompt"] == 32 and f0["n_prompts_total"] == fs.manifest["n_rows"] // 32
    # the format's field names, as SAEDashboard writes them for Neuronpedia
    assert {"neuron_alignment_indices", "correlated_neurons_pearson", "logits_hist_data_bar_values",
            "decoder_weights_dist", "dataset"} <= set(f0)
    assert not {"index", "max_act", "explanations"} & set(f0)


def test_neuronpedia_explanations_file(fs, tmp_path):
    from interp.formats.neuronpedia import export_neuronpedia

    files = export_neuronpedia(fs, tmp_path, {3: {"text": "loops", "scores": {"fuzz": 0.5}}}, model_id="m")
    assert [p.name for p in files] == ["batch-0.json"]
    assert json.loads((tmp_path / "explanations.json").read_text()) == [
        {"modelId": "m", "layer": RESID, "index": "3", "description": "loops", "scores": {"fuzz": 0.5}}
    ]
    batch = json.loads(files[0].read_text())
    assert (batch["model_id"], batch["layer"], batch["sae_set"]) == ("m", 0, RESID)
