// Supernodes of the graph page: a grouping is a list of { name, members: [node id, ...] } (no node in two groups),
// as interp.circuits.supernodes keeps it. collapse() draws each group as one node whose edges are the sums of its
// members' edges (as collapse_supernodes does in Python); the grouping is kept in this browser (localStorage, per
// graph key) and saved as a grouping file that `interp dashboard --supernodes FILE` reads back.
"use strict";

const InterpSupernodes = (() => {
  const FORMAT = "interp-supernodes";

  // groups with unknown members, repeated members and empty groups dropped (a stored grouping may be stale).
  function clean(groups, byId) {
    const seen = new Set(), out = [];
    for (const g of Array.isArray(groups) ? groups : []) {
      if (!g || typeof g.name !== "string" || !Array.isArray(g.members)) continue;
      const members = g.members.filter((m) => typeof m === "string" && byId.has(m) && !seen.has(m));
      members.forEach((m) => seen.add(m));
      if (members.length) out.push({ name: g.name.trim() || "supernode", members });
    }
    return out;
  }

  // The drawn graph: ungrouped nodes in graph order (same indices as G.nodes when there are no groups), then one
  // node per group at its members' mean cell; edges summed per (source, target, slot), those inside a group left
  // out (their sum is the group's `internal`), strongest first (ties in first-appearance order).
  function collapse(nodes, edges, groups) {
    const byId = new Map(nodes.map((n, i) => [n.id, i]));
    const owner = new Array(nodes.length).fill(-1);
    groups.forEach((g, k) => g.members.forEach((m) => { owner[byId.get(m)] = k; }));
    const view = [], at = new Array(nodes.length);
    nodes.forEach((n, i) => { if (owner[i] < 0) { at[i] = view.length; view.push(n); } });
    const mean = (xs) => xs.reduce((a, b) => a + b, 0) / xs.length;
    groups.forEach((g, k) => {
      const ms = g.members.map((m) => nodes[byId.get(m)]);
      const scored = ms.filter((m) => m.score !== null && m.score !== undefined);
      const positions = new Set(ms.map((m) => m.position));
      const v = view.length;
      ms.forEach((m) => { at[byId.get(m.id)] = v; });
      view.push({ id: "supernode-" + k, kind: "supernode", label: g.name, group: k, members: g.members.slice(),
        layer: Math.min(...ms.map((m) => m.layer)), position: positions.size === 1 ? ms[0].position : null,
        score: scored.length ? scored.reduce((a, m) => a + m.score, 0) : null, x: mean(ms.map((m) => m.x)),
        y: mean(ms.map((m) => m.y)), internal: 0, attrs: {} });
    });
    const sums = new Map(), out = [];
    for (const e of edges) {
      const s = at[e.s], t = at[e.t];
      if (s === t) { view[s].internal += e.score; continue; }
      const key = s + " " + t + " " + e.slot;
      const have = sums.get(key);
      if (have) {
        have.score += e.score; have.n += 1;
        if (have.position !== e.position) have.position = null;
        have.in_circuit = have.in_circuit || e.in_circuit;
      } else {
        const edge = { s, t, slot: e.slot, score: e.score, position: e.position, in_circuit: e.in_circuit, n: 1 };
        sums.set(key, edge); out.push(edge);
      }
    }
    out.sort((a, b) => Math.abs(b.score) - Math.abs(a.score));
    return { nodes: view, edges: out };
  }

  function storageKey(G) { return "interp-supernodes:" + G.key; }

  // The grouping to start from: this browser's edits when they were made on the grouping the site has now,
  // else the site's (from the graph file, --supernodes or --auto-supernodes).
  function restore(G) {
    const byId = new Map(G.nodes.map((n, i) => [n.id, i]));
    const site = clean(G.supernodes, byId);
    try {
      const stored = JSON.parse(localStorage.getItem(storageKey(G)) || "null");
      if (stored && stored.from === JSON.stringify(site)) return { groups: clean(stored.groups, byId), edited: true };
    } catch (e) { /* no storage (private mode, file:// policy) or a stale entry: start from the site's */ }
    return { groups: site, edited: false };
  }

  function keep(G, groups) {
    const byId = new Map(G.nodes.map((n, i) => [n.id, i]));
    try {
      localStorage.setItem(storageKey(G), JSON.stringify({ from: JSON.stringify(clean(G.supernodes, byId)), groups }));
    } catch (e) { /* storage unavailable: the grouping lives until the page closes; Save still works */ }
  }

  function forget(G) {
    try { localStorage.removeItem(storageKey(G)); } catch (e) { /* nothing kept */ }
  }

  function fileOf(G, groups) {
    return { format: FORMAT, schema_version: 1, graph: { key: G.key, title: G.title, source: G.source },
      supernodes: groups };
  }

  function download(G, groups) {
    const blob = new Blob([JSON.stringify(fileOf(G, groups), null, 1) + "\n"], { type: "application/json" });
    const a = document.createElement("a");
    a.href = URL.createObjectURL(blob);
    a.download = `supernodes-${G.key}.json`;
    document.body.append(a);
    a.click();
    a.remove();
    setTimeout(() => URL.revokeObjectURL(a.href), 1000);
  }

  // groups with the view nodes `picked` (node ids, or supernode-k ids standing for a whole group) merged into one
  // group named `name` (placed where the first picked group was, else last).
  function group(groups, picked, name) {
    const merged = [], taken = new Set();
    let slot = -1;
    for (const id of picked) {
      const m = /^supernode-(\d+)$/.exec(id);
      if (m && groups[+m[1]]) { taken.add(+m[1]); if (slot < 0) slot = +m[1]; merged.push(...groups[+m[1]].members); }
      else merged.push(id);
    }
    const out = groups.filter((g, k) => !taken.has(k) || k === slot);
    const entry = { name: name.trim() || "supernode", members: [...new Set(merged)] };
    const at = slot < 0 ? -1 : out.indexOf(groups[slot]);
    if (at < 0) out.push(entry); else out[at] = entry;
    return out;
  }

  function ungroup(groups, k) { return groups.filter((g, j) => j !== k); }

  return { clean, collapse, restore, keep, forget, fileOf, download, group, ungroup };
})();
