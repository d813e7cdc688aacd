// Shared helpers of interp's pages. Data strings are only ever placed with textContent / title,
// never parsed as HTML: a token can be "<script>".
"use strict";

const Interp = (() => {
  function el(tag, props, ...children) {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(props || {})) {
      if (k === "class") e.className = v;
      else if (k === "text") e.textContent = v;
      else if (k === "title") e.title = v;
      else if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
      else e.setAttribute(k, v);
    }
    for (const c of children) {
      if (c === null || c === undefined) continue;
      e.append(c instanceof Node ? c : document.createTextNode(String(c)));
    }
    return e;
  }

  // Data files are scripts that assign to a global: fetch() of file:// URLs is blocked offline.
  function loadScript(src) {
    return new Promise((resolve, reject) => {
      const s = document.createElement("script");
      s.src = src;
      s.onload = () => { s.remove(); resolve(); };
      s.onerror = () => { s.remove(); reject(new Error("could not load " + src)); };
      document.head.append(s);
    });
  }

  function fmt(x, digits = 3) {
    if (x === null || x === undefined || Number.isNaN(x)) return "–";
    if (x === 0) return "0";
    const a = Math.abs(x);
    if (a >= 1e4 || a < 1e-3) return x.toExponential(digits - 1);
    return Number(x.toPrecision(digits)).toString();
  }

  function fmtDensity(d) {
    if (!d) return "0";
    if (d >= 0.01) return (100 * d).toPrecision(3) + "%";
    return d.toExponential(2);
  }

  const SPECIAL = { "\n": "\u21b5", "\t": "\u21e5", "\r": "\u240d" };
  function showToken(s) {
    if (s === "") return "\u2205";
    return s.replace(/[\n\t\r]/g, (c) => SPECIAL[c]);
  }

  // A token on its own (tables, lists): spaces are drawn as U+2423 so " the" and "    " stay visible.
  function chip(s) {
    const c = el("span", { class: "chip" }, showToken(s).replace(/ /g, "\u2423"));
    c.title = JSON.stringify(s);
    return c;
  }

  // Orange scale: alpha grows with activation / max.
  function actColour(a, max) {
    if (!(a > 0) || !(max > 0)) return "";
    const t = Math.min(1, a / max);
    return `rgba(247, 103, 7, ${(0.12 + 0.78 * t).toFixed(3)})`;
  }

  let tip = null;
  function tooltip() {
    if (!tip) { tip = el("div", { id: "tooltip" }); document.body.append(tip); }
    return tip;
  }
  // The tooltip wraps long text (CSS max-width) and is kept inside the window.
  function placeTip(t, ev) {
    const w = t.offsetWidth, h = t.offsetHeight;
    t.style.left = Math.max(4, Math.min(ev.clientX + 12, window.innerWidth - w - 4)) + "px";
    t.style.top = (ev.clientY + 14 + h > window.innerHeight ? Math.max(4, ev.clientY - h - 8) : ev.clientY + 14) + "px";
  }

  function attachTip(node, text) {
    node.title = text;
    node.addEventListener("mouseenter", (ev) => {
      const t = tooltip(); t.textContent = text; t.style.display = "block";
      placeTip(t, ev);
    });
    node.addEventListener("mousemove", (ev) => placeTip(tooltip(), ev));
    node.addEventListener("mouseleave", () => { tooltip().style.display = "none"; });
  }

  function tokenSpan(str, act, max, peak) {
    const shown = showToken(str);
    const s = el("span", { class: "tok" + (peak ? " peak" : "") + (shown !== str ? " special" : "") }, shown);
    const bg = actColour(act, max);
    if (bg) s.style.backgroundColor = bg;
    attachTip(s, JSON.stringify(str) + "  " + fmt(act, 4));
    return s;
  }

  // A feature page of this store, or (from a graph page at the site's top) of feature store ``store`` of the site:
  // stores after the first live under stores/<k>/ (interp.site.build).
  function featureHref(i, store) {
    return (store ? "stores/" + encodeURIComponent(String(store | 0)) + "/" : "") + "feature.html?i=" +
      encodeURIComponent(String(i | 0));
  }

  // The path from this page to the site's top ("" for the first store and the graphs, "../../" under stores/<k>/).
  function siteRoot(meta) { return meta && meta.root === "../../" ? "../../" : ""; }

  function header(meta, page) {
    const h = el("header", { class: "top" },
      el("span", { class: "brand" }, "interp"),
      el("a", { href: "index.html" }, meta && meta.has_features === false ? "Index" : "Features"));
    if (meta && meta.graphs && meta.graphs.length) h.append(el("a", { href: siteRoot(meta) + "graph.html" }, "Circuits"));
    if (meta && meta.served) h.append(el("a", { href: "prompt.html" }, "Prompt"));
    if (meta) h.append(el("span", { class: "sub" }, meta.model_name + (meta.hook ? ` \u00b7 ${meta.hook}` : "")));
    document.body.prepend(h);
    document.title = (page ? page + " \u00b7 " : "") + "interp features";
  }

  // The site's circuit graphs as a table linking to graph.html (null when there are none); ``root``: siteRoot.
  function graphTable(graphs, root = "") {
    if (!graphs || !graphs.length) return null;
    const head = el("tr", {}, ...["Graph", "Model", "Nodes", "Edges", "Node AUC", "Edge AUC", "CPR", "Runtime (s)"]
      .map((k) => el("th", {}, k)));
    const body = el("tbody", { id: "graph-rows" }, ...graphs.map((s) => el("tr", { "data-graph": String(s.id) },
      el("td", {}, el("a", { href: root + "graph.html?g=" + encodeURIComponent(String(s.id | 0)) }, s.title),
        s.source ? el("div", { class: "muted mono small" }, s.source) : null),
      el("td", {}, s.model || "?"), el("td", { class: "num" }, String(s.n_nodes)),
      el("td", { class: "num" }, s.n_edges.toLocaleString()), el("td", { class: "num" }, fmt(s.node_auc)),
      el("td", { class: "num" }, fmt(s.edge_auc)), el("td", { class: "num" }, fmt(s.cpr)),
      el("td", { class: "num" }, fmt(s.runtime_s)))));
    return el("div", { class: "card", id: "graphs" }, el("h2", {}, "Circuit graphs"),
      el("table", {}, el("thead", {}, head), body));
  }

  function fail(root, message) {
    root.replaceChildren(el("p", { class: "error" }, message));
    document.body.dataset.ready = "1";
  }

  // The site's feature stores, each linking to its index, this one marked (null for a site of one store).
  function storeList(meta) {
    if (!meta.stores || meta.stores.length < 2) return null;
    const root = siteRoot(meta);
    const items = meta.stores.map((s, k) => el("li", {}, k === meta.store ? el("strong", {}, s.label)
      : el("a", { href: root + s.href + "index.html", class: "store-link" }, s.label),
      el("span", { class: "muted" }, ` \u00b7 ${s.n_features.toLocaleString()} features`)));
    return el("div", { class: "card", id: "stores" }, el("h2", {}, "Feature stores"), el("ul", {}, ...items));
  }

  // Every page starts here: load the site's metadata and draw the header. Returns { root, meta }, or null
  // (with a message shown) when the page was opened without its data.
  async function boot(page) {
    const root = document.getElementById("app");
    try {
      await loadScript("data/meta.js");
    } catch (e) {
      fail(root, "No dashboard data found next to this page (data/meta.js).");
      return null;
    }
    header(window.INTERP_META, page);
    return { root, meta: window.INTERP_META };
  }

  return { el, loadScript, fmt, fmtDensity, showToken, chip, actColour, tokenSpan, attachTip, tooltip, featureHref,
    siteRoot, header, graphTable, storeList, fail, boot };
})();
