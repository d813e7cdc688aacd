"""Feature links and supernodes in real headless Chromium, from file://: a feature node of an attribution graph links
to its feature page, the feature page lists the graph and opens it with the node selected; two nodes picked with
shift-click become one supernode whose edges are the sums computed in Python, the grouping survives a reload
(localStorage), is saved as a file that ``interp dashboard --supernodes`` shows, and ungroups; hostile names and
prompts stay text."""

from __future__ import annotations

import json
from urllib.parse import quote

import pytest
from graph_site import graph_site

from cli.main import main
from interp.circuits.graph import CircuitGraph, save_graph
from interp.circuits.supernodes import collapse_supernodes, load_supernodes

pytestmark = pytest.mark.browser
TORCH_THREADS = 1  # see conftest.py
HOSTILE = '</script><script>window.__pwned=1</script><img src=x onerror="window.__pwned=1">'
SPY = "[typeof window.__pwned, document.querySelectorAll('main img, main svg[onload], main script').length]"
CLEAN = ["undefined", 0]


@pytest.fixture(scope="module")
def site(tmp_path_factory, tiny_model_dir, corpus_dir, tiny_model):
    """The graph of ``graph_site`` and the feature store of its layer-1 transcoder, as one site built by
    ``interp dashboard --features ... --graphs ...``."""
    base = tmp_path_factory.mktemp("supernode-view")
    made = graph_site(base, tiny_model_dir, corpus_dir, tiny_model)
    save_graph(made.graph, base / "graphs" / "graph.json")
    args = ["dashboard", "--features", str(made.features.path), "--graphs", str(base / "graphs"), "--no-progress"]
    assert main([*args, "--out", str(base / "site")]) == 0
    both = ["dashboard", "--features", str(made.features.path), str(made.features0.path), "--graphs",
            str(base / "graphs"), "--no-progress", "--out", str(base / "site-both")]
    assert main(both) == 0
    return {"base": base, "graph": made.graph, "args": args, "features": made.features}


def _pair_sharing_a_neighbour(graph: CircuitGraph):
    """Two feature nodes with edges to or from one common node (so grouping them sums edges)."""
    feats = [n for n in graph.nodes if n.kind == "feature"]
    near = {n.id: {e.target for e in graph.edges if e.source == n.id} | {e.source for e in graph.edges
                                                                         if e.target == n.id} for n in feats}
    pairs = [(x, y) for i, x in enumerate(feats) for y in feats[i + 1:] if near[x.id] & near[y.id]]
    return max(pairs, key=lambda p: len(near[p[0].id] & near[p[1].id]))


def _graph_page(page, open_ready, site_dir, query="?g=0"):
    open_ready(page, (site_dir / "graph.html").as_uri() + query)
    page.fill("#threshold", "0")  # every edge and node drawn


def test_feature_node_links_to_its_page_which_lists_the_graph(page, site, open_ready):
    graph = site["graph"]
    layer1 = sorted((n for n in graph.nodes if n.kind == "feature" and n.layer == 1), key=lambda n: -abs(n.score))
    node = layer1[0]
    _graph_page(page, open_ready, site["base"] / "site")
    page.locator(f'#graph .node[data-id="{node.id}"] circle').dispatch_event("click")
    link = page.locator("#feature-link")
    assert link.inner_text() == f"feature page #{node.attrs['latent']}"
    layer0 = next(n for n in graph.nodes if n.kind == "feature" and n.layer == 0)
    page.locator(f'#graph .node[data-id="{layer0.id}"] circle').dispatch_event("click")
    assert page.locator("#feature-link").count() == 0  # layer 0's transcoder is not the site's dictionary
    page.locator(f'#graph .node[data-id="{node.id}"] circle').dispatch_event("click")
    page.click("#feature-link")
    page.wait_for_selector("body[data-ready]")
    assert page.url.endswith(f"feature.html?i={node.attrs['latent']}")
    rows = page.locator(f'#graph-appearances tr:has-text("{node.label}")')
    assert rows.count() == 1
    row = rows.first
    assert "attribution-graph" in row.inner_text() and row.locator(".chip.at").count() == 1
    assert row.locator(".graph-link").get_attribute("href") == f"graph.html?g=0&node={quote(node.id, safe='')}"
    row.locator(".graph-link").click()
    page.wait_for_selector("body[data-ready]")
    assert node.id in page.inner_text("#details") and page.locator("#graph .node.sel").get_attribute(
        "data-id") == node.id
    assert page.errors == []


