"""The circuit graph page in real headless Chromium, opened from file://: it draws a graph found by
``find_circuit`` on the planted model (layers, q/k/v ports, the planted edge strongest), the threshold slider
changes what is drawn, hover and click show scores, and hostile labels are shown as text."""

from __future__ import annotations

import pytest

import interp
from cli.main import main
from interp.circuits.evaluate import ground_truth
from interp.circuits.graph import CircuitGraph, Edge, Node, component_nodes, load_graph, save_graph
from interp.site.build import build_dashboard
from interp.zoo.planted import write_planted_model

pytestmark = pytest.mark.browser
TORCH_THREADS = 1  # see conftest.py
HOSTILE = '</script><script>window.__pwned=1</script><img src=x onerror="window.__pwned=1">'
SPY = "[typeof window.__pwned, document.querySelectorAll('main img, main svg[onload], main script').length]"
CLEAN = ["undefined", 0]
VISIBLE_EDGES = "[...document.querySelectorAll('#graph .edge')].filter(e => e.style.display !== 'none').length"
VISIBLE_NODES = "[...document.querySelectorAll('#graph .node')].filter(e => e.style.display !== 'none').length"


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """EAP (scored against the planted circuit) and attribution patching on the planted model, as a site of
    graphs alone built by ``interp dashboard --graphs``."""
    base = tmp_path_factory.mktemp("graph-view")
    model = interp.load_model(str(write_planted_model(base / "planted")))
    task = interp.make_task("induction", model, n_prompts=16, seq_len=8)
    truth = ground_truth(["L0H1", "L1H2"], [("embed", "L0H1", "v"), ("embed", "L1H2", "v"), ("L0H1", "L1H2", "k"),
                                           ("L1H2", "logits", None)], name="planted")
    for method in ("attribution-patching", "eap-ig"):
        save_graph(interp.find_circuit(model, task, method, truth=truth), base / "graphs" / f"{method}.json")
    assert main(["dashboard", "--graphs", str(base / "graphs"), "--out", str(base / "site")]) == 0
    return {"site": base / "site", "eap-ig": load_graph(base / "graphs" / "eap-ig.json")}


def test_the_page_draws_a_circuit_found_on_the_planted_model(page, site, open_ready):
    graph = site["eap-ig"]
    open_ready(page, (site["site"] / "index.html").as_uri())
    assert page.locator("#graph-rows tr").count() == 2
    page.click("#graph-rows a >> text=eap-ig")
    page.wait_for_selector("body[data-ready]")
    assert page.url.endswith("graph.html?g=1") and page.inner_text("#graph-title") == "eap-ig \u00b7 induction"
    scored = [e for e in graph.edges if e.score]
    assert page.locator("#graph .node").count() == len(graph.nodes) == 12
    assert page.locator("#graph .edge").count() == len(scored)
    assert page.locator("#graph .port").count() == 3 * 8  # q, k, v of every head
    # Layout: embeddings at the bottom, logits on top, a layer's heads in order on one row.
    cy = {n: float(page.get_attribute(f'[data-node="{i}"] circle', "cy")) for i, n in enumerate(
        x.id for x in graph.nodes)}
    cx = {n: float(page.get_attribute(f'[data-node="{i}"] circle', "cx")) for i, n in enumerate(
        x.id for x in graph.nodes)}
    assert cy["input"] > cy["a0.h1"] > cy["m0"] > cy["a1.h2"] > cy["logits"]
    assert cy["a1.h0"] == cy["a1.h3"] and cx["a1.h0"] < cx["a1.h1"] < cx["a1.h2"] < cx["a1.h3"] < cx["m1"]
    # The strongest edge is drawn widest, on top, with its sign's colour; it is a planted edge.
    top = max(scored, key=lambda e: abs(e.score or 0))
    assert top.key in {"input->a1.h2<v>", "a0.h1->a1.h2<k>", "a1.h2->logits", "input->a0.h1<v>"}
    first = page.locator('#graph .edge[data-edge="0"]')
    assert first.is_visible()
    widths = page.evaluate("[...document.querySelectorAll('#graph .edge')].map(e => +e.getAttribute('stroke-width'))")
    assert float(first.get_attribute("stroke-width")) == max(widths) > min(widths)
    assert first.get_attribute("stroke").startswith("rgba(25, 113, 194" if top.score > 0 else "rgba(224, 49, 49")
    # The evaluation's AUCs are on the page.
    auc = graph.metadata["evaluation"]["node_auc"]
    assert auc == 1.0 and page.inner_text('.stat:has-text("node AUC") .v') == "1"
    assert page.errors == []


