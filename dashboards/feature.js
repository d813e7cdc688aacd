// One feature's page: statistics, activation histogram, examples, logit effects, neighbours.
"use strict";

(async function () {
  const { el, fmt, fmtDensity, tokenSpan, featureHref, chip } = Interp;
  const raw = new URLSearchParams(location.search).get("i") || "";
  const page = await Interp.boot("");
  if (!page) return;
  const { root, meta } = page;
  if (!/^\d+$/.test(raw) || parseInt(raw, 10) >= meta.n_features) {
    return Interp.fail(root, `No feature ${JSON.stringify(raw)}: pick one from 0 to ${meta.n_features - 1}.`);
  }
  const i = parseInt(raw, 10);
  try {
    await Interp.loadScript(`data/features/${i}.js`);
  } catch (e) {
    return Interp.fail(root, `The data file of feature ${i} is missing.`);
  }
  const F = window.INTERP_FEATURE;
  document.title = `#${i} \u00b7 interp features`;

  // ---- header ----
  const nav = el("div", { class: "muted" },
    i > 0 ? el("a", { href: featureHref(i - 1), id: "prev-feature" }, "\u2190 #" + (i - 1)) : null, "  ",
    i + 1 < meta.n_features ? el("a", { href: featureHref(i + 1), id: "next-feature" }, "#" + (i + 1) + " \u2192")
      : null);
  const hooks = el("div", {},
    el("span", { class: "pill" }, meta.architecture),
    meta.hook_out ? el("span", { class: "pill", id: "hooks" }, `reads ${meta.hook} \u2192 writes ${meta.hook_out}`)
      : el("span", { class: "pill", id: "hooks" }, meta.hook));
  const head = el("div", { class: "card" }, nav, el("h1", {}, `Feature #${i}`), hooks);
  if (F.expl) {
    head.append(el("p", { class: "explanation", id: "explanation" }, F.expl.text || ""));
    const sc = el("div", { class: "scores", id: "scores" });
    for (const [name, v] of Object.entries(F.expl.scores || {})) {
      sc.append(el("span", { class: "pill" }, `${name} ${typeof v === "number" ? fmt(v) : String(v)}`));
    }
    head.append(sc);
  }
  const stat = (k, v) => el("div", { class: "stat" }, el("div", { class: "k" }, k), el("div", { class: "v" }, v));
  head.append(el("div", { class: "stats" },
    stat("density", fmtDensity(F.density)), stat("fired on", F.count.toLocaleString() + " tokens"),
    stat("max act", fmt(F.max)), stat("mean act", fmt(F.mean))));

  // ---- histogram ----
  const histDiv = el("div", { class: "hist", id: "hist" });
  const histCard = el("div", { class: "card" }, el("h2", {}, "Activation histogram"), histDiv);

  // ---- examples ----
  function exampleRow(ex) {
    const toks = el("div", { class: "toks" });
    ex.t.forEach((t, k) => toks.append(tokenSpan(F.strs[t], ex.a[k], F.max, k === ex.p && ex.v > 0)));
    return el("div", { class: "example" }, el("div", { class: "val" }, fmt(ex.v)), toks);
  }
  const exCard = el("div", { class: "card", id: "examples" }, el("h2", {}, "Top activations"));
  if (!F.ex.top.length) exCard.append(el("p", { class: "muted" }, "This feature never fired on the analysed tokens."));
  for (const ex of F.ex.top) exCard.append(exampleRow(ex));
  const quantCard = el("div", { class: "card", id: "quantiles" }, el("h2", {}, "Samples across the activation range"));
  const bands = [...new Set(F.ex.quant.map((e) => e.b))].sort((a, b) => b - a);
  for (const b of bands) {
    const group = F.ex.quant.filter((e) => e.b === b);
    const lo = Math.min(...group.map((e) => e.v)), hi = Math.max(...group.map((e) => e.v));
    quantCard.append(el("div", { class: "band" },
      `Quantile ${b + 1} of ${meta.n_quantiles} \u00b7 max activation ${fmt(lo)}\u2013${fmt(hi)}`));
    for (const ex of group) quantCard.append(exampleRow(ex));
  }
  if (!bands.length) quantCard.append(el("p", { class: "muted" }, "No samples."));
  const randCard = el("details", { class: "card", id: "random" },
    el("summary", {}, `Random contexts where it does not fire (${F.ex.rand.length})`));
  for (const ex of F.ex.rand) randCard.append(exampleRow(ex));

  // ---- side: logits, neighbours, heads ----
  const side = el("div", {});
  if (F.logits) {
    const table = (rows, cls) => {
      const tb = el("tbody");
      for (const [s, v] of rows) {
        tb.append(el("tr", {}, el("td", { class: "tokcell" }, chip(s)),
          el("td", { class: "num " + cls }, (v > 0 ? "+" : "") + fmt(v))));
      }
      return el("table", { class: "logits" }, tb);
    };
    side.append(el("div", { class: "card", id: "logits" }, el("h2", {}, "Logit effects"),
      el("div", { class: "grid two" },
        el("div", {}, el("div", { class: "muted" }, "promoted"), table(F.logits.pos, "pos")),
        el("div", {}, el("div", { class: "muted" }, "suppressed"), table(F.logits.neg, "neg")))));
  }
  if (F.heads) {
    const box = el("div", { class: "heads", id: "heads" });
    F.heads.forEach((w, h) => {
      const inner = el("span"); inner.style.width = (100 * w).toFixed(1) + "%";
      box.append(el("div", { class: "row" }, el("span", {}, `head ${h}`), el("span", { class: "bar" }, inner),
        el("span", { class: "muted" }, (100 * w).toFixed(1) + "%")));
    });
    side.append(el("div", { class: "card" }, el("h2", {}, "Decoder norm by head"), box));
  }
  if (F.nbrs) {
    const table = (rows, label) => {
      const tb = el("tbody");
      for (const [j, v, tops, expl] of rows) {
        const top = el("td", {});
        for (const t of tops) top.append(chip(t), " ");
        tb.append(el("tr", {}, el("td", {}, el("a", { href: featureHref(j) }, "#" + j)),
          el("td", { class: "num" }, fmt(v)), expl ? el("td", {}, expl) : top));
      }
      if (!rows.length) tb.append(el("tr", {}, el("td", { class: "muted" }, "none")));
      return el("div", {}, el("div", { class: "muted" }, label), el("table", {}, tb));
    };
    side.append(el("div", { class: "card", id: "neighbours" }, el("h2", {}, "Neighbours"),
      table(F.nbrs.dec, "decoder cosine"), el("div", { style: "height:10px" }), table(F.nbrs.cooc,
        "co-occurrence (Jaccard)")));
  }
  if (F.graphs && F.graphs.length) side.append(graphsCard(F.graphs));
  const scored = F.expl && F.expl.results && Object.keys(F.expl.results).length ? InterpAutointerp.card(F.expl) : null;
  root.replaceChildren(...[head, scored, el("div", { class: "grid side" },
    el("div", {}, histCard, exCard, quantCard, randCard), side)].filter(Boolean));

  // Bars on a log10 axis: x = log10 of the bin centre, width = log10(hi / lo).
  const h = F.hist;
  if (h.n.length && typeof Plotly !== "undefined") {
    const x = h.lo.map((lo, k) => (Math.log10(lo) + Math.log10(h.hi[k])) / 2);
    const w = h.lo.map((lo, k) => Math.log10(h.hi[k]) - Math.log10(lo));
    const text = h.lo.map((lo, k) => `[${fmt(lo)}, ${fmt(h.hi[k])}): ${h.n[k]}`);
    const lo = Math.floor(Math.min(...h.lo.map(Math.log10))), hi = Math.ceil(Math.max(...h.hi.map(Math.log10)));
    const ticks = []; for (let t = lo; t <= hi; t++) ticks.push(t);
    Plotly.newPlot(histDiv, [{ type: "bar", x, y: h.n, width: w, hovertext: text, hoverinfo: "text",
      marker: { color: "#f76707", line: { color: "#d9480f", width: 0.5 } } }], {
      margin: { l: 50, r: 10, t: 8, b: 40 }, bargap: 0, height: 250, paper_bgcolor: "rgba(0,0,0,0)",
      plot_bgcolor: "rgba(0,0,0,0)",
      xaxis: { tickvals: ticks, ticktext: ticks.map((t) => fmt(Math.pow(10, t))), title: { text: "activation" },
        gridcolor: "#eef0f4" },
      yaxis: { title: { text: "tokens" }, gridcolor: "#eef0f4" },
    }, { displayModeBar: false, responsive: true, staticPlot: false });
    if (h.under) histCard.append(el("div", { class: "muted" }, `${h.under} activations below ${fmt(h.lo_edge)}`));
  } else {
    histDiv.replaceWith(el("p", { class: "muted" }, "No activations to plot."));
  }
  document.body.dataset.ready = "1";

  // The attribution graphs this feature appears in (interp.site.feature_links): each row opens the graph view with
  // the feature's node selected.
  function graphsCard(list) {
    const tb = el("tbody", { id: "graph-appearances" });
    for (const r of list) {
      const href = Interp.siteRoot(meta) + "graph.html?g=" + encodeURIComponent(String(r.g | 0)) + "&node=" +
        encodeURIComponent(r.node);
      const ctx = el("div", { class: "toks graph-context" });
      r.context.forEach((t, k) => {
        const c = chip(t);
        if (k === r.context.length - 1) c.classList.add("at");
        ctx.append(c);
      });
      tb.append(el("tr", { "data-graph": String(r.g) },
        el("td", {}, el("a", { href, class: "graph-link" }, r.title), el("div", { class: "muted small" },
          `${r.label} \u00b7 position ${r.position}`), ctx, r.prompt ? el("div", { class: "muted small prompt" },
          Interp.showToken(r.prompt)) : null),
        el("td", { class: "num" }, fmt(r.influence)), el("td", { class: "num" }, fmt(r.activation))));
    }
    return el("div", { class: "card", id: "graphs" }, el("h2", {}, "In attribution graphs"),
      el("table", {}, el("thead", {}, el("tr", {}, el("th", {}, "graph \u00b7 node \u00b7 prompt"),
        el("th", {}, "influence"), el("th", {}, "activation"))), tb));
  }
})();
