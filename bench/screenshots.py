"""Re-take the documentation's dashboard screenshots from a built site (not part of the test run).

    .venv/bin/python bench/screenshots.py --site runs/demo/dashboard --out docs/img --feature 840
    .venv/bin/python bench/screenshots.py --site runs/compare-site --out docs/img --only graph \\
        --graph-name circuits-demo-induction.png

Writes ``index.png`` (the feature index, one 1400 x 900 viewport), ``feature.png`` (the whole page of
``--feature``) and, with ``--only graph`` or when the site holds graphs, the graph view of graph ``--graph``
(one viewport). Pages are opened from ``file://`` in Debian's Chromium through Playwright (never
``playwright install``), and each shot waits for the page's ``body[data-ready]``, which the site's scripts set
after drawing. Run it after ``make demo`` whenever the demo model or the site changes.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run"]
KINDS = ("index", "feature", "graph")


def shoot(page, url: str, path: Path, full_page: bool) -> None:
    """Open ``url``, wait until the site says it has drawn itself, and save a PNG to ``path``."""
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(url)
    page.wait_for_selector("body[data-ready]", timeout=60000)
    page.wait_for_timeout(500)  # let plotly finish its transition before the shot
    if errors:
        raise SystemExit(f"{url}: script errors: {errors}")
    page.screenshot(path=str(path), full_page=full_page)
    print(f"wrote {path}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--site", type=Path, required=True, help="directory holding index.html")
    ap.add_argument("--out", type=Path, default=Path("docs/img"))
    ap.add_argument("--feature", type=int, default=0, help="feature shown in feature.png")
    ap.add_argument("--graph", type=int, default=0, help="graph (index in the site) shown in the graph shot")
    ap.add_argument("--graph-name", default="graph.png", help="file name of the graph shot")
    ap.add_argument("--only", nargs="+", choices=KINDS, default=None,
                    help="take only these shots (default: index and feature, and graph if the site has graphs)")
    ap.add_argument("--width", type=int, default=1400)
    ap.add_argument("--height", type=int, default=900)
    args = ap.parse_args()

    site = args.site.resolve()
    if not (site / "index.html").exists() and not (site / "graph.html").exists():
        raise SystemExit(f"{site} holds no built site (run `make demo` or `interp dashboard` first)")
    kinds = args.only or ["index", "feature"] + (["graph"] if any((site / "data" / "graphs").glob("*")) else [])
    args.out.mkdir(parents=True, exist_ok=True)

    from playwright.sync_api import sync_playwright

    shots = {
        "index": ("index.html", "index.png", False),
        "feature": (f"feature.html?i={args.feature}", "feature.png", True),
        "graph": (f"graph.html?g={args.graph}", args.graph_name, False),
    }
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        for kind in kinds:
            rel, name, full = shots[kind]
            page = browser.new_page(viewport={"width": args.width, "height": args.height})
            shoot(page, site.as_uri() + "/" + rel, args.out / name, full)
            page.close()
        browser.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
