"""Turn a feature store into a static site that opens offline from ``file://``.

Layout of a site directory::

    index.html  feature.html  prompt.html      pages (copied from the ``dashboards`` package)
    common.js  index.js  feature.js  prompt.js  style.css
    plotly.min.js                               plotly's bundle, from the installed plotly package
    data/meta.js                                window.INTERP_META: what the site shows
    data/index-<c>.js                           INTERP_INDEX chunks: columns of 4096 features each
    data/features/<i>.js                        window.INTERP_FEATURE: everything about feature i
    stores/<k>/index.html, feature.html, data/  feature stores after the first (pages load the top's assets)
    graph.html  graph.js  data/graphs/<g>.js    circuit graphs (window.INTERP_GRAPH; see interp.site.graphs)

A site holds a feature store, circuit graphs, or both; without a feature store the index lists the graphs.

Constraints this module was designed under:
- no network and no ``fetch``: pages load data as ``<script>`` files assigning to globals, because
  browsers block ``fetch`` of ``file://`` URLs;
- strings from a tokenizer, corpus or LLM are only ever put in the DOM with ``textContent``, and the
  JSON in data files escapes ``<``, ``>``, ``&``, U+2028 and U+2029, so no data can close a script
  or be parsed as markup;
- 16k+ features: the index is columnar and paginated, one small data file per feature, and the site
  is built in a temporary directory that is renamed into place (no per-file fsync).
"""

from __future__ import annotations

import json
import logging
import math
import shutil
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from interp.autointerp.explanations import load_explanations
from interp.circuits.supernodes import apply_groupings
from interp.errors import InterpError
from interp.features.store import KINDS, FeatureStore, load_feature_store
from interp.io import atomic_directory, disk_full_errors
from interp.progress import progress_bar
from interp.site.feature_links import appearances, site_links, store_pages
from interp.site.graphs import MAX_EDGES, SiteGraph, collect_graphs, graph_payload, graph_summary, graphs_only_meta

log = logging.getLogger(__name__)

DISK_FULL_HINT = (
    "The site is written beside its directory and swapped in only when complete, so the old site (if any) is "
    "unchanged. Free space there and run the same interp dashboard command again."
)

INDEX_CHUNK = 4096
GRAPH_PAGES = ("index.html", "graph.html")
"""The pages of a site without a feature store."""
STORE_PAGES = ("index.html", "feature.html")
"""The pages of each feature store after a site's first (its graphs and assets are the site's)."""
STORES_DIR = "stores"
"""The directory of a site that holds the feature stores after its first, ``stores/<k>/``."""
_BLOCK = 512
_JS_ESCAPES = {"<": "\\u003c", ">": "\\u003e", "&": "\\u0026", "\u2028": "\\u2028", "\u2029": "\\u2029"}


