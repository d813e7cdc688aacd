"""The dashboard in real headless Chromium: offline index and feature pages, the served prompt view, and
that hostile tokens, corpus text and explanations are shown as text and never run."""

from __future__ import annotations

import threading

import pytest
import torch

from interp.site.build import build_dashboard

pytestmark = pytest.mark.browser
PAYLOADS = [
    "<script>window.__pwned=1</script>",
    '<img src=x onerror="window.__pwned=1">',
    "\"'><svg onload=window.__pwned=1>",
]
RESID = "blocks.0.hook_resid_post"  # the hook conftest's feature store reads
EXPLANATION = '</script><script>window.__pwned=1</script><img src=x onerror=window.__pwned=1> & "q"'
SPY = "[typeof window.__pwned, document.querySelectorAll('main img, main svg[onload], main script').length]"
CLEAN = ["undefined", 0]


@pytest.fixture(scope="module")
def world(tmp_path_factory, make_feature_store, tiny_model_factory, corpus_lines):
    """A model whose tokenizer has hostile tokens, a corpus full of them, its features and their site."""
    from interp.features import AnalyzeConfig
    from interp.model import load_model

    base = tmp_path_factory.mktemp("browser")
    model_dir = tiny_model_factory(base / "model", extra_tokens=PAYLOADS)
    corpus = base / "corpus"
    corpus.mkdir()
    for i in range(12):
        (corpus / f"d{i}.txt").write_text(
            f"x = '{PAYLOADS[i % 3]}'\n" + corpus_lines[i % 5] + PAYLOADS[(i + 1) % 3]
        )
    model = load_model(str(model_dir))
    cfg = AnalyzeConfig(n_top=6, quantile_pool=20, n_quantiles=3, per_quantile=2, window=16, n_random=2)
    sae, fs = make_feature_store(model_dir, corpus, base, model, 16, cfg, n_tokens=640)
    expl = {
        i: {"explanation": EXPLANATION if i % 2 else f"feature {i} plain", "scores": {"fuzz": i / 16}}
        for i in range(16)
    }
    index = build_dashboard(fs, base / "site", expl, progress=False)
    payload_ids = set(model.tokenizer.convert_tokens_to_ids(PAYLOADS))
    hostile = [i for i in range(16) if payload_ids & set(fs.tensors["top_tokens"][i].flatten().tolist())]
    return {"model": model, "sae": sae, "fs": fs, "site": index.parent, "expl": expl, "hostile": hostile}


def test_index_search_and_feature_page_offline(page, world, open_ready):
    site = world["site"]
    open_ready(page, (site / "index.html").as_uri())
    page.select_option("#filter", "all")
    assert page.locator("#rows tr").count() == 16
    page.fill("#search", "7")
    page.wait_for_function("document.querySelectorAll('#rows tr').length === 1")
    page.click("#rows a")
    page.wait_for_selector("body[data-ready]")
    assert page.url.endswith("feature.html?i=7")
    assert page.locator("#hist svg.main-svg").count() >= 1  # plotly rendered the histogram as SVG
    assert page.locator("#hist .bars path, #hist g.point path").count() > 0
    toks = page.locator("#examples .tok")
    assert toks.count() == 6 * 16
    coloured = page.evaluate(
        "[...document.querySelectorAll('#examples .tok')].filter(t => t.style.backgroundColor).length"
    )
    assert coloured > 0 and page.locator("#examples .tok.peak").count() == 6
    assert "fuzz" in page.inner_text("#scores") and page.locator("#neighbours a").count() > 0
    assert page.locator("#logits .chip").count() == 2 * 10
    page.click("#neighbours a >> nth=0")
    page.wait_for_selector("body[data-ready]")
    assert "feature.html?i=" in page.url and not page.url.endswith("i=7")
    assert page.errors == []


def test_hostile_strings_are_shown_as_text(page, world, open_ready):
    assert world["hostile"], "the corpus should put hostile tokens into top examples"
    open_ready(page, (world["site"] / "index.html").as_uri())
    title = page.title()
    page.select_option("#filter", "all")
    body = page.inner_text("#rows")
    assert "</script><script>window.__pwned=1</script>" in body  # the explanation, verbatim, as text
    page.fill("#search", "<img")
    page.wait_for_function("document.querySelectorAll('#rows tr').length > 0")
    for i in world["hostile"][:3] + [1]:
        open_ready(page, (world["site"] / "feature.html").as_uri() + f"?i={i}")
        text = page.inner_text("main")
        assert any(p in text for p in PAYLOADS) or EXPLANATION in text
        assert page.evaluate(SPY) == CLEAN
    open_ready(page, (world["site"] / "feature.html").as_uri() + "?i=<img src=x onerror=window.__pwned=1>")
    assert page.evaluate(SPY) == CLEAN and "No feature" in page.inner_text("main")
    assert page.title() != "pwned" and title.endswith("interp features")
    assert not [e for e in page.errors if "pwned" in e or "dialog" in e]


def test_served_prompt_view(page, world, open_ready):
    from interp.site.serve import make_server

    server = make_server(
        world["site"],
        world["model"],
        world["sae"],
        port=0,
        explanations={i: {"text": EXPLANATION, "scores": {}} for i in range(16)},
    )
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        host, port = server.server_address[:2]
        from urllib.parse import quote

        prompt = "def add(a, b):\n    return a + b " + PAYLOADS[0] + PAYLOADS[1]
        open_ready(page, f"http://{host}:{port}/prompt.html?text={quote(prompt)}")
        toks = page.locator("#tokens .tok")
        want = world["model"].token_strings(world["model"].to_tokens(prompt)[0])
        assert toks.count() == len(want)
        assert page.locator("#summary tr").count() > 0
        toks.nth(3).click()
        links = page.locator("#token-features a")
        assert links.count() > 0
        with torch.no_grad():  # the listed features are those that fire on that token
            x = world["model"].capture(world["model"].to_tokens(prompt), [RESID]).acts[RESID][0]
            f = world["sae"].encode(x)[3]
        shown = [int(t.removeprefix("#")) for t in links.all_inner_texts()]
        assert shown == f.topk(len(shown)).indices.tolist() and all(f[shown] > 0)
        assert PAYLOADS[0] in page.inner_text("#tokens") and page.evaluate(SPY) == CLEAN
        links.first.click()
        page.wait_for_selector("body[data-ready]")
        assert "feature.html?i=" in page.url and page.locator("header a", has_text="Prompt").count() == 1
        assert page.errors == []
    finally:
        server.shutdown()
        server.server_close()