def test_the_slider_hides_edges_then_nodes(page, site, open_ready):
    open_ready(page, (site["site"] / "graph.html").as_uri() + "?g=1")
    counts = []
    for value in ("0", "500", "900", "1000"):
        page.fill("#threshold", value)
        shown = page.locator("#shown")
        edges, nodes = int(shown.get_attribute("data-edges")), int(shown.get_attribute("data-nodes"))
        assert edges == page.evaluate(VISIBLE_EDGES) and nodes == page.evaluate(VISIBLE_NODES)
        assert f"{edges} of 110 edges" in shown.inner_text()
        counts.append((edges, nodes))
    graph = site["eap-ig"]
    scored = [e for e in graph.edges if e.score]
    touched = {e.source for e in scored} | {e.target for e in scored} | {n.id for n in graph.nodes if n.score}
    assert touched == {n.id for n in graph.nodes} - {"m0", "m1"}  # the planted MLPs write nothing
    assert counts[0] == (len(scored), len(touched))  # the left end draws every scored edge and its nodes
    assert counts[-1][0] >= 1 and counts[-1][1] >= 2 and counts[-1][1] < 12
    assert all(a[0] >= b[0] and a[1] >= b[1] for a, b in zip(counts, counts[1:])) and counts[0] != counts[-1]
    assert "|score| \u2265" in page.inner_text("#threshold-value")
    assert page.errors == []


def test_hover_and_click_show_scores(page, site, open_ready):
    graph = site["eap-ig"]
    open_ready(page, (site["site"] / "graph.html").as_uri() + "?g=1")
    i = [n.id for n in graph.nodes].index("a1.h2")
    page.hover(f'[data-node="{i}"] circle')
    tip = page.inner_text("#tooltip")
    assert tip.startswith("L1H2") and "score" in tip
    page.click(f'[data-node="{i}"] circle')
    details = page.inner_text("#details")
    assert "a1.h2" in details and "strongest inputs" in details and "L0H1 \u2192 L1H2 \u27e8k\u27e9" in details
    assert page.locator("#graph.focus .edge.hl").count() > 0
    page.locator('#graph .hit[data-edge="0"]').dispatch_event("click")
    details = page.inner_text("#details")
    assert "rank by |score|" in details and "1 of 110" in details
    # Switching graphs keeps the page working (the node method's graph: edge scores derived from nodes).
    page.select_option("#graph-select", "0")
    page.wait_for_url("**/graph.html?g=0")
    page.wait_for_selector("body[data-ready]")
    assert "attribution-patching" in page.inner_text("#graph-title") and "node" in page.inner_text("#graph-info")
    assert page.errors == []


def test_hostile_labels_are_shown_as_text(page, tmp_path, open_ready):
    nodes = component_nodes(1, 2)
    nodes[1].label = HOSTILE
    nodes[2].attrs = {"note": HOSTILE}
    extra = Node("x", "feature", 0, position=None, label="<b>bold</b>", score=1.0)
    nodes.insert(3, extra)
    edges = [Edge("input", "a0.h0", "q", 2.0), Edge("a0.h0", "logits", None, -1.0), Edge("x", "logits", None, 0.5),
             Edge("a0.h1", "m0", None, 0.25)]
    meta = {"method": HOSTILE, "task": {"name": "<i>t</i>", "examples": [HOSTILE], "description": HOSTILE},
            "model": {"name": HOSTILE}}
    index = build_dashboard(None, tmp_path / "site", graphs=[CircuitGraph(nodes, edges, meta)])
    open_ready(page, index.as_uri())
    assert HOSTILE in page.inner_text("#graph-rows") and page.evaluate(SPY) == CLEAN
    open_ready(page, (index.parent / "graph.html").as_uri())
    page.fill("#threshold", "0")
    labels = page.evaluate("[...document.querySelectorAll('#graph .node-label')].map(t => t.textContent)")
    assert HOSTILE in labels and "<b>bold</b>" in labels
    assert page.inner_text("#graph-title") == f"{HOSTILE} \u00b7 <i>t</i>"
    assert HOSTILE in page.inner_text("#graph-info") and page.evaluate(SPY) == CLEAN
    page.click('[data-node="2"] circle')
    details = page.inner_text("#details")
    assert "<script>window.__pwned=1</script>" in details and "null" not in details  # attributes, as JSON text
    page.click('[data-node="1"] circle')
    assert HOSTILE in page.inner_text("#details") and page.evaluate(SPY) == CLEAN
    assert page.evaluate("document.querySelectorAll('#graph b, #graph i, #graph img').length") == 0
    open_ready(page, (index.parent / "graph.html").as_uri() + "?g=<img src=x onerror=window.__pwned=1>")
    assert "No graph" in page.inner_text("main") and page.evaluate(SPY) == CLEAN
    assert not [e for e in page.errors if "pwned" in e or "dialog" in e]
