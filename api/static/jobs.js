/* Jobs: newest first, live progress bars (polling), errors in words, cancel. */
"use strict";

(function () {
  const { api, el, clear, setStatus, jobError, isTerminal, fmtDate, fmtDuration, progressBar, updateProgress,
    badge } = window.FIR;
  const $ = (id) => document.getElementById(id);
  const tbody = document.querySelector("#jobs tbody"), statusEl = $("status"), more = $("more");
  const rows = new Map(); // job id -> {tr, job}
  let olderCursor = null;
  let timer = null;
  const PAGE = 50, POLL_MS = 1500;

  function filters() {
    const p = new URLSearchParams({ limit: String(PAGE) });
    if ($("filter-status").value) p.set("status", $("filter-status").value);
    if ($("filter-type").value) p.set("type", $("filter-type").value);
    return p;
  }

  function describe(job) {
    const p = job.params || {};
    if (job.type === "query") {
      return el("a", { href: "/ui/search?job=" + job.id, text: "results" + (p.item_id ? " (item " + p.item_id + ")" : "") });
    }
    if (job.result && job.status === "succeeded" && job.result.embedded !== undefined) {
      return job.result.embedded + " embedded, " + (job.result.new || 0) + " new, " + (job.result.bad || 0) + " bad";
    }
    return p.full ? "full" : "";
  }

  function render(job) {
    const cells = [
      el("td", { class: "num", text: String(job.id) }),
      el("td", {}, job.type, el("div", { class: "muted" }, describe(job))),
      el("td", {}, job.catalogue_id ? el("a", { href: "/ui/catalogues/" + job.catalogue_id, text: "#" + job.catalogue_id }) : ""),
      el("td", {}, badge(job.status)),
      el("td", {}, progressBar(job), job.error ? el("div", { class: "job-error", text: jobError(job) }) : null),
      el("td", { text: fmtDate(job.created_at), title: job.created_at }),
      el("td", { text: fmtDuration(job.started_at, job.finished_at) }),
      el("td", {}, isTerminal(job.status) ? null : el("button", { type: "button", class: "danger cancel",
        onclick: () => cancel(job.id), text: "Cancel" })),
    ];
    return el("tr", { dataset: { jobId: job.id, status: job.status } }, cells);
  }

  function upsert(job, atTop) {
    const known = rows.get(job.id);
    if (known) {
      const j = known.job;
      if (j.status === job.status && JSON.stringify(j.progress) === JSON.stringify(job.progress) &&
          JSON.stringify(j.error) === JSON.stringify(job.error) && j.finished_at === job.finished_at) {
        if (!isTerminal(job.status)) known.tr.children[6].textContent = fmtDuration(job.started_at, job.finished_at);
        return;
      }
      if (j.status === job.status && !job.error) { // progress only: keep the row, move the bar
        updateProgress(known.tr.querySelector(".progress"), job);
        known.tr.children[6].textContent = fmtDuration(job.started_at, job.finished_at);
        known.job = job;
        return;
      }
      const tr = render(job);
      known.tr.replaceWith(tr);
      rows.set(job.id, { tr, job });
      return;
    }
    const tr = render(job);
    rows.set(job.id, { tr, job });
    if (atTop) {
      // keep newest first
      const after = [...tbody.children].find((r) => Number(r.dataset.jobId) < job.id);
      tbody.insertBefore(tr, after || null);
    } else {
      tbody.append(tr);
    }
  }

  async function refresh() {
    try {
      const page = await api("/jobs?" + filters());
      for (const job of page.jobs) upsert(job, true);
      if (olderCursor === null && rows.size <= PAGE) { olderCursor = page.next_cursor; }
      more.classList.toggle("hidden", !olderCursor);
      const newest = page.jobs.length ? page.jobs[page.jobs.length - 1].id : Infinity;
      // Jobs below the first page that are still moving: poll them one by one.
      const moving = [...rows.values()].filter((r) => r.job.id < newest && !isTerminal(r.job.status));
      await Promise.all(moving.map((r) => api("/jobs/" + r.job.id).then((j) => upsert(j, false)).catch(() => {})));
      if (!rows.size) setStatus(statusEl, "No jobs yet.");
      else if (statusEl.classList.contains("error") === false) setStatus(statusEl, "");
      $("live").textContent = "live · updated " + new Date().toLocaleTimeString();
    } catch (err) {
      setStatus(statusEl, "Jobs could not be read: " + err.message, "error");
    }
  }

  async function older() {
    if (!olderCursor) return;
    const p = filters();
    p.set("cursor", String(olderCursor));
    try {
      const page = await api("/jobs?" + p);
      for (const job of page.jobs) upsert(job, false);
      olderCursor = page.next_cursor;
      more.classList.toggle("hidden", !olderCursor);
    } catch (err) {
      setStatus(statusEl, "Older jobs could not be read: " + err.message, "error");
    }
  }

  async function cancel(jobId) {
    const row = rows.get(jobId);
    const button = row && row.tr.querySelector("button.cancel");
    if (button) button.disabled = true;
    try {
      const job = await api("/jobs/" + jobId, { method: "DELETE" });
      upsert(job, true);
      setStatus(statusEl, "Job " + jobId + " cancelled.");
    } catch (err) {
      setStatus(statusEl, "Job " + jobId + " could not be cancelled: " + err.message, "error");
      if (button) button.disabled = false;
      refresh();
    }
  }

  function restart() {
    rows.clear();
    clear(tbody);
    olderCursor = null;
    refresh();
  }

  function loop() {
    clearTimeout(timer);
    timer = setTimeout(async () => {
      if (!document.hidden) await refresh();
      loop();
    }, POLL_MS);
  }

  $("filter-status").addEventListener("change", restart);
  $("filter-type").addEventListener("change", restart);
  more.addEventListener("click", older);
  refresh().then(loop);
})();
