// Prompt-centric view (needs `interp serve`): type a prompt, see which features fire on each token.
"use strict";

(async function () {
  const { el, fmt, tokenSpan, featureHref } = Interp;
  const page = await Interp.boot("Prompt");
  if (!page) return;
  const { root, meta } = page;
  if (location.protocol === "file:") {
    return Interp.fail(root, "The prompt view runs the model live: open it through `interp serve`.");
  }
  const box = el("textarea", { id: "prompt", rows: "3", style: "width:100%",
    placeholder: "Type a prompt and press Run (Ctrl+Enter)" });
  box.value = new URLSearchParams(location.search).get("text") || "def add(a, b):\n    return a + b";
  const run = el("button", { class: "primary", id: "run" }, "Run");
  const status = el("span", { class: "muted", id: "status" });
  const toks = el("div", { class: "toks prompt-toks", id: "tokens" });
  const tokInfo = el("div", { id: "token-features" }, el("p", { class: "muted" }, "Click a token to list its features."));
  const summary = el("tbody", { id: "summary" });
  root.replaceChildren(
    el("h1", {}, "Prompt"),
    el("div", { class: "card" }, box, el("div", { class: "controls", style: "margin-top:8px" }, run, status)),
    el("div", { class: "grid side" },
      el("div", {}, el("div", { class: "card" }, el("h2", {}, "Tokens"), toks),
        el("div", { class: "card" }, el("h2", {}, "Features on the selected token"), tokInfo)),
      el("div", { class: "card" }, el("h2", {}, "Most active features"),
        el("table", {}, el("thead", {}, el("tr", {}, el("th", {}, "Feature"), el("th", {}, "Max"),
          el("th", {}, "Tokens"))), summary))));

  let data = null, focus = null, selected = -1;
  function paintTokens() {
    const acts = focus === null ? null : data.acts[String(focus)];
    const max = acts ? Math.max(...acts, 1e-9) : 1;
    toks.replaceChildren(...data.tokens.map((s, k) => {
      const a = acts ? acts[k] : (data.top[k].length ? data.top[k][0][1] : 0);
      const span = tokenSpan(s, a, acts ? max : data.max_top, false);
      if (k === selected) span.classList.add("sel");
      span.dataset.index = String(k);
      span.addEventListener("click", () => { selected = k; paintTokens(); showToken(k); });
      return span;
    }));
  }
  function showToken(k) {
    const tb = el("tbody");
    for (const [f, v] of data.top[k]) {
      tb.append(el("tr", {}, el("td", {}, el("a", { href: featureHref(f) }, "#" + f)),
        el("td", { class: "num" }, fmt(v)), el("td", {}, data.expl[String(f)] || "")));
    }
    if (!data.top[k].length) tb.append(el("tr", {}, el("td", { class: "muted" }, "no feature fires here")));
    tokInfo.replaceChildren(el("p", {}, "Token ", el("span", { class: "chip" }, JSON.stringify(data.tokens[k]))),
      el("table", {}, tb));
  }
  function showSummary() {
    summary.replaceChildren(...data.features.map(([f, mx, n]) => {
      const tr = el("tr", { "data-feature": String(f) }, el("td", {}, el("a", { href: featureHref(f) }, "#" + f),
        " ", el("span", { class: "muted" }, data.expl[String(f)] || "")),
      el("td", { class: "num" }, fmt(mx)), el("td", { class: "num" }, String(n)));
      tr.addEventListener("mouseenter", () => { focus = f; paintTokens(); });
      tr.addEventListener("mouseleave", () => { focus = null; paintTokens(); });
      return tr;
    }));
  }
  async function go() {
    run.disabled = true; status.textContent = "running…";
    try {
      const r = await fetch("api/prompt", { method: "POST", headers: { "Content-Type": "application/json" },
        body: JSON.stringify({ text: box.value }) });
      const body = await r.json();
      if (!r.ok) throw new Error(body.error || r.statusText);
      data = body; selected = -1; focus = null;
      data.max_top = Math.max(1e-9, ...data.top.map((t) => (t.length ? t[0][1] : 0)));
      paintTokens(); showSummary();
      status.textContent = `${data.tokens.length} tokens \u00b7 ${data.features.length} features shown`;
      document.body.dataset.ready = "1";
    } catch (e) {
      status.textContent = "error: " + e.message;
    } finally {
      run.disabled = false;
    }
  }
  run.addEventListener("click", go);
  box.addEventListener("keydown", (ev) => { if (ev.key === "Enter" && (ev.ctrlKey || ev.metaKey)) go(); });
  go();
})();
