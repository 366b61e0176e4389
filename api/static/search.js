/* Search by photo: a dropped/chosen photo (multipart) or a catalogue item (JSON item_id) goes
   to POST /api/v1/queries; the job is polled until its results come back. With the query's
   category known (a picked item, or chosen by hand) every result is framed green (same
   category) or red (another), as in the study's figures. */
"use strict";

(function () {
  const { api, el, clear, setStatus, jobError, pollJob, loadCatalogues } = window.FIR;
  const $ = (id) => document.getElementById(id);
  const form = $("query-form"), fileInput = $("file"), dropzone = $("dropzone"), preview = $("preview");
  const catalogueSel = $("catalogue"), categorySel = $("category"), routingSel = $("routing");
  const statusEl = $("status"), results = $("results"), summary = $("results-summary");
  const picker = $("picker"), pickerGrid = $("picker-grid"), pickerMore = $("picker-more");
  const pickerCategory = $("picker-category");
  let source = null; // {kind: "file", file} | {kind: "item", item}
  let previewUrl = null;
  let pickerCursor = null;
  let running = false;

  function showPreview(src) {
    preview.src = src;
    preview.classList.remove("hidden");
    $("drop-hint").textContent = "Drop another photo, or choose a file";
  }

  function useFile(file) {
    if (!file) return;
    if (file.type && !file.type.startsWith("image/")) {
      setStatus(statusEl, file.name + " is not an image", "error");
      return;
    }
    if (previewUrl) URL.revokeObjectURL(previewUrl);
    previewUrl = URL.createObjectURL(file);
    source = { kind: "file", file };
    showPreview(previewUrl);
    $("source-label").textContent = "photo: " + file.name;
    setStatus(statusEl, "");
  }

  function useItem(item) {
    source = { kind: "item", item };
    showPreview(item.image_url);
    $("source-label").textContent = "item: " + item.key + (item.category ? " (" + item.category + ")" : "");
    if (item.category) setCategory(item.category);
    picker.classList.add("hidden");
    setStatus(statusEl, "");
  }

  function setCategory(value) {
    if (value && ![...categorySel.options].some((o) => o.value === value)) {
      categorySel.append(el("option", { value, text: value }));
    }
    categorySel.value = value || "";
  }

  async function loadCategories() {
    const keep = categorySel.value, keepPicker = pickerCategory.value;
    clear(categorySel).append(el("option", { value: "", text: "unknown" }));
    clear(pickerCategory).append(el("option", { value: "", text: "all" }));
    if (!catalogueSel.value) return;
    const cat = await api("/catalogues/" + catalogueSel.value);
    const names = new Set(Object.keys((cat.counts && cat.counts.by_category) || {}));
    for (const label of (cat.active_model && cat.active_model.labels) || []) names.add(label);
    names.delete("uncategorised");
    for (const name of [...names].sort()) {
      categorySel.append(el("option", { value: name, text: name }));
      pickerCategory.append(el("option", { value: name, text: name }));
    }
    setCategory(keep && names.has(keep) ? keep : "");
    pickerCategory.value = names.has(keepPicker) ? keepPicker : "";
  }

  // -- photo: drop or choose ------------------------------------------------------------------
  fileInput.addEventListener("change", () => useFile(fileInput.files[0]));
  ["dragenter", "dragover"].forEach((t) => dropzone.addEventListener(t, (e) => {
    e.preventDefault();
    dropzone.classList.add("over");
  }));
  ["dragleave", "drop"].forEach((t) => dropzone.addEventListener(t, () => dropzone.classList.remove("over")));
  dropzone.addEventListener("drop", (e) => {
    e.preventDefault();
    if (e.dataTransfer && e.dataTransfer.files.length) useFile(e.dataTransfer.files[0]);
  });

  // -- a catalogue item -------------------------------------------------------------------------
  let pickerSeq = 0; // only the latest listing fills the grid
  async function loadPicker(reset) {
    if (reset) { clear(pickerGrid); pickerCursor = null; }
    const seq = ++pickerSeq;
    const params = new URLSearchParams({ limit: "24", status: "active" });
    if (pickerCategory.value) params.set("category", pickerCategory.value);
    if (pickerCursor) params.set("cursor", pickerCursor);
    try {
      const page = await api("/catalogues/" + catalogueSel.value + "/items?" + params);
      if (seq !== pickerSeq) return;
      for (const item of page.items) {
        const card = el("button", { type: "button", class: "card-img picker-item", title: item.key,
          dataset: { itemId: item.id }, onclick: () => useItem(item) },
        el("img", { src: item.image_url, alt: item.key, loading: "lazy" }),
        el("span", { class: "caption" }, el("span", { class: "key", text: item.key }), item.category || "?"));
        pickerGrid.append(card);
      }
      pickerCursor = page.next_cursor;
      pickerMore.classList.toggle("hidden", !pickerCursor);
      if (!pickerGrid.children.length) pickerGrid.append(el("p", { class: "muted", text: "no items" }));
    } catch (err) {
      setStatus(statusEl, "Items could not be listed: " + err.message, "error");
    }
  }
  $("pick-toggle").addEventListener("click", () => {
    picker.classList.toggle("hidden");
    if (!picker.classList.contains("hidden")) loadPicker(true);
  });
  $("picker-close").addEventListener("click", () => picker.classList.add("hidden"));
  pickerMore.addEventListener("click", () => loadPicker(false));
  pickerCategory.addEventListener("change", () => loadPicker(true));
  catalogueSel.addEventListener("change", () => {
    if (source && source.kind === "item") { source = null; preview.classList.add("hidden"); $("source-label").textContent = ""; }
    loadCategories().catch((err) => setStatus(statusEl, err.message, "error"));
    if (!picker.classList.contains("hidden")) loadPicker(true);
  });

  // -- submit and poll --------------------------------------------------------------------------
  async function submit() {
    const known = categorySel.value || null;
    const routing = routingSel.value;
    if (!source) { setStatus(statusEl, "Drop or choose a photo, or pick a catalogue item, first.", "error"); return; }
    if (routing === "label" && !known) {
      setStatus(statusEl, "Routing by the query's category needs that category: choose it above.", "error");
      return;
    }
    const fields = { catalogue: catalogueSel.value, k: $("k").value || "12", metric: $("metric").value, routing };
    if (known) fields.category = known;
    let accepted;
    running = true;
    $("search-button").disabled = true;
    setStatus(statusEl, "Sending the query…", "busy");
    try {
      if (source.kind === "file") {
        const body = new FormData();
        for (const [key, value] of Object.entries(fields)) body.append(key, value);
        body.append("file", source.file, source.file.name || "query.jpg");
        accepted = await api("/queries", { method: "POST", body });
      } else {
        accepted = await api("/queries", { method: "POST", json: Object.assign(fields, { k: Number(fields.k), item_id: source.item.id }) });
      }
      history.replaceState(null, "", "?job=" + accepted.job_id);
      const job = await pollJob(accepted.job_id, (j) => setStatus(statusEl,
        "Job " + j.id + ": " + (j.status === "queued" ? "waiting for a worker…" : j.status + "…"), "busy"));
      show(job, known);
    } catch (err) {
      setStatus(statusEl, "The query failed: " + err.message, "error");
    } finally {
      running = false;
      $("search-button").disabled = false;
    }
  }
  form.addEventListener("submit", (e) => { e.preventDefault(); if (!running) submit(); });

  function show(job, known) {
    clear(results);
    summary.textContent = "";
    $("routing-panel").classList.add("hidden");
    if (job.status !== "succeeded") {
      setStatus(statusEl, "Job " + job.id + " " + job.status + (job.error ? ": " + jobError(job) : ""), "error");
      return;
    }
    const hits = job.results || [];
    setStatus(statusEl, "Job " + job.id + ": " + hits.length + " results" +
      (job.elapsed_ms !== null && job.elapsed_ms !== undefined ? " in " + job.elapsed_ms.toFixed(1) + " ms" : "") +
      (job.model_version ? " (model " + job.model_version.model_id + ")" : ""));
    showRouting(job.routing || {}, job.params || {});
    let same = 0;
    for (const hit of hits) {
      const relevant = known ? hit.category === known : null;
      if (relevant) same += 1;
      results.append(el("figure", {
        class: "card-img result" + (relevant === true ? " relevant" : relevant === false ? " wrong" : ""),
        dataset: { itemId: hit.item_id, category: hit.category || "", relevant: relevant === null ? "" : String(relevant) },
      },
      el("img", { src: hit.image_url, alt: hit.key, loading: "lazy" }),
      el("figcaption", { class: "caption" },
        el("span", {}, "#" + hit.rank + " · ", el("span", { class: "score", text: hit.score.toFixed(3) })),
        el("span", { class: "key", text: (hit.category || "?") + " · " + hit.key, title: hit.key }))));
    }
    if (known && hits.length) {
      summary.textContent = same + " of " + hits.length + " results share the query's category (" + known +
        "): green frame = same category, red = another.";
    } else if (hits.length) {
      summary.textContent = "Choose the query's category to see which results match it.";
    }
  }

  function showRouting(routing, params) {
    const probs = routing.probabilities || {};
    const routed = routing.categories || [];
    const panel = $("routing-panel"), box = clear($("probabilities"));
    const entries = Object.entries(probs).sort((a, b) => b[1] - a[1]);
    let text = "Routing " + (routing.mode || params.routing || "?") + ": ";
    text += routed.length ? "searched " + routed.join(" + ") : "searched the whole catalogue";
    if (entries.length) {
      text += " · the router's confidence " + (100 * entries[0][1]).toFixed(1) + "% for " + entries[0][0];
      if (routed.length > 1) text += " (below the threshold, so the top two were searched)";
    }
    $("routing-summary").textContent = text;
    for (const [label, p] of entries) {
      const isRouted = routed.includes(label);
      const meter = el("div", { class: "meter" + (isRouted ? " routed" : "") }, el("div"));
      meter.firstChild.style.width = (100 * p).toFixed(1) + "%";
      box.append(el("span", { class: isRouted ? "routed" : "", text: label }), meter,
        el("span", { text: (100 * p).toFixed(1) + "%" }));
    }
    panel.classList.remove("hidden");
  }

  async function start() {
    try {
      const cats = await loadCatalogues(catalogueSel);
      if (!cats.length) { setStatus(statusEl, "No catalogue yet: create and index one first.", "error"); return; }
      await loadCategories();
    } catch (err) {
      setStatus(statusEl, "Catalogues could not be loaded: " + err.message, "error");
      return;
    }
    const jobId = new URLSearchParams(location.search).get("job");
    if (jobId && /^\d+$/.test(jobId)) {
      try {
        const job = await pollJob(jobId, (j) => setStatus(statusEl, "Job " + j.id + ": " + j.status + "…", "busy"));
        const params = job.params || {};
        if (params.catalogue_id) { catalogueSel.value = String(params.catalogue_id); await loadCategories(); }
        if (params.category) setCategory(params.category);
        if (params.item_id) {
          const item = await api("/items/" + params.item_id);
          source = { kind: "item", item };
          showPreview(item.image_url);
          $("source-label").textContent = "item: " + item.key;
        }
        show(job, params.category || null);
      } catch (err) {
        setStatus(statusEl, "Job " + jobId + " could not be shown: " + err.message, "error");
      }
    }
  }
  categorySel.addEventListener("change", () => {
    // Re-frame the shown results for the newly chosen category.
    const known = categorySel.value;
    let same = 0, n = 0;
    for (const card of results.querySelectorAll(".result")) {
      n += 1;
      card.classList.remove("relevant", "wrong");
      if (known) {
        const ok = card.dataset.category === known;
        if (ok) same += 1;
        card.classList.add(ok ? "relevant" : "wrong");
        card.dataset.relevant = String(ok);
      } else {
        card.dataset.relevant = "";
      }
    }
    if (n) summary.textContent = known ? same + " of " + n + " results share the query's category (" + known +
      "): green frame = same category, red = another." : "Choose the query's category to see which results match it.";
  });
  start();
})();
