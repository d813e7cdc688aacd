"""Static assets of interp's dashboards: one HTML page template, JavaScript and CSS (shipped as package data).

Pages build their DOM with ``createElement``/``textContent`` only, so every string that came from a
tokenizer, a corpus or an LLM is shown as text. Data arrives as ``data/*.js`` files that assign JSON to
a global, because ``fetch`` of ``file://`` URLs is blocked and the site must open offline.
"""

from pathlib import Path

ASSETS_DIR = Path(__file__).resolve().parent
"""Directory holding the asset files that :func:`interp.site.build_dashboard` copies."""

ASSET_FILES = ("style.css", "common.js", "index.js", "feature.js", "autointerp.js", "prompt.js", "graph.js",
               "supernodes.js")
"""The files copied into every site as they are (plotly.min.js is written from the installed plotly package)."""

PAGE_TEMPLATE = "page.html"
"""Every page's HTML; its ``<!-- scripts -->`` line becomes the page's script tags."""

PAGES: dict[str, tuple[str, ...]] = {
    "index.html": ("common.js", "index.js"),
    "feature.html": ("plotly.min.js", "common.js", "autointerp.js", "feature.js"),
    "prompt.html": ("common.js", "prompt.js"),
    "graph.html": ("common.js", "supernodes.js", "graph.js"),
}
"""Page name -> the scripts it loads, in order."""
