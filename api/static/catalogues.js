/* Catalogue overview: counts by category and status, the active model and its metrics, the
   index generation, the last and the next re-index (GET /api/v1/catalogues/<id>), and the
   catalogue's recent jobs with live progress. */
"use strict";

(function () {
  const { api, el, clear, setStatus, jobError, isTerminal, fmtDate, fmtDuration, progressBar, badge,
    loadCatalogues } = window.FIR;
  const $ = (id) => document.getElementById(id);
  const select = $("catalogue"), statusEl = $("status");
  let timer = null;

  function kv(table, pairs) {
    clear(table);
    for (const [key, value] of pairs) {
      table.append(el("tr", {}, el("th", { text: key }), el("td", {}, value === null || value === undefined ? "-" : value)));
    }
  }

  function fmtMetric(value) {
    if (typeof value === "number") return Number.isInteger(value) ? String(value) : value.toFixed(4);
    if (value && typeof value === "object") return JSON.stringify(value);
    return String(value);
  }

  function bars(box, counts) {
    clear(box);
    const entries = Object.entries(counts || {}).sort((a, b) => b[1] - a[1]);
    const max = Math.max(1, ...entries.map((e) => e[1]));
    for (const [name, n] of entries) {
      const meter = el("div", { class: "meter" }, el("div"));
      meter.firstChild.style.width = ((100 * n) / max).toFixed(1) + "%";
      box.append(el("span", { text: name }), meter, el("span", { class: "num", text: String(n) }));
    }
    if (!entries.length) box.append(el("span", { class: "muted", text: "no active items" }));
  }

  async function show() {
    if (!select.value) return;
    try {
      const cat = await api("/catalogues/" + select.value);
      history.replaceState(null, "", "/ui/catalogues/" + cat.id);
      const byStatus = (cat.counts && cat.counts.by_status) || {};
      kv($("by-status"), ["active", "removed", "bad"].map((s) => [s, String(byStatus[s] || 0)])
        .concat(Object.entries(byStatus).filter(([s]) => !["active", "removed", "bad"].includes(s)).map(([s, n]) => [s, String(n)])));
      bars($("by-category"), cat.counts && cat.counts.by_category);
      const m = cat.active_model;
      if (m) {
        kv($("model"), [["version", String(m.id)], ["model id", el("code", { text: m.model_id || "?" })],
          ["backbone", m.backbone], ["weights", m.weights_source], ["categories", (m.labels || []).join(", ")]]
          .concat(Object.entries(m.metrics || {}).map(([k, v]) => [k, fmtMetric(v)])));
      } else {
        kv($("model"), [["model", "none active: train one and activate it (fir train, fir models activate)"]]);
      }
      const last = cat.last_reindex;
      kv($("index"), [
        ["index generation", cat.index_generation === null ? "-" : String(cat.index_generation)],
        ["source", cat.root || "uploads only"],
        ["last re-index", last ? el("span", {}, badge(last.status), " job ", el("a", { href: "/ui/jobs", text: "#" + last.job_id }),
          last.finished_at ? " · finished " + fmtDate(last.finished_at) : "") : "never"],
        ["next re-index", cat.next_reindex ? fmtDate(cat.next_reindex) + " (nightly)" : "none (no source folder)"],
        ["default k / metric", cat.default_k + " / " + cat.default_metric],
        ["created", fmtDate(cat.created_at)],
      ]);
      $("overview").classList.remove("hidden");
      setStatus(statusEl, "");
      await recent();
    } catch (err) {
      setStatus(statusEl, "The catalogue could not be read: " + err.message, "error");
    }
  }

  async function recent() {
    const page = await api("/jobs?limit=8&catalogue_id=" + select.value);
    const tbody = clear(document.querySelector("#recent tbody"));
    for (const job of page.jobs) {
      tbody.append(el("tr", { dataset: { jobId: job.id } },
        el("td", { text: "#" + job.id }), el("td", { text: job.type }), el("td", {}, badge(job.status)),
        el("td", { class: "wide" }, progressBar(job), job.error ? el("div", { class: "job-error", text: jobError(job) }) : null),
        el("td", { text: fmtDate(job.created_at) }), el("td", { text: fmtDuration(job.started_at, job.finished_at) })));
    }
    if (!page.jobs.length) tbody.append(el("tr", {}, el("td", { class: "muted", text: "no jobs yet" })));
    clearTimeout(timer);
    if (page.jobs.some((j) => !isTerminal(j.status))) timer = setTimeout(() => show(), 2000);
  }

  $("reindex").addEventListener("click", async () => {
    $("reindex").disabled = true;
    try {
      const job = await api("/catalogues/" + select.value + "/reindex", { method: "POST", json: { full: false } });
      $("reindex-status").textContent = "re-index job " + job.job_id + " queued";
      await show();
    } catch (err) {
      setStatus(statusEl, "Re-index could not start: " + err.message, "error");
    } finally {
      $("reindex").disabled = false;
    }
  });
  select.addEventListener("change", show);
  loadCatalogues(select, select.dataset.selected || null)
    .then((cats) => { if (!cats.length) setStatus(statusEl, "No catalogue yet."); else show(); })
    .catch((err) => setStatus(statusEl, "Catalogues could not be loaded: " + err.message, "error"));
})();
