// A feature's auto-interpretation results: every scorer's score against its random-explanation control,
// and the examples each scorer saw with what it answered. Strings only ever go in with textContent.
"use strict";

const InterpAutointerp = (() => {
  const { el, fmt, tokenSpan } = Interp;
  const HEADLINE = { detection: "balanced accuracy", fuzzing: "balanced accuracy", simulation: "Pearson r",
    surprisal: "AUROC", embedding: "AUROC", intervention: "AUROC" };
  const SHOWN = { detection: ["precision", "recall", "f1", "auroc"], fuzzing: ["precision", "recall", "f1", "auroc"],
    simulation: ["pearson_activating", "n_texts"], surprisal: ["mean_gain_activating", "mean_gain_non_activating"],
    embedding: [], intervention: ["balanced_accuracy", "f1"] };

  // Records are written with sorted keys; show scorers in their run order.
  const ordered = (results) => Object.entries(results).sort(([a], [b]) => rank(a) - rank(b) || (a < b ? -1 : 1));
  const rank = (name) => { const k = Object.keys(HEADLINE).indexOf(name); return k < 0 ? 99 : k; };
  const num = (v) => (typeof v === "number" ? fmt(v) : v == null ? "\u2013" : String(v));

  function summary(results) {
    const tb = el("tbody");
    for (const [name, r] of ordered(results)) {
      const m = r.metrics || {};
      const extra = (SHOWN[name] || []).filter((k) => k in m).map((k) => `${k} ${num(m[k])}`).join(" \u00b7 ");
      const fails = Object.entries(r.failures || {}).map(([k, v]) => `${k} ${v}`).join(", ");
      tb.append(el("tr", { "data-scorer": name },
        el("td", {}, name), el("td", { class: "muted" }, HEADLINE[name] || ""),
        el("td", { class: "num score" }, num(r.score)),
        el("td", { class: "num control" }, num((r.control || {}).score)),
        el("td", { class: "muted" }, extra + (fails ? ` \u00b7 malformed: ${fails}` : "")),
        el("td", { class: "muted" }, r.backend || "")));
    }
    return el("table", { class: "scorers" },
      el("thead", {}, el("tr", {}, ...["scorer", "metric", "score", "random control", "details", "by"].map(
        (h) => el("th", {}, h)))), tb);
  }

  function verdict(e) {
    if (e.prediction == null) return el("span", { class: "verdict failed" }, "no answer");
    const right = (e.prediction >= 0.5) === e.activating;
    return el("span", { class: "verdict " + (right ? "right" : "wrong") },
      (e.prediction >= 0.5 ? "yes" : "no") + (e.probability != null ? ` (${fmt(e.probability)})` : ""));
  }

  function classifierRows(name, r) {
    const tb = el("tbody");
    const truth = name === "intervention" ? ["steered", "clean"] : ["fires", "does not fire"];
    for (const e of r.examples || []) {
      tb.append(el("tr", {},
        el("td", { class: "muted" }, e.group || ""), el("td", {}, e.activating ? truth[0] : truth[1]),
        el("td", {}, verdict(e)), el("td", { class: "toks" }, e.text || "")));
    }
    return el("table", { class: "scored" }, el("thead", {}, el("tr", {},
      ...["group", "truth", "answer", "text as shown"].map((h) => el("th", {}, h)))), tb);
  }

  function simulationRows(r) {
    const box = el("div", {});
    // Simulated values on their own scale: 0..10 from an LLM, 0/1 from the n-gram simulator.
    const simTop = Math.max(1e-9, ...(r.examples || []).flatMap((e) => e.predicted || []));
    for (const e of r.examples || []) {
      const top = Math.max(...e.acts, 1e-9);
      const truth = el("div", { class: "toks" }), pred = el("div", { class: "toks" });
      e.tokens.forEach((t, k) => {
        truth.append(tokenSpan(t, e.acts[k], top, false));
        pred.append(tokenSpan(t, e.predicted ? e.predicted[k] : 0, simTop, false));
      });
      box.append(el("div", { class: "simulated" }, el("div", { class: "muted" }, `${e.group} \u00b7 true`), truth,
        el("div", { class: "muted" }, "simulated"), e.predicted ? pred : el("div", { class: "muted" }, "no answer")));
    }
    return box;
  }

  function valueRows(r, key, label) {
    const tb = el("tbody");
    for (const e of r.examples || []) {
      tb.append(el("tr", {}, el("td", { class: "muted" }, e.group || ""),
        el("td", {}, e.activating ? "fires" : "does not fire"),
        el("td", { class: "num" }, num(e[key])), el("td", { class: "toks" }, e.text || "")));
    }
    return el("table", { class: "scored" }, el("thead", {}, el("tr", {},
      ...["group", "truth", label, "text"].map((h) => el("th", {}, h)))), tb);
  }

  function examples(name, r) {
    if (name === "simulation") return simulationRows(r);
    if (name === "surprisal") return valueRows(r, "loss", "loss with explanation");
    if (name === "embedding") return valueRows(r, "similarity", "similarity");
    return classifierRows(name, r);
  }

  function card(E) {
    const box = el("div", { class: "card", id: "autointerp" }, el("h2", {}, "Explanation scores"),
      el("div", { class: "muted" }, `explainer ${E.explainer || "?"} \u00b7 run ${E.run || "?"}`),
      summary(E.results));
    for (const [name, r] of ordered(E.results)) {
      const d = el("details", { class: "scorer", "data-scorer": name },
        el("summary", {}, `${name}: ${(r.examples || []).length} examples`));
      if (r.explanation) d.append(el("p", { class: "explanation effect" }, "Effect of steering: ", r.explanation));
      if (r.control) d.append(el("p", { class: "muted" }, `Random control: feature #${r.control.source_feature}: `,
        r.control.explanation || ""));
      d.append(examples(name, r));
      box.append(d);
    }
    for (const o of E.runs || []) {
      const scores = Object.entries(o.scores || {}).map(([k, v]) => `${k} ${fmt(v)}`).join(" \u00b7 ");
      box.append(el("p", { class: "other-run" }, el("span", { class: "pill" }, o.run || "?"), o.text || "",
        el("span", { class: "muted" }, scores ? `  (${scores})` : "")));
    }
    return box;
  }

  return { card };
})();