def test_with_two_stores_a_layer0_node_opens_its_page_in_the_second_store_and_back(page, site, open_ready):
    graph, top = site["graph"], site["base"] / "site-both"
    node = max((n for n in graph.nodes if n.kind == "feature" and n.layer == 0), key=lambda n: abs(n.score))
    latent = node.attrs["latent"]
    _graph_page(page, open_ready, top)
    page.locator(f'#graph .node[data-id="{node.id}"] circle').dispatch_event("click")
    link = page.locator("#feature-link")
    assert link.get_attribute("href") == f"stores/1/feature.html?i={latent}"
    assert link.inner_text().startswith(f"feature page #{latent} (") and "blocks.0." in link.inner_text()
    link.click()
    page.wait_for_selector("body[data-ready]")
    assert page.url == (top / "stores" / "1" / "feature.html").as_uri() + f"?i={latent}"
    assert page.locator("#hooks").inner_text().startswith("reads blocks.0.")  # the layer-0 store's own data
    assert page.locator("#hist .main-svg").count() > 0  # plotly, loaded from the site's top, drew the histogram
    row = page.locator(f'#graph-appearances tr:has-text("{node.label}")').first
    assert row.locator(".graph-link").get_attribute("href") == f"../../graph.html?g=0&node={quote(node.id, safe='')}"
    # the store's index lists both stores and links back to the first
    open_ready(page, (top / "stores" / "1" / "index.html").as_uri())
    assert page.locator("#stores li").count() == 2 and page.locator("#stores a.store-link").count() == 1
    page.click("#stores a.store-link")
    page.wait_for_selector("body[data-ready]")
    assert page.url == (top / "index.html").as_uri()
    page.goto((top / "stores" / "1" / "feature.html").as_uri() + f"?i={latent}")
    page.wait_for_selector("body[data-ready]")
    page.locator(f'#graph-appearances tr:has-text("{node.label}") .graph-link').first.click()
    page.wait_for_selector("body[data-ready]")
    assert page.locator("#graph .node.sel").get_attribute("data-id") == node.id
    assert page.errors == []


