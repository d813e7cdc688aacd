"""Static assets of interp's dashboards: HTML pages, JavaScript and CSS (shipped as package data).

Pages build their DOM with ``createElement``/``textContent`` only, so every string that came from a
tokenizer, a corpus or an LLM is shown as text. Data arrives as ``data/*.js`` files that assign JSON to
a global, because ``fetch`` of ``file://`` URLs is blocked and the site must open offline.
"""

from pathlib import Path

ASSETS_DIR = Path(__file__).resolve().parent
"""Directory holding the asset files that :func:`interp.dashboards.build_dashboard` copies."""

ASSET_FILES = (
    "index.html",
    "feature.html",
    "prompt.html",
    "style.css",
    "common.js",
    "index.js",
    "feature.js",
    "prompt.js",
)
"""The files copied into every site (plotly.min.js is written from the installed plotly package)."""
