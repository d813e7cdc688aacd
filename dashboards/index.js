// The index of all features: search, filter, sort and paginate over columnar data (fast at 16k+).
"use strict";

(async function () {
  const { el, fmt, fmtDensity, chip, featureHref } = Interp;
  const page = await Interp.boot("");
  if (!page) return;
  const { root, meta } = page;
  const graphs = Interp.graphTable(meta.graphs, Interp.siteRoot(meta));
  if (meta.has_features === false) {  // a site of circuit graphs only
    root.replaceChildren(el("h1", {}, "Circuits"), graphs);
    document.body.dataset.ready = "1";
    return;
  }
  window.INTERP_INDEX = [];
  for (let c = 0; c < meta.n_index_chunks; c++) await Interp.loadScript(`data/index-${c}.js`);

  // Merge chunks into flat columns.
  const col = { id: [], density: [], max: [], mean: [], top: [], expl: [], score: [] };
  // One sortable column per scorer ("s:<name>"); older sites carry a single "score" column.
  const scoreKeys = (meta.score_names || []).map((name) => "s:" + name);
  for (const key of scoreKeys) col[key] = [];
  for (const ch of window.INTERP_INDEX) {
    for (const k of Object.keys(col)) {
      if (k.startsWith("s:")) col[k].push(...((ch.scores || {})[k.slice(2)] || ch.id.map(() => null)));
      else col[k].push(...ch[k]);
    }
  }
  const n = col.id.length;
  const haystack = new Array(n);
  for (let r = 0; r < n; r++) {
    haystack[r] = ((col.expl[r] || "") + "\u0000" + col.top[r].join("\u0000")).toLowerCase();
  }

  const state = { q: "", filter: meta.n_features > 0 ? "alive" : "all", sort: "density", desc: true, page: 0,
    per: 50 };
  const params = new URLSearchParams(location.search);
  if (params.get("q")) state.q = params.get("q");

  const search = el("input", { type: "search", placeholder: "Search: feature id, explanation or token…",
    "aria-label": "search", id: "search" });
  search.value = state.q;
  const filter = el("select", { id: "filter", "aria-label": "filter" },
    el("option", { value: "all" }, "All features"),
    el("option", { value: "alive" }, "Alive (fired)"),
    el("option", { value: "dead" }, "Dead (never fired)"),
    el("option", { value: "dense" }, "Dense (> 10%)"),
    el("option", { value: "explained" }, "With explanation"));
  filter.value = state.filter;
  const count = el("span", { class: "muted", id: "count" });
  const columns = [
    ["id", "Feature", true], ["density", "Density", true], ["max", "Max act", true], ["mean", "Mean act", true],
    ["top", "Top tokens", false], ["expl", "Explanation", false],
  ];
  if (scoreKeys.length) for (const key of scoreKeys) columns.push([key, key.slice(2), true]);
  else if (meta.has_scores) columns.push(["score", meta.score_name || "Score", true]);
  const numeric = (key) => ["density", "max", "mean", "score", "id"].includes(key) || key.startsWith("s:");
  const headRow = el("tr");
  const ths = {};
  for (const [key, label, sortable] of columns) {
    const th = el("th", { class: sortable ? "sortable" : "" }, label);
    if (numeric(key)) th.style.textAlign = "right";
    th.dataset.key = key;
    if (sortable) th.addEventListener("click", () => {
      if (state.sort === key) state.desc = !state.desc; else { state.sort = key; state.desc = key !== "id"; }
      state.page = 0; update();
    });
    ths[key] = th;
    headRow.append(th);
  }
  const tbody = el("tbody", { id: "rows" });
  const prev = el("button", { id: "prev" }, "\u2190 Prev");
  const next = el("button", { id: "next" }, "Next \u2192");
  const pageInfo = el("span", { class: "muted" });
  const title = el("div", {},
    el("h1", {}, `${meta.n_features.toLocaleString()} features`),
    el("div", { class: "muted" },
      `${meta.architecture} dictionary on ${meta.hook}` + (meta.hook_out ? ` \u2192 ${meta.hook_out}` : "") +
      ` \u00b7 ${meta.model_name} \u00b7 ${meta.n_rows.toLocaleString()} tokens analysed`));
  root.replaceChildren(title, Interp.storeList(meta) || "", graphs || "",
    el("div", { class: "card" },
      el("div", { class: "controls" }, search, filter, count),
      el("div", { class: "scroll-x" }, el("table", { class: "index" }, el("thead", {}, headRow), tbody)),
      el("div", { class: "pager" }, prev, next, pageInfo)));

  let view = [];
  function compute() {
    const q = state.q.trim().toLowerCase();
    const isId = /^#?\d+$/.test(q);
    const idq = isId ? parseInt(q.replace("#", ""), 10) : -1;
    view = [];
    for (let r = 0; r < n; r++) {
      const d = col.density[r];
      if (state.filter === "alive" && !(d > 0)) continue;
      if (state.filter === "dead" && d > 0) continue;
      if (state.filter === "dense" && !(d > 0.1)) continue;
      if (state.filter === "explained" && !col.expl[r]) continue;
      if (q && !(isId ? col.id[r] === idq : haystack[r].includes(q))) continue;
      view.push(r);
    }
    const key = state.sort, sign = state.desc ? -1 : 1, c = col[key];
    view.sort((a, b) => {
      const x = c[a] ?? -Infinity, y = c[b] ?? -Infinity;
      return x < y ? -sign : x > y ? sign : col.id[a] - col.id[b];
    });
  }
  const maxLog = Math.log10(Math.max(...col.density.filter((d) => d > 0), 1e-9));
  function densityBar(d) {
    const w = d > 0 ? Math.max(2, 100 * (1 - (maxLog - Math.log10(d)) / 7)) : 0;
    const inner = el("span"); inner.style.width = Math.min(100, w) + "%";
    return el("span", { class: "bar" }, inner);
  }
  function render() {
    const pages = Math.max(1, Math.ceil(view.length / state.per));
    state.page = Math.min(state.page, pages - 1);
    const rows = view.slice(state.page * state.per, (state.page + 1) * state.per).map((r) => {
      const id = col.id[r];
      const top = el("td", {});
      for (const t of col.top[r]) top.append(chip(t), " ");
      const tr = el("tr", { "data-feature": String(id) },
        el("td", { class: "num" }, el("a", { href: featureHref(id) }, "#" + id)),
        el("td", { class: "num" }, fmtDensity(col.density[r]), densityBar(col.density[r])),
        el("td", { class: "num" }, fmt(col.max[r])),
        el("td", { class: "num" }, fmt(col.mean[r])),
        top,
        el("td", { class: "expl" }, col.expl[r] || ""));
      for (const [key] of columns.filter(([k]) => k === "score" || k.startsWith("s:"))) {
        tr.append(el("td", { class: "num", "data-score": key }, col[key][r] == null ? "–" : fmt(col[key][r])));
      }
      return tr;
    });
    tbody.replaceChildren(...rows);
    for (const [key, th] of Object.entries(ths)) {
      th.classList.toggle("sorted", key === state.sort);
      th.classList.toggle("asc", key === state.sort && !state.desc);
    }
    count.textContent = `${view.length.toLocaleString()} of ${n.toLocaleString()} shown`;
    pageInfo.textContent = `page ${state.page + 1} of ${pages}`;
    prev.disabled = state.page === 0;
    next.disabled = state.page >= pages - 1;
  }
  function update() { compute(); render(); }
  let timer = null;
  search.addEventListener("input", () => {
    clearTimeout(timer);
    timer = setTimeout(() => { state.q = search.value; state.page = 0; update(); }, 120);
  });
  filter.addEventListener("change", () => { state.filter = filter.value; state.page = 0; update(); });
  prev.addEventListener("click", () => { state.page--; render(); });
  next.addEventListener("click", () => { state.page++; render(); });
  update();
  document.body.dataset.ready = "1";
})();