def test_group_two_nodes_into_a_supernode_save_and_ungroup(page, site, open_ready, tmp_path):
    graph, site_dir = site["graph"], site["base"] / "site"
    a, b = _pair_sharing_a_neighbour(graph)
    _graph_page(page, open_ready, site_dir)
    n_nodes = page.locator("#graph .node").count()
    assert n_nodes == len(graph.nodes) and page.inner_text("#grouping").startswith("0 supernodes")
    for n in (a, b):
        page.locator(f'#graph .node[data-id="{n.id}"] circle').dispatch_event("click", {"shiftKey": True})
    assert page.inner_text("#picked") == "2 picked" and page.locator("#graph .node.picked").count() == 2
    page.fill("#supernode-name", HOSTILE)
    page.click("#group-nodes")
    assert page.locator("#graph .node").count() == n_nodes - 1
    sn = page.locator("#graph .node.kind-supernode")
    assert sn.count() == 1 and sn.locator(".node-label").text_content() == HOSTILE and page.evaluate(SPY) == CLEAN
    # its edges are the sums Python computes
    want = {(e.source, e.target): e.score for e in collapse_supernodes(graph, [(HOSTILE, [a.id, b.id])]).edges
            if "supernode-0" in (e.source, e.target)}
    drawn = page.evaluate("[...document.querySelectorAll('#graph .edge')].filter(e => e.dataset.source === "
                          "'supernode-0' || e.dataset.target === 'supernode-0').map(e => [e.dataset.source, "
                          "e.dataset.target, +e.dataset.score])")
    assert len(drawn) == len(want) > 0
    assert len(want) < len([e for e in graph.edges if {e.source, e.target} & {a.id, b.id}])  # some edges were summed
    for s, t, score in drawn:
        assert score == pytest.approx(want[(s, t)], rel=1e-5, abs=1e-7)
    assert HOSTILE in page.inner_text("#details") and "edges inside" in page.inner_text("#details")
    # kept in this browser across a reload, and saved as a grouping file
    _graph_page(page, open_ready, site_dir)
    assert page.locator("#graph .node.kind-supernode").count() == 1 and "edited" in page.inner_text("#grouping")
    with page.expect_download() as download:
        page.click("#save-grouping")
    saved = tmp_path / "grouping.json"
    download.value.save_as(saved)
    grouping = load_supernodes(saved)
    assert [(sn.name, set(sn.members)) for sn in grouping.supernodes] == [(HOSTILE, {a.id, b.id})]
    # ungroup
    page.locator("#graph .node.kind-supernode circle").dispatch_event("click")
    page.click("#ungroup")
    assert page.locator("#graph .node.kind-supernode").count() == 0
    assert page.locator("#graph .node").count() == n_nodes and page.errors == []
    # the saved file on a rebuilt site, in a fresh browser context (no localStorage): the page starts grouped
    assert main([*site["args"], "--supernodes", str(saved), "--out", str(tmp_path / "site")]) == 0
    other = page.context.browser.new_context()
    fresh, errors = other.new_page(), []
    fresh.on("pageerror", lambda e: errors.append(str(e)))
    _graph_page(fresh, open_ready, tmp_path / "site")
    assert fresh.locator("#graph .node.kind-supernode").count() == 1
    assert fresh.inner_text("#grouping").startswith("1 supernode") and "edited" not in fresh.inner_text("#grouping")
    # picking a supernode and another node merges them into one group (Enter in the name box groups)
    c = next(n for n in graph.nodes if n.kind == "feature" and n.id not in (a.id, b.id))
    fresh.locator("#graph .node.kind-supernode circle").dispatch_event("click", {"shiftKey": True})
    fresh.locator(f'#graph .node[data-id="{c.id}"] circle').dispatch_event("click", {"shiftKey": True})
    fresh.fill("#supernode-name", "merged")
    fresh.press("#supernode-name", "Enter")
    assert fresh.locator("#graph .node.kind-supernode").count() == 1
    assert fresh.locator("#graph .node").count() == len(graph.nodes) - 2
    assert fresh.locator("#members li").count() == 3 and "merged" in fresh.inner_text("#details")
    assert errors == []
    other.close()


def test_hostile_prompts_on_the_feature_page_are_text(page, site, open_ready, tmp_path):
    graph = site["graph"]
    meta = dict(graph.metadata, method=HOSTILE, prompt_tokens=[HOSTILE] * len(graph.metadata["prompt_tokens"]),
                config=dict(graph.metadata["config"], prompt=HOSTILE))
    save_graph(CircuitGraph(graph.nodes, graph.edges, meta), tmp_path / "g" / "graph.json")
    args = ["dashboard", "--features", str(site["features"].path), "--graphs", str(tmp_path / "g"), "--no-progress"]
    assert main([*args, "--out", str(tmp_path / "site")]) == 0
    latent = next(n.attrs["latent"] for n in graph.nodes if n.kind == "feature" and n.layer == 1)
    open_ready(page, (tmp_path / "site" / "feature.html").as_uri() + f"?i={latent}")
    text = page.inner_text("#graphs")
    assert HOSTILE in text and page.evaluate(SPY) == CLEAN
    chips = page.evaluate("[...document.querySelectorAll('#graphs .chip')].map(c => c.title)")
    assert chips and set(chips) == {json.dumps(HOSTILE)}
    assert not [e for e in page.errors if "pwned" in e]
