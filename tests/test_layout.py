"""Layout under hostile and long tokens, measured in real Chromium: a 1,200-character token must not push the
index table's explanation and score columns off screen, must not spill out of the logit-effects table, and
no page (static or served) may be wider than the window."""

from __future__ import annotations

import threading

import pytest

from interp.site.build import build_dashboard

pytestmark = pytest.mark.browser
LONG = ["Q" + "abcdefghij" * 120, "<b>" + "0123456789" * 119 + "zz</b>"]  # 1,200 characters each, no spaces
VIEWPORTS = [(1280, 900), (800, 900), (420, 800)]
N_FEATURES = 16
HOOK = "blocks.0.hook_resid_post"

# [page width, window width, the widest element's right edge and what it is]; what a horizontal scroller holds
# (the index table on a phone-sized window) is inside the page
OVERFLOW = """() => {
  const w = document.documentElement.clientWidth;
  let worst = null;
  for (const e of document.querySelectorAll('body *')) {
    if (e.closest('.scroll-x') && !e.classList.contains('scroll-x')) continue;
    const r = e.getBoundingClientRect();
    if (r.width && (!worst || r.right > worst[0])) worst = [r.right, e.tagName + '.' + e.className + '#' + e.id];
  }
  return [document.documentElement.scrollWidth, w, worst];
}"""


@pytest.fixture(scope="module")
def world(tmp_path_factory, stand_in_sae, tiny_model_factory, corpus_lines):
    """A model with two 1,200-character tokens whose unembeddings are large (so they lead every feature's logit
    effects), a corpus full of them, a stand-in SAE whose feature 0 fires on them, its features and their site."""
    import torch
    from transformers import GPT2LMHeadModel

    from interp.activations import CacheConfig, cache_activations
    from interp.features import AnalyzeConfig, analyze_features, load_feature_store
    from interp.model import CorpusConfig, load_model

    base = tmp_path_factory.mktemp("layout")
    model_dir = tiny_model_factory(base / "model", extra_tokens=LONG)
    hf = GPT2LMHeadModel.from_pretrained(model_dir)
    long_ids = [hf.config.vocab_size - 2, hf.config.vocab_size - 1]
    with torch.no_grad():
        hf.transformer.wte.weight[long_ids] *= 40  # tied: the unembedding rows grow too
    hf.save_pretrained(model_dir)
    corpus = base / "corpus"
    corpus.mkdir()
    for i in range(12):
        (corpus / f"d{i}.txt").write_text(corpus_lines[i % 5] + (LONG[i % 2] + " x = ") * 6)
    model = load_model(str(model_dir))
    store = cache_activations(CacheConfig(model=str(model_dir), hooks=(HOOK,), n_tokens=640, ctx_len=32,
                                          corpus=CorpusConfig(source=str(corpus))), base / "store", progress=False)
    sae = stand_in_sae(32, N_FEATURES, HOOK, store.model["fingerprint"])
    x = store.read(f"act/{HOOK}", 0)
    on_long = torch.isin(store.read("tokens", 0).long(), torch.tensor(long_ids))
    direction = torch.nn.functional.normalize(x[on_long].mean(0), dim=0)
    with torch.no_grad():  # feature 0 reads the long tokens' direction, so they are its top examples' peaks
        sae.W_enc[:, 0] = 2 * direction
        sae.b_enc[0] = 0.0
    cfg = AnalyzeConfig(n_top=6, quantile_pool=20, n_quantiles=3, per_quantile=2, window=16, n_random=2)
    fs = load_feature_store(analyze_features(sae, store, base / "features", cfg, model, progress=False))
    expl = {i: {"explanation": f"feature {i}: " + "a long explanation " * 12, "scores": {"fuzz": i / 16}}
            for i in range(N_FEATURES)}
    index = build_dashboard(fs, base / "site", expl, progress=False)
    return {"model": model, "sae": sae, "fs": fs, "site": index.parent, "expl": expl}


@pytest.fixture(params=VIEWPORTS, ids=lambda v: f"{v[0]}px")
def page(browser, request):
    context = browser.new_context(viewport={"width": request.param[0], "height": request.param[1]})
    pg = context.new_page()
    yield pg
    context.close()


def _fits(page) -> None:
    width, window, worst = page.evaluate(OVERFLOW)
    assert width <= window and worst[0] <= window + 0.5, f"page {width}px in a {window}px window; widest: {worst}"


def _long_chips(page, scope: str) -> int:
    return page.evaluate(f"[...document.querySelectorAll('{scope} .chip')].filter(c => c.title.length > 1000).length")


def test_index_keeps_every_column_on_screen(page, world, open_ready):
    open_ready(page, (world["site"] / "index.html").as_uri())
    page.select_option("#filter", "all")
    assert _long_chips(page, "#rows") > 0, "the long tokens should be among the top tokens"
    _fits(page)
    window = page.evaluate("document.documentElement.clientWidth")
    if window >= 800:  # narrower, the table scrolls inside its card
        for th in ("th:text-is('Explanation')", "th:last-child"):  # the last column is the score (fuzz)
            box = page.locator(th).bounding_box()
            assert box is not None and box["x"] + box["width"] <= window, (th, box, window)
    assert "a long explanation" in page.inner_text("#rows")


def test_feature_page_keeps_long_tokens_inside_the_logit_table(page, world, open_ready):
    open_ready(page, (world["site"] / "feature.html").as_uri() + "?i=0")
    assert _long_chips(page, "#logits") > 0, "the long tokens should lead the logit effects"
    card = page.locator("#logits").bounding_box()
    rights = page.evaluate("[...document.querySelectorAll('#logits td, #logits .chip')]"
                           ".map(e => e.getBoundingClientRect().right)")
    assert max(rights) <= card["x"] + card["width"], (max(rights), card)
    _fits(page)


def test_served_prompt_view_and_feature_page_fit_the_window(page, world, open_ready):
    from interp.site.serve import make_server

    expl = {i: {"text": e["explanation"], "scores": e["scores"]} for i, e in world["expl"].items()}
    server = make_server(world["site"], world["model"], world["sae"], HOOK, port=0,
                         explanations=expl)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        host, port = server.server_address[:2]
        from urllib.parse import quote

        text = quote("def f(x):\n    return " + LONG[0] + LONG[1])
        open_ready(page, f"http://{host}:{port}/prompt.html?text={text}")
        assert page.locator("#tokens .tok").count() > 3
        _fits(page)
        page.click("#tokens .tok >> nth=-1")
        _fits(page)
        open_ready(page, f"http://{host}:{port}/feature.html?i=1")
        _fits(page)
    finally:
        server.shutdown()
        server.server_close()
