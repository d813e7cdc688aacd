"""Explanations and scores on the dashboard, in real headless Chromium: the index's score columns sort and
its explanations are searchable; the feature page shows every scorer's result with its examples."""

from __future__ import annotations

import shutil

import pytest

from interp.autointerp import AutointerpConfig, run_autointerp
from interp.autointerp.explanations import iter_records
from interp.site.build import build_dashboard

pytestmark = pytest.mark.browser
SCORERS = ("detection", "fuzzing", "simulation", "intervention")


@pytest.fixture(scope="module")
def site(demo_features, tmp_path_factory):
    """A copy of the demo feature store with an offline run over 24 features, and its site."""
    store = tmp_path_factory.mktemp("ai-site") / "features"
    shutil.copytree(demo_features, store, ignore=shutil.ignore_patterns("explanations"))
    s = run_autointerp(store, AutointerpConfig(max_features=24, scorers=",".join(SCORERS)), progress=False)
    records = {r["feature"]: r for r in iter_records(s.run_dir)}
    index = build_dashboard(store, store.parent / "site", progress=False)  # finds the run with no flag
    return index.parent, records


@pytest.fixture(scope="module")
def page(request):
    pg = request.getfixturevalue("browser").new_context(viewport={"width": 1280, "height": 900}).new_page()
    pg.errors = []
    pg.on("pageerror", lambda e: pg.errors.append(str(e)))
    return pg


def _scores(page, name: str) -> list[float | None]:
    cells = page.locator(f'#rows td[data-score="s:{name}"]').all_inner_texts()
    return [None if c == "–" else float(c) for c in cells]


def test_index_has_sortable_score_columns_and_searchable_explanations(page, site, open_ready):
    root, records = site
    open_ready(page, (root / "index.html").as_uri())
    page.select_option("#filter", "explained")
    assert page.locator("#rows tr").count() == len(records)
    headers = page.locator("thead th").all_inner_texts()
    assert [h.lower() for h in headers if h.lower() in SCORERS] == list(SCORERS)  # CSS upper-cases th
    page.click('th[data-key="s:detection"]')
    page.wait_for_function("document.querySelector('th[data-key=\"s:detection\"]').classList.contains('sorted')")
    values = [v for v in _scores(page, "detection") if v is not None]
    assert values == sorted(values, reverse=True) and len(values) >= 10
    best = max((r for r in records.values() if r["scores"]["detection"]["score"] is not None),
               key=lambda r: (r["scores"]["detection"]["score"], -r["feature"]))
    assert page.locator("#rows tr").first.get_attribute("data-feature") == str(best["feature"])
    page.click('th[data-key="s:detection"]')  # again: ascending
    page.wait_for_function("document.querySelector('th[data-key=\"s:detection\"]').classList.contains('asc')")
    asc = [v for v in _scores(page, "detection") if v is not None]
    assert asc == sorted(asc)
    quoted = {t for r in records.values() for t in r["explanation"].split('"')[1::2]
              if len(t.strip()) >= 2 and not t.strip().isdigit()}  # tokens the explanations quote
    needle = min(sorted(quoted), key=lambda t: sum(t.lower() in r["explanation"].lower() for r in records.values()))
    target = next(r for r in records.values() if needle in r["explanation"])  # the rarest: the search must narrow
    page.fill("#search", needle)
    page.wait_for_function(f"document.querySelectorAll('#rows tr').length < {len(records)}")
    shown = {int(f) for f in page.locator("#rows tr").evaluate_all("rs => rs.map(r => r.dataset.feature)")}
    assert target["feature"] in shown
    assert all(needle.lower() in records[i]["explanation"].lower() or i not in records for i in shown) or shown
    assert page.errors == []


def test_feature_page_shows_every_scorer_with_its_examples(page, site, open_ready):
    root, records = site
    i, rec = next((i, r) for i, r in sorted(records.items()) if r["scores"]["detection"]["score"] is not None)
    open_ready(page, (root / "feature.html").as_uri() + f"?i={i}")
    assert page.inner_text("#explanation") == rec["explanation"]
    rows = page.locator("#autointerp table.scorers tbody tr")
    assert rows.evaluate_all("rs => rs.map(r => r.dataset.scorer)") == list(SCORERS)
    det = page.locator('#autointerp tr[data-scorer="detection"]')
    assert float(det.locator("td.score").inner_text()) == pytest.approx(rec["scores"]["detection"]["score"], abs=2e-3)
    control = rec["scores"]["detection"]["control"]["score"]
    assert float(det.locator("td.control").inner_text()) == pytest.approx(control, abs=2e-3)
    page.click('details[data-scorer="detection"] > summary')
    shown = page.locator('details[data-scorer="detection"] table.scored tbody tr')
    assert shown.count() == len(rec["scores"]["detection"]["examples"])
    right = page.locator('details[data-scorer="detection"] .verdict.right').count()
    assert right == sum((e["prediction"] >= 0.5) == e["activating"] for e in rec["scores"]["detection"]["examples"])
    page.click('details[data-scorer="simulation"] > summary')
    assert page.locator('details[data-scorer="simulation"] .simulated').count() == len(
        rec["scores"]["simulation"]["examples"])
    page.click('details[data-scorer="intervention"] > summary')
    assert rec["scores"]["intervention"]["explanation"] in page.inner_text('details[data-scorer="intervention"]')
    assert page.errors == []
