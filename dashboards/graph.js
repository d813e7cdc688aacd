// One circuit graph (graph.html?g=<i>): nodes laid out by layer (and token position) in interp.site.graphs,
// edges weighted by |score| and coloured by sign, a head's query/key/value inputs as q/k/v ports, a threshold
// slider on |edge score| that hides edges and then the nodes left without one, details on hover and click.
// Feature nodes link to their feature page (when the site holds their dictionary's features); shift-click picks
// nodes, which "Group" draws as one supernode (supernodes.js); graph.html?g=<i>&node=<id> opens with a node selected.
// Labels, task prompts and metadata come from files and are only ever placed with textContent.
"use strict";

(async function () {
  const { el, fmt } = Interp;
  const page = await Interp.boot("Circuit");
  if (!page) return;
  const { root, meta } = page;
  const graphs = meta.graphs || [];
  const asked = new URLSearchParams(location.search).get("g") || "0";
  const g = /^\d+$/.test(asked) ? parseInt(asked, 10) : -1;
  if (!graphs.length) return Interp.fail(root, "This site has no circuit graphs (build it with --graphs).");
  if (!(g >= 0 && g < graphs.length)) return Interp.fail(root, `No graph ${asked} on this site.`);
  try {
    await Interp.loadScript(`data/graphs/${g}.js`);
  } catch (e) {
    return Interp.fail(root, `The data of graph ${g} is missing (data/graphs/${g}.js).`);
  }
  const G = window.INTERP_GRAPH;
  const M = G.metadata || {};
  document.title = G.title + " \u00b7 interp";

  // Geometry (pixels) and scales.
  const COL = 84, ROW = 92, LEFT = 78, TOP = 34, RIGHT = 24, BOTTOM = 30, PORT = { q: -14, k: 0, v: 14 };
  const W = LEFT + G.grid.width * COL + RIGHT, H = TOP + G.grid.height * ROW + BOTTOM;
  const px = (x) => LEFT + x * COL, py = (y) => TOP + (G.grid.height - 1 - y) * ROW + ROW / 2;
  const SN = InterpSupernodes;
  const E = G.edges;  // every drawn edge of the file, strongest first (the slider's scale)
  let nodes = G.nodes, edges = G.edges, groups = [], edgeMax = 1;
  const nodeMax = Math.max(1e-30, ...nodes.map((n) => Math.abs(n.score || 0)));
  const radius = (n) => 5 + 11 * Math.sqrt(Math.min(1, Math.abs(n.score || 0) / nodeMax));
  const POS = [25, 113, 194], NEG = [224, 49, 49];
  function colour(score, max, floor) {
    const [r, gr, b] = score < 0 ? NEG : POS, a = floor + (1 - floor) * Math.min(1, Math.abs(score) / max);
    return `rgba(${r}, ${gr}, ${b}, ${a.toFixed(3)})`;
  }
  const nodeName = (i) => Interp.showToken(nodes[i].label || nodes[i].id);
  const edgeName = (e) => `${nodeName(e.s)} \u2192 ${nodeName(e.t)}` + (e.slot ? ` \u27e8${e.slot}\u27e9` : "") +
    (e.position !== null && e.position !== undefined ? ` @${e.position}` : "");

  const NS = "http://www.w3.org/2000/svg";
  function svg(tag, attrs, text) {
    const e = document.createElementNS(NS, tag);
    for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, String(v));
    if (text !== undefined) e.textContent = text;
    return e;
  }

  // The drawing: grid labels, edges (weakest first, so strong ones lie on top), their hover targets, nodes.
  const canvas = svg("svg", { id: "graph", viewBox: `0 0 ${W} ${H}`, width: W, height: H });
  canvas.style.maxWidth = W + "px";
  G.grid.rows.forEach((label, r) => canvas.append(svg("text", { x: 8, y: py(r) + 4, class: "row-label" }, label)));
  if (G.grid.columns.length) {
    const centres = {};
    for (const n of nodes) if (n.position !== null && n.position !== undefined) (centres[n.position] ||= []).push(n.x);
    for (const [p, xs] of Object.entries(centres)) {
      const x = (Math.min(...xs) + Math.max(...xs)) / 2;
      canvas.append(svg("text", { x: px(x), y: 16, class: "col-label", "text-anchor": "middle" }, "pos " + p));
    }
  }
  function anchor(e) {
    const s = nodes[e.s], t = nodes[e.t];
    const x1 = px(s.x), y1 = py(s.y);
    const port = t.kind === "head" && e.slot in PORT;
    const x2 = px(t.x) + (port ? PORT[e.slot] : 0), y2 = py(t.y) + (port ? 33 : radius(t));
    const ym = Math.abs(y1 - y2) < 1 ? y1 - 46 : (y1 + y2) / 2;
    return `M${x1.toFixed(1)} ${y1.toFixed(1)} C${x1.toFixed(1)} ${ym.toFixed(1)} ${x2.toFixed(1)} ${ym.toFixed(1)} ` +
      `${x2.toFixed(1)} ${y2.toFixed(1)}`;
  }
  const edgeLayer = svg("g", { class: "edges" }), hitLayer = svg("g", { class: "hits" });
  const nodeLayer = svg("g", { class: "nodes" });
  canvas.append(edgeLayer, hitLayer, nodeLayer);
  let edgeEls = [], hitEls = [], nodeEls = [], visible = [];
  function drawNode(n, i) {
    const x = px(n.x), y = py(n.y), r = radius(n);
    const grp = svg("g", { class: "node kind-" + n.kind + (n.in_circuit ? " circuit" : ""), "data-node": i,
      "data-id": n.id });
    grp.append(svg("circle", { cx: x, cy: y, r: r.toFixed(2),
      fill: n.score === null || n.score === undefined ? "#ffffff" : colour(n.score, nodeMax, 0.08) }));
    grp.append(svg("text", { x, y: y - r - 5, "text-anchor": "middle", class: "node-label" }, nodeName(i)));
    if (n.kind === "head") {
      for (const [slot, dx] of Object.entries(PORT)) {
        grp.append(svg("rect", { x: x + dx - 5.5, y: y + 21, width: 11, height: 12, rx: 2, class: "port" }));
        grp.append(svg("text", { x: x + dx, y: y + 30.5, "text-anchor": "middle", class: "port-label" }, slot));
      }
    }
    return grp;
  }
  // (Re)draw the graph with the current grouping: supernodes replace their members, their edges are sums.
  function render() {
    ({ nodes, edges } = SN.collapse(G.nodes, G.edges, groups));
    edgeMax = edges.length ? Math.max(1e-30, Math.abs(edges[0].score)) : 1;
    edgeEls = new Array(edges.length); hitEls = new Array(edges.length);
    for (let i = edges.length - 1; i >= 0; i--) {
      const e = edges[i], d = anchor(e);
      edgeEls[i] = svg("path", { d, class: "edge" + (e.in_circuit ? " circuit" : ""), stroke: colour(e.score, edgeMax,
        0.25), "stroke-width": (0.6 + 5.4 * Math.abs(e.score) / edgeMax).toFixed(2), "data-edge": i,
        "data-score": e.score, "data-source": nodes[e.s].id, "data-target": nodes[e.t].id });
      hitEls[i] = svg("path", { d, class: "hit", "data-edge": i });
    }
    edgeLayer.replaceChildren(...edgeEls.slice().reverse());
    hitLayer.replaceChildren(...hitEls.slice().reverse());
    nodeEls = nodes.map(drawNode);
    nodeLayer.replaceChildren(...nodeEls);
    visible = new Array(edges.length).fill(null);
  }

  // Controls: which graph, the threshold, the selected circuit.
  const select = el("select", { id: "graph-select", "aria-label": "graph" });
  for (const s of graphs) select.append(el("option", { value: String(s.id) }, s.title));
  select.value = String(g);
  select.addEventListener("change", () => { location.search = "?g=" + encodeURIComponent(select.value); });
  const slider = el("input", { type: "range", id: "threshold", min: "0", max: "1000", step: "1",
    "aria-label": "edge threshold" });
  const readout = el("span", { id: "threshold-value", class: "mono" });
  const shown = el("span", { id: "shown", class: "muted" });
  const hasCircuit = E.some((e) => e.in_circuit);
  const circuitBox = el("input", { type: "checkbox", id: "circuit-only" });
  // The slider is logarithmic from hi / 1e6 (or the weakest edge, if stronger) to the strongest edge; its left
  // end shows every edge. It starts at the 30th edge or 1% of the strongest, whichever is stronger.
  const hi = E.length ? Math.abs(E[0].score) : 1;
  const lo = E.length ? Math.max(Math.abs(E[E.length - 1].score), hi * 1e-6) : 0;
  const toThreshold = (v) => (v <= 0 ? 0 : hi > lo ? lo * Math.pow(hi / lo, v / 1000) : lo);
  const fromThreshold = (t) => (hi > lo ? Math.max(1, Math.round(1000 * Math.log(t / lo) / Math.log(hi / lo))) : 1);
  slider.disabled = !(hi > lo);
  const start = E.length ? Math.max(Math.abs(E[Math.min(30, E.length) - 1].score), hi / 100) : 0;
  slider.value = String(E.length ? fromThreshold(start) : 0);

  function update() {
    const t = toThreshold(Number(slider.value)), only = circuitBox.checked;
    const degree = new Array(nodes.length).fill(0);
    let nEdges = 0;
    edges.forEach((e, i) => {
      const on = Math.abs(e.score) >= t && (!only || !!e.in_circuit);
      if (on) { degree[e.s]++; degree[e.t]++; nEdges++; }
      if (visible[i] !== on) {
        visible[i] = on;
        edgeEls[i].style.display = hitEls[i].style.display = on ? "" : "none";
      }
    });
    const nodeShown = nodes.map((n, i) => degree[i] > 0 || (!only && Math.abs(n.score || 0) >= t && n.score !== 0));
    nodeShown.forEach((on, i) => { nodeEls[i].style.display = on ? "" : "none"; });
    const nNodes = nodeShown.filter(Boolean).length;
    readout.textContent = t > 0 ? "|score| \u2265 " + fmt(t, 3) : "every scored edge";
    shown.textContent = `${nEdges.toLocaleString()} of ${G.n_edges.toLocaleString()} edges \u00b7 ` +
      `${nNodes.toLocaleString()} of ${nodes.length.toLocaleString()} nodes shown`;
    shown.dataset.edges = String(nEdges);
    shown.dataset.nodes = String(nNodes);
  }
  slider.addEventListener("input", update);
  circuitBox.addEventListener("change", update);

  // Details of what is hovered (tooltip) and clicked (side panel).
  const details = el("div", { id: "details" }, el("p", { class: "muted" }, "Click a node or an edge."));
  const rows = (pairs) => el("table", { class: "facts" }, el("tbody", {}, ...pairs
    .filter(([, v]) => v !== null && v !== undefined && v !== "")
    .map(([k, v]) => el("tr", {}, el("th", {}, k), el("td", {}, typeof v === "number" ? fmt(v, 4) : String(v))))));
  function edgeList(title, list) {
    if (!list.length) return null;
    return el("div", {}, el("h3", {}, title), el("ul", { class: "edge-list" }, ...list.slice(0, 8).map((i) => {
      const li = el("li", { "data-edge": String(i) }, edgeName(edges[i]) + "  ", el("span", { class: "num" },
        (edges[i].score > 0 ? "+" : "") + fmt(edges[i].score, 3)));
      li.addEventListener("click", () => selectEdge(i));
      return li;
    })));
  }
  function clearSelection() {
    canvas.classList.remove("focus");
    for (const x of canvas.querySelectorAll(".sel, .hl")) x.classList.remove("sel", "hl");
  }
  function selectNode(i) {
    clearSelection();
    const n = nodes[i];
    nodeEls[i].classList.add("sel");
    canvas.classList.add("focus");
    const into = [], out = [];
    edges.forEach((e, k) => {
      if (e.t === i) into.push(k);
      if (e.s === i) out.push(k);
      if (e.t === i || e.s === i) edgeEls[k].classList.add("hl");
    });
    const attrs = n.attrs && Object.keys(n.attrs).length ? JSON.stringify(n.attrs) : null;
    const store = n.store && meta.stores && meta.stores[n.store] ? ` (${meta.stores[n.store].label})` : "";
    const page = n.page !== undefined && meta.has_features ? el("p", {}, el("a", {
      href: Interp.featureHref(n.page, n.store), id: "feature-link" }, `feature page #${n.page}${store}`)) : null;
    const pick = el("button", { id: "pick-node", type: "button" }, picked.has(n.id) ? "Unpick" : "Pick for a group");
    pick.addEventListener("click", () => { togglePick(n.id); selectNode(i); });
    details.replaceChildren(...[el("h2", {}, "Node ", el("span", { class: "chip" }, nodeName(i))), page,
      n.kind === "supernode" ? groupFacts(n) : rows([["id", n.id], ["kind", n.kind], ["layer", n.layer],
        ["head", n.head], ["position", n.position], ["feature", n.feature], ["score", n.score],
        ["in circuit", n.in_circuit], ["attributes", attrs]]), pick,
      edgeList("strongest inputs", into), edgeList("strongest outputs", out)].filter(Boolean));
  }
  // A supernode's facts: its members (each a link that ungroups nothing, just names them) and an Ungroup button.
  function groupFacts(n) {
    const ungroup = el("button", { id: "ungroup", type: "button" }, "Ungroup");
    ungroup.addEventListener("click", () => setGroups(SN.ungroup(groups, n.group), null));
    const byId = new Map(G.nodes.map((m) => [m.id, m]));
    return el("div", {}, rows([["supernode", n.label], ["members", n.members.length], ["score (sum)", n.score],
      ["edges inside (sum)", n.internal]]), el("ul", { class: "edge-list", id: "members" }, ...n.members.map((id) =>
      el("li", {}, Interp.showToken(byId.get(id).label || id) + "  ", el("span", { class: "muted" }, id)))), ungroup);
  }
  function selectEdge(i) {
    clearSelection();
    const e = edges[i];
    edgeEls[i].classList.add("hl");
    canvas.classList.add("focus");
    details.replaceChildren(el("h2", {}, "Edge"), el("p", { class: "mono" }, edgeName(e)),
      rows([["source", nodes[e.s].id], ["target", nodes[e.t].id], ["input", e.slot], ["position", e.position],
        ["score", e.score], ["rank by |score|", `${i + 1} of ${G.n_edges}`], ["in circuit", e.in_circuit]]));
  }
  function hovered(ev) {
    const target = ev.target.closest ? ev.target.closest("[data-node], [data-edge]") : null;
    if (!target) return null;
    if (target.dataset.node !== undefined) {
      const n = nodes[+target.dataset.node];
      return `${nodeName(+target.dataset.node)}  ${n.kind}  score ${fmt(n.score, 4)}`;
    }
    const e = edges[+target.dataset.edge];
    return `${edgeName(e)}  score ${fmt(e.score, 4)}`;
  }
  canvas.addEventListener("mousemove", (ev) => {
    const text = hovered(ev), tip = Interp.tooltip();
    if (!text) { tip.style.display = "none"; return; }
    tip.textContent = text;
    tip.style.display = "block";
    tip.style.left = ev.clientX + 12 + "px";
    tip.style.top = ev.clientY + 14 + "px";
  });
  canvas.addEventListener("mouseleave", () => { Interp.tooltip().style.display = "none"; });
  canvas.addEventListener("click", (ev) => {
    const target = ev.target.closest("[data-node], [data-edge]");
    if (!target) { clearSelection(); return; }
    if (target.dataset.node === undefined) { selectEdge(+target.dataset.edge); return; }
    if (ev.shiftKey || ev.ctrlKey || ev.metaKey) togglePick(nodes[+target.dataset.node].id);
    else selectNode(+target.dataset.node);
  });

  // Grouping: picked nodes (shift-click, or "Pick for a group") become one supernode; kept in this browser and
  // saved as a grouping file for `interp dashboard --supernodes FILE`.
  const picked = new Set();
  const pickedInfo = el("span", { id: "picked", class: "muted" });
  const nameBox = el("input", { type: "text", id: "supernode-name", placeholder: "supernode name",
    "aria-label": "supernode name" });
  const groupButton = el("button", { id: "group-nodes", type: "button", class: "primary" }, "Group");
  const saveButton = el("button", { id: "save-grouping", type: "button" }, "Save grouping");
  const resetButton = el("button", { id: "reset-grouping", type: "button" }, "Reset");
  const groupInfo = el("span", { id: "grouping", class: "muted" });
  function showPicks() {
    for (const e of nodeEls) e.classList.toggle("picked", picked.has(e.dataset.id));
    pickedInfo.textContent = `${picked.size} picked`;
    groupButton.disabled = picked.size < 1 || (picked.size === 1 && !/^supernode-/.test([...picked][0]));
  }
  function togglePick(id) {
    if (picked.has(id)) picked.delete(id); else picked.add(id);
    showPicks();
  }
  let edited = false;
  function setGroups(next, select) {
    groups = next;
    edited = true;
    SN.keep(G, groups);
    picked.clear();
    render();
    update();
    showPicks();
    clearSelection();
    details.replaceChildren(el("p", { class: "muted" }, "Click a node or an edge."));
    groupInfo.textContent = `${groups.length} supernode${groups.length === 1 ? "" : "s"}` +
      (edited ? " (edited; kept in this browser until saved)" : "");
    if (select !== null) {
      const i = nodes.findIndex((n) => n.id === select);
      if (i >= 0) selectNode(i);
    }
  }
  groupButton.addEventListener("click", () => {
    const next = SN.group(groups, [...picked], nameBox.value);
    nameBox.value = "";
    setGroups(next, "supernode-" + next.findIndex((x) => !groups.includes(x)));
  });
  nameBox.addEventListener("keydown", (ev) => { if (ev.key === "Enter" && !groupButton.disabled) groupButton.click(); });
  saveButton.addEventListener("click", () => SN.download(G, groups));
  resetButton.addEventListener("click", () => {
    setGroups(SN.clean(G.supernodes, new Map(G.nodes.map((n, i) => [n.id, i]))), null);
    edited = false;
    SN.forget(G);
    groupInfo.textContent = `${groups.length} supernode${groups.length === 1 ? "" : "s"} (the site's grouping)`;
  });
  const groupBar = el("div", { class: "controls", id: "supernode-bar" }, pickedInfo, nameBox, groupButton, saveButton,
    resetButton, groupInfo);

  // The page.
  const task = M.task && typeof M.task === "object" ? M.task : {};
  const model = M.model && typeof M.model === "object" ? M.model : {};
  const ev = M.evaluation && typeof M.evaluation === "object" ? M.evaluation : {};
  const faith = ev.faithfulness && typeof ev.faithfulness === "object" ? ev.faithfulness : {};
  const stat = (k, v) => (v === null || v === undefined ? null :
    el("div", { class: "stat" }, el("div", { class: "k" }, k), el("div", { class: "v" }, typeof v === "number" ? fmt(v, 3) : String(v))));
  const examples = Array.isArray(task.examples) ? task.examples : [];
  const kept = E.length < G.n_edges - G.n_unscored ? ` This page keeps the ${E.length.toLocaleString()} ` +
    "strongest edges." : "";
  const unscored = G.n_unscored ? ` ${G.n_unscored.toLocaleString()} edges scored 0 (or not at all) are not drawn.` : "";
  const info = el("div", { class: "card", id: "graph-info" }, el("h2", {}, "Graph"),
    rows([["method", M.method], ["task", task.name], ["metric", task.metric], ["prompts", task.n_prompts],
      ["model", model.name], ["scores from", M.score_origin], ["metric clean", M.metric_clean],
      ["metric corrupted", M.metric_corrupted], ["file", G.source]]),
    task.description ? el("p", { class: "muted" }, String(task.description)) : null,
    examples.length ? el("div", {}, el("h3", {}, "Prompts"), ...examples.map((x) => el("div", { class: "toks example-prompt" },
      Interp.showToken(String(x))))) : null,
    el("details", {}, el("summary", {}, "All metadata"), el("pre", { class: "metadata" }, JSON.stringify(M, null, 1))));
  const legend = el("p", { class: "muted legend" },
    el("span", { class: "swatch pos" }), "positive  ", el("span", { class: "swatch neg" }), "negative score; ",
    "edge width and node size grow with |score|; q, k, v are a head's query, key and value inputs; shift-click " +
    "picks nodes to group into a supernode (its edges are the sums of its members')." + kept + unscored);
  const controls = el("div", { class: "controls" }, select, el("label", {}, "threshold ", slider), readout, shown,
    hasCircuit ? el("label", {}, circuitBox, " selected circuit only") : null);
  root.replaceChildren(
    el("h1", { id: "graph-title" }, G.title),
    el("div", { class: "stats" }, stat("node AUC", ev.node_auc), stat("edge AUC", ev.edge_auc),
      stat("CPR", faith.cpr), stat("CMD", faith.cmd), stat("runtime (s)", M.runtime_s),
      stat("peak memory (MiB)", M.peak_memory_mb)),
    el("div", { class: "card" }, controls, groupBar, legend, el("div", { class: "graph-box" }, canvas)),
    el("div", { class: "grid two" }, el("div", { class: "card" }, details), info));
  const start0 = SN.restore(G);
  groups = start0.groups;
  render();
  update();
  showPicks();
  edited = start0.edited;
  groupInfo.textContent = `${groups.length} supernode${groups.length === 1 ? "" : "s"}` +
    (edited ? " (edited; kept in this browser until saved)" : "");
  // graph.html?g=<i>&node=<id>: select that node (or the supernode holding it) and bring it into view.
  const wanted = new URLSearchParams(location.search).get("node");
  if (wanted !== null) {
    const i = nodes.findIndex((n) => n.id === wanted || (n.members && n.members.includes(wanted)));
    if (i >= 0) {
      selectNode(i);
      nodeEls[i].scrollIntoView({ block: "center", inline: "center" });
    }
  }
  document.body.dataset.ready = "1";
})();
