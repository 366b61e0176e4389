/* FIR's web UI: helpers shared by every page (vanilla JS, no build step). The pages call
   the public API under /api/v1 like any other client. */
"use strict";

(function () {
  const API = document.body.dataset.api || "/api/v1";
  const TERMINAL = ["succeeded", "failed", "cancelled"];

  class ApiError extends Error {
    constructor(status, code, message) {
      super(message);
      this.status = status;
      this.code = code;
    }
  }

  /** fetch() a path under /api/v1 (or an absolute path); JSON in, JSON out; errors become ApiError
      with the API's message in words. */
  async function api(path, options) {
    const opts = Object.assign({ headers: {} }, options || {});
    if (opts.json !== undefined) {
      opts.body = JSON.stringify(opts.json);
      opts.headers["Content-Type"] = "application/json";
      delete opts.json;
    }
    opts.headers.Accept = "application/json";
    const url = path.startsWith("/api/") ? path : API + (path.startsWith("/") ? path : "/" + path);
    let resp;
    try {
      resp = await fetch(url, opts);
    } catch (err) {
      throw new ApiError(0, "network", "the server could not be reached (" + err.message + ")");
    }
    if (resp.status === 204) return null;
    let body = null;
    try { body = await resp.json(); } catch (err) { body = null; }
    if (!resp.ok) {
      const e = (body && body.error) || {};
      throw new ApiError(resp.status, e.code || "error", e.message || (resp.status + " " + resp.statusText));
    }
    return body;
  }

  /** Build an element: el("div", {class: "x", text: "hi", onclick: fn}, child, ...). Text goes
      in as text (never as HTML). */
  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(attrs || {})) {
      if (value === null || value === undefined || value === false) continue;
      if (key === "text") node.textContent = value;
      else if (key === "class") node.className = value;
      else if (key === "dataset") Object.assign(node.dataset, value);
      else if (key.startsWith("on") && typeof value === "function") node.addEventListener(key.slice(2), value);
      else node.setAttribute(key, value === true ? "" : String(value));
    }
    for (const child of children.flat()) {
      if (child === null || child === undefined || child === false) continue;
      node.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return node;
  }

  function clear(node) { while (node.firstChild) node.removeChild(node.firstChild); return node; }

  function setStatus(node, text, kind) {
    node.textContent = text || "";
    node.className = "status" + (kind ? " " + kind : "");
  }

  const ERROR_WORDS = {
    time_limit: "it ran past its time limit",
    internal_error: "an unexpected error inside the worker",
    bad_image: "the image could not be read",
    not_found: "something it needed was not found",
    model_not_ready: "no model is ready yet",
    database_unavailable: "the database was not reachable",
  };

  /** A job's error, in words. */
  function jobError(job) {
    if (!job || !job.error) return "";
    const what = ERROR_WORDS[job.error.code];
    const msg = job.error.message || job.error.code;
    return what && !msg.toLowerCase().includes(what) ? what + ": " + msg : msg;
  }

  function isTerminal(status) { return TERMINAL.includes(status); }

  /** Poll a job until it finishes; onUpdate(job) after every read. Each read long-polls
      (?wait=): the server answers as soon as the job finishes, or after the interval with
      its progress, so a result shows the moment it is ready. */
  async function pollJob(jobId, onUpdate, intervalMs) {
    let delay = intervalMs || 400;
    for (;;) {
      const t0 = Date.now();
      const job = await api("/jobs/" + jobId + "?wait=" + (delay / 1000).toFixed(2));
      if (onUpdate) onUpdate(job);
      if (isTerminal(job.status)) return job;
      const left = delay - (Date.now() - t0);  // a server that answered early (or ignores wait)
      if (left > 0) await new Promise((r) => setTimeout(r, left));
      delay = Math.min(delay * 1.25, 2000);
    }
  }

  /** Fill a <select> with the catalogues; returns them. */
  async function loadCatalogues(select, selected) {
    const body = await api("/catalogues");
    clear(select);
    for (const cat of body.catalogues) {
      select.append(el("option", { value: cat.id, text: cat.name + " (" + (cat.counts && cat.counts.by_status
        ? (cat.counts.by_status.active || 0) : "?") + " items)" }));
    }
    const want = selected || localStorage.getItem("fir.catalogue");
    if (want && body.catalogues.some((c) => String(c.id) === String(want))) select.value = String(want);
    select.addEventListener("change", () => localStorage.setItem("fir.catalogue", select.value));
    return body.catalogues;
  }

  function fmtDate(iso) {
    if (!iso) return "";
    const d = new Date(iso);
    return isNaN(d) ? iso : d.toLocaleString();
  }

  function fmtDuration(startIso, endIso) {
    if (!startIso) return "";
    const start = new Date(startIso), end = endIso ? new Date(endIso) : new Date();
    let s = Math.max(0, (end - start) / 1000);
    if (s < 1) return (s * 1000).toFixed(0) + " ms";
    if (s < 60) return s.toFixed(1) + " s";
    const m = Math.floor(s / 60); s = Math.round(s % 60);
    return m < 60 ? m + " min " + s + " s" : Math.floor(m / 60) + " h " + (m % 60) + " min";
  }

  /** A progress bar for a job: width from done/total, colour from status. */
  function progressBar(job) {
    const bar = el("div", { class: "progress", role: "progressbar" });
    const fill = el("div", { class: "fill" });
    const label = el("span", { class: "label" });
    bar.append(fill, label);
    updateProgress(bar, job);
    return bar;
  }

  function updateProgress(bar, job) {
    const p = job.progress || {};
    const done = p.done || 0, total = p.total;
    let pct = 0, text = "";
    if (job.status === "succeeded") { pct = 100; text = total ? done + " / " + total : "done"; }
    else if (total) { pct = Math.min(100, Math.round((100 * done) / total)); text = done + " / " + total + " (" + pct + "%)"; }
    else if (job.status === "running") { text = done ? done + " done" : "working"; }
    else if (job.status === "queued") { text = "waiting for a worker"; }
    else { text = done ? done + " done" : ""; }
    bar.className = "progress " + job.status + (job.status === "running" && !total ? " indeterminate" : "");
    bar.querySelector(".fill").style.width = pct + "%";
    bar.querySelector(".label").textContent = text;
    bar.setAttribute("aria-valuenow", String(pct));
    bar.setAttribute("aria-valuemin", "0");
    bar.setAttribute("aria-valuemax", "100");
    bar.dataset.done = String(done);
    bar.dataset.total = total === null || total === undefined ? "" : String(total);
  }

  function badge(status) { return el("span", { class: "badge " + status, text: status }); }

  window.FIR = { api, ApiError, el, clear, setStatus, jobError, isTerminal, pollJob, loadCatalogues, fmtDate,
    fmtDuration, progressBar, updateProgress, badge };
})();