def safe_json(obj: Any) -> str:
    """JSON that is also safe inside a ``<script>`` element or file: no ``</script>``, no HTML specials."""
    text = json.dumps(obj, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    return "".join(_JS_ESCAPES.get(ch, ch) for ch in text) if any(c in text for c in _JS_ESCAPES) else text


def js_assign(name: str, obj: Any) -> str:
    """A JavaScript statement assigning ``obj`` (as safe JSON) to ``window[name]``."""
    return f"window.{name} = {safe_json(obj)};\n"


def build_dashboard(
    feature_store: FeatureStore | str | Path | Sequence[FeatureStore | str | Path] | None,
    out_dir: str | Path,
    explanations: Any = None,
    *,
    graphs: Sequence[Any] = (),
    graph_edges: int = MAX_EDGES,
    supernodes: Sequence[str | Path] = (),
    progress: bool = True,
) -> Path:
    """Write the static site for ``feature_store`` and/or circuit ``graphs`` to ``out_dir``; returns the path of
    ``index.html``.

    ``feature_store``: one feature store, or several (a list): the first is the site's main store (its pages at the
    top of the site), each other one, ``k``, gets its own index and feature pages under ``stores/<k>/``, and every
    index links to every store; use several for the per-layer transcoders of an attribution graph, so that every
    layer's feature nodes link to a page. ``explanations``: see :func:`load_explanations`; default: the runs of
    ``interp explain`` / ``interp score`` inside each feature store (an explicit value needs exactly one store).
    ``graphs``: CircuitGraph objects, graph JSON files, or directories holding them (see
    :func:`interp.site.graphs.collect_graphs`); each graph page keeps its ``graph_edges`` strongest edges.
    ``supernodes``: grouping files saved from the graph view (or by
    :func:`interp.circuits.supernodes.save_supernodes`), each shown on the graph it was made on. Feature nodes of
    attribution graphs link to the feature stores' pages as :mod:`interp.site.feature_links` says, and each feature
    page lists the graphs it appears in. An existing site in ``out_dir`` is replaced.
    """
    given: list[FeatureStore | str | Path] = (
        [] if feature_store is None else [feature_store] if isinstance(feature_store, (FeatureStore, str, Path))
        else list(feature_store))
    if not given and not graphs:
        raise InterpError("Nothing to build: give a feature store, circuit graphs, or both.")
    if explanations is not None and len(given) != 1:
        raise InterpError("Explanations describe the features of one store: give exactly one feature store with "
                          "them (with several stores, each store's own explanation runs are shown).")
    site_graphs = collect_graphs(graphs)
    if supernodes:
        grouped = apply_groupings([sg.graph for sg in site_graphs], supernodes)
        site_graphs = [SiteGraph(g, sg.source) for g, sg in zip(grouped, site_graphs)]
    stores = [fs if isinstance(fs, FeatureStore) else load_feature_store(fs) for fs in given]
    expls = [load_explanations(explanations if explanations is not None else fs.path) for fs in stores]
    out = Path(out_dir)
    if out.exists() and not (out / "index.html").exists() and any(out.iterdir()):
        raise InterpError(f"{out} is not empty and holds no dashboard; choose a new directory.")
    with disk_full_errors(DISK_FULL_HINT), atomic_directory(out) as tmp:
        _write_site(stores, expls, tmp, progress, site_graphs, graph_edges)
    log.info("dashboard for %d features in %d stores and %d graphs at %s", sum(fs.n_features for fs in stores),
             len(stores), len(site_graphs), out)
    return out / "index.html"


def _write_site(stores: Sequence[FeatureStore], expls: Sequence[dict[int, dict[str, Any]]], tmp: Path,
                progress: bool, graphs: Sequence[SiteGraph] = (), max_edges: int = MAX_EDGES) -> None:
    """Every file of the site, into the empty directory ``tmp``."""
    (tmp / "data" / "graphs").mkdir(parents=True)
    _copy_assets(tmp, None if stores else GRAPH_PAGES)
    links = [site_links(stores, sg.graph) for sg in graphs]
    for g, sg in enumerate(graphs):
        _write(tmp / "data" / "graphs" / f"{g}.js", js_assign("INTERP_GRAPH", graph_payload(sg, max_edges, links[g])))
    summaries = [graph_summary(g, sg) for g, sg in enumerate(graphs)]
    if not stores:
        _write(tmp / "data" / "meta.js", js_assign("INTERP_META", {**graphs_only_meta(graphs), "graphs": summaries}))
        return
    nav = [{"href": "" if k == 0 else f"{STORES_DIR}/{k}/", "label": _store_label(fs), "n_features": fs.n_features}
           for k, fs in enumerate(stores)] if len(stores) > 1 else []
    for k, (fs, expl) in enumerate(zip(stores, expls)):
        dest = tmp if k == 0 else tmp / STORES_DIR / str(k)
        if k:
            dest.mkdir(parents=True)
            _copy_assets(dest, STORE_PAGES, prefix="../../")
        seen_in = appearances(graphs, [store_pages(lk, k) for lk in links])
        site = {"graphs": summaries, "root": "" if k == 0 else "../../", "stores": nav, "store": k}
        _write_store(fs, expl, dest, progress, seen_in, site)


def _store_label(fs: FeatureStore) -> str:
    m = fs.manifest
    hooks = str(m.get("hook")) + (f" \u2192 {m['hook_out']}" if m.get("hook_out") else "")
    return f"{m.get('dictionary', {}).get('architecture', '?')} on {hooks}"


def _write_store(fs: FeatureStore, expl: dict[int, dict[str, Any]], dest: Path, progress: bool,
                 seen_in: dict[int, list[dict[str, Any]]], site: dict[str, Any]) -> None:
    """One feature store's data files into ``dest/data`` (its pages are already there); ``seen_in``: per feature,
    the graphs it appears in; ``site``: the meta fields that place the store in the site."""
    (dest / "data" / "features").mkdir(parents=True)
    tops = top_tokens(fs)
    score_name = _score_name(expl)
    _write(dest / "data" / "meta.js", js_assign("INTERP_META", {**site_meta(fs, expl, score_name), **site}))
    for c, a in enumerate(range(0, fs.n_features, INDEX_CHUNK)):
        _write(
            dest / "data" / f"index-{c}.js",
            "window.INTERP_INDEX.push("
            + safe_json(_index_chunk(fs, a, min(a + INDEX_CHUNK, fs.n_features), tops, expl, score_name))
            + ");\n",
        )
    bar = progress_bar(fs.n_features, "dashboard", "feat", enabled=progress, unit_scale=False)
    for a in range(0, fs.n_features, _BLOCK):
        for rec in feature_payloads(fs, range(a, min(a + _BLOCK, fs.n_features)), tops, expl):
            if rec["i"] in seen_in:
                rec["graphs"] = seen_in[rec["i"]]
            _write(dest / "data" / "features" / f"{rec['i']}.js", js_assign("INTERP_FEATURE", rec))
        bar.update(min(_BLOCK, fs.n_features - a))
    bar.close()


def _write(path: Path, text: str) -> None:
    path.write_text(text, encoding="utf-8")


def _copy_assets(dest: Path, only: Sequence[str] | None = None, prefix: str = "") -> None:
    """The pages (rendered from the one template; ``only`` these when given), the scripts they load, styles and
    plotly's bundle (when a page loads it), into ``dest``. With a ``prefix`` (the path from ``dest`` to the site's
    top, ``"../../"`` for a store under ``stores/<k>/``) only the pages are written, loading the top's files."""
    import plotly.offline

    from dashboards import ASSET_FILES, ASSETS_DIR, PAGE_TEMPLATE, PAGES

    pages = {page: scripts for page, scripts in PAGES.items() if only is None or page in only}
    used = {s for scripts in pages.values() for s in scripts}
    for name in ASSET_FILES if not prefix else ():
        if name in used or not name.endswith(".js"):
            shutil.copyfile(ASSETS_DIR / name, dest / name)
    template = (ASSETS_DIR / PAGE_TEMPLATE).read_text(encoding="utf-8").replace(
        'href="style.css"', f'href="{prefix}style.css"')
    for page, scripts in pages.items():
        tags = "\n".join(f'<script src="{prefix}{s}"></script>' for s in scripts)
        _write(dest / page, template.replace("<!-- scripts -->", tags))
    if "plotly.min.js" in used and not prefix:
        _write(dest / "plotly.min.js", plotly.offline.get_plotlyjs())


def _score_names(expl: dict[int, dict[str, Any]]) -> list[str]:
    """Every score name, auto-interpretation's scorers in their run order first, then by frequency."""
    from interp.autointerp.explanations import HEADLINE

    names = Counter(n for rec in expl.values() for n in rec["scores"])
    order = {n: k for k, n in enumerate(HEADLINE)}
    return sorted(names, key=lambda n: (order.get(n, len(order)), -names[n], n))


def _score_name(expl: dict[int, dict[str, Any]]) -> str | None:
    names = _score_names(expl)
    return names[0] if names else None


def site_meta(fs: FeatureStore, expl: dict[int, dict[str, Any]], score_name: str | None) -> dict[str, Any]:
    """What every page needs to know about the site (``window.INTERP_META``)."""
    m = fs.manifest
    d = m.get("dictionary", {})
    return {
        "n_features": fs.n_features,
        "n_index_chunks": math.ceil(fs.n_features / INDEX_CHUNK),
        "architecture": d.get("architecture", "?"),
        "hook": m.get("hook"),
        "hook_out": m.get("hook_out"),
        "model_name": m.get("model", {}).get("name", "?"),
        "n_rows": m.get("n_rows", 0),
        "n_quantiles": m["config"]["n_quantiles"],
        "window": m["config"]["window"],
        "has_features": True,
        "has_explanations": bool(expl),
        "has_scores": score_name is not None,
        "score_name": score_name,
        "score_names": _score_names(expl),
        "served": False,
    }


def top_tokens(fs: FeatureStore, n: int = 3) -> list[list[str]]:
    """Per feature, the ``n`` most frequent tokens at the peak of its top examples (most frequent first)."""
    t = fs.tensors
    peak = (t["top_pos"] - t["top_start"]).clamp(min=0, max=t["top_tokens"].shape[2] - 1)
    ids = t["top_tokens"].gather(2, peak[..., None].long()).squeeze(-1)  # (F, k)
    rows: list[list[int]] = torch.where(t["top_start"] >= 0, ids, -1).tolist()
    out = []
    for row in rows:
        counts = Counter(i for i in row if i >= 0)
        out.append(fs.token_strings([i for i, _ in counts.most_common(n)]))
    return out


def _index_chunk(
    fs: FeatureStore,
    a: int,
    b: int,
    tops: list[list[str]],
    expl: dict[int, dict[str, Any]],
    score_name: str | None,
) -> dict[str, Any]:
    t = fs.tensors
    return {
        "id": list(range(a, b)),
        "density": [_num(x) for x in t["density"][a:b].tolist()],
        "max": [_num(x) for x in t["max_act"][a:b].tolist()],
        "mean": [_num(x) for x in t["mean_act"][a:b].tolist()],
        "top": tops[a:b],
        "expl": [expl[i]["text"] if i in expl else None for i in range(a, b)],
        "score": [expl.get(i, {}).get("scores", {}).get(score_name) for i in range(a, b)],
        "scores": {name: [expl.get(i, {}).get("scores", {}).get(name) for i in range(a, b)]
                   for name in _score_names(expl)},
    }


def _num(x: float, digits: int = 4) -> float:
    return float(f"{x:.{digits}g}") if math.isfinite(x) else 0.0


def _rounded(acts: torch.Tensor, max_act: torch.Tensor) -> torch.Tensor:
    """Round (b, k, W) activations to 4 significant digits of each feature's max (smaller files)."""
    scale = 10.0 ** (3 - torch.floor(torch.log10(max_act.double().clamp(min=1e-30))))
    return (acts.double() * scale[:, None, None]).round() / scale[:, None, None]


def feature_payloads(
    fs: FeatureStore, features: range, tops: list[list[str]], expl: dict[int, dict[str, Any]]
) -> list[dict[str, Any]]:
    """The ``INTERP_FEATURE`` record of each feature in ``features`` (a contiguous range)."""
    t, a, b = fs.tensors, features.start, features.stop
    cols = {name: t[name][a:b] for name in t if name != "hist_edges"}
    ex = {
        kind: {
            "tok": cols[f"{kind}_tokens"].tolist(),
            "act": _rounded(cols[f"{kind}_acts"], cols["max_act"]).tolist(),
            "start": cols[f"{kind}_start"].tolist(),
            "ctx": cols[f"{kind}_ctx"].tolist(),
            "peak": (cols[f"{kind}_pos"] - cols[f"{kind}_start"]).tolist() if kind in ("top", "quant") else None,
            "band": cols["quant_band"].tolist() if kind == "quant" else None,
        }
        for kind in KINDS
    }
    edges, hist = t["hist_edges"].tolist(), cols["hist"].tolist()
    lists = {
        name: cols[name].tolist()
        for name in cols
        if name.startswith(("logit_", "nbr_", "head_attr")) or name in ("count", "density", "max_act", "mean_act")
    }
    out = []
    for r, i in enumerate(features):
        strs: dict[int, int] = {}  # token id -> index in the record's string table
        rec: dict[str, Any] = {
            "i": i,
            "count": lists["count"][r],
            "density": _num(lists["density"][r], 6),
            "max": _num(lists["max_act"][r]),
            "mean": _num(lists["mean_act"][r]),
            "ex": {kind: _examples(ex[kind], r, strs) for kind in KINDS},
        }
        rec["strs"] = fs.token_strings(list(strs))
        rec["hist"] = _hist_payload(hist[r], edges, lists["max_act"][r])
        rec.update(_weight_payload(fs, lists, r, tops, expl))
        if i in expl:
            rec["expl"] = expl[i]
        out.append(rec)
    return out


def _examples(ex: dict[str, Any], r: int, strs: dict[int, int]) -> list[dict[str, Any]]:
    """Feature ``r``'s examples of one kind; token ids become indices into ``strs`` (grown here)."""
    rows = []
    for k, start in enumerate(ex["start"][r]):
        if start < 0:
            continue
        acts = ex["act"][r][k]
        e = {
            "t": [strs.setdefault(tok, len(strs)) for tok in ex["tok"][r][k]],
            "a": [x if x else 0 for x in acts],
            "v": max(acts),
            "c": ex["ctx"][r][k],
            "p": ex["peak"][r][k] if ex["peak"] is not None else -1,
        }
        if ex["band"] is not None:
            e["b"] = ex["band"][r][k]
        rows.append(e)
    return rows


def _weight_payload(
    fs: FeatureStore, lists: dict[str, list[Any]], r: int, tops: list[list[str]], expl: dict[int, dict[str, Any]]
) -> dict[str, Any]:
    """Logit effects, neighbours (with their top tokens and explanations) and head shares of feature ``r``."""
    rec: dict[str, Any] = {}
    if "logit_pos" in lists:
        rec["logits"] = {}
        for side in ("pos", "neg"):
            tokens = fs.token_strings(lists[f"logit_{side}_ids"][r])
            rec["logits"][side] = [[s, _num(v)] for s, v in zip(tokens, lists[f"logit_{side}"][r])]
    if "nbr_dec_ids" in lists:
        rec["nbrs"] = {
            name: [
                [j, _num(v), tops[j], expl.get(j, {}).get("text")]
                for j, v in zip(lists[f"nbr_{name}_ids"][r], lists[key][r])
                if j >= 0
            ]
            for name, key in (("dec", "nbr_dec_cos"), ("cooc", "nbr_cooc"))
        }
    if "head_attr" in lists:
        rec["heads"] = [_num(v) for v in lists["head_attr"][r]]
    return rec


def _hist_payload(counts: list[int], edges: list[float], max_act: float) -> dict[str, Any]:
    """Non-empty span of the log-spaced bins; the overflow bin becomes [last edge, max activation]."""
    lo, hi = list(edges[:-1]), list(edges[1:])
    n = list(counts[1:-1])
    if counts[-1]:
        lo.append(edges[-1])
        hi.append(max(max_act, edges[-1] * 1.0001))
        n.append(counts[-1])
    nz = [k for k, c in enumerate(n) if c]
    span = range(nz[0], nz[-1] + 1) if nz else range(0)
    return {
        "lo": [_num(lo[k], 6) for k in span],
        "hi": [_num(hi[k], 6) for k in span],
        "n": [n[k] for k in span],
        "under": counts[0],
        "lo_edge": edges[0],
    }
