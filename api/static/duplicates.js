/* Duplicate review: a dedup run's groups, a page at a time, each side by side with its
   evidence (same bytes, cosine similarity, perceptual-hash distance); mark a group confirmed,
   not a duplicate, or keep one item. Decisions are stored by the API and follow the group
   into later runs; groups new since the previous run are marked. */
"use strict";

(function () {
  const { api, el, clear, setStatus, pollJob, loadCatalogues, fmtDate, progressBar, updateProgress, badge } = window.FIR;
  const $ = (id) => document.getElementById(id);
  const catalogueSel = $("catalogue"), runSel = $("run"), statusEl = $("status"), groupsEl = $("groups");
  const PAGE = 10;
  let cursors = [null]; // cursor of each page seen (for "previous")
  let pageIndex = 0;
  let nextCursor = null;
  let available = true;

  const DECISION_WORDS = { confirmed: "confirmed duplicates", not_duplicate: "not a duplicate", keep_item: "keep one item" };

  async function loadRuns(selectId) {
    clear(runSel);
    let body;
    try {
      body = await api("/catalogues/" + catalogueSel.value + "/dedup-runs?limit=20");
    } catch (err) {
      if (err.status === 404 && !/catalogue/i.test(err.message)) { // the route itself is missing
        available = false;
        setStatus(statusEl, "De-duplication is not available on this server.", "error");
        $("run-dedup").disabled = true;
        return [];
      }
      throw err;
    }
    for (const run of body.runs) {
      const counts = run.counts || {};
      runSel.append(el("option", { value: run.id, text: "run " + run.id + " · " + fmtDate(run.created_at) + " · " +
        (counts.shown !== undefined ? counts.shown : run.group_count) + " groups" }));
    }
    if (!body.runs.length) runSel.append(el("option", { value: "", text: "none yet" }));
    if (selectId) runSel.value = String(selectId);
    return body.runs;
  }

  function summary(run) {
    const c = run.counts || {};
    $("run-summary").textContent = "Run " + run.id + (run.finished_at ? " finished " + fmtDate(run.finished_at) : " (running)") +
      ": " + (c.all || 0) + " groups, " + (c.new_since_previous || 0) + " new since the previous run, " +
      (c.dismissed || 0) + " dismissed before (not a duplicate)" +
      (run.params && run.params.threshold ? " · cosine threshold " + run.params.threshold : "");
  }

  function evidence(member, group) {
    const bits = [];
    if (member.is_representative) bits.push("suggested keep");
    else if (member.hash_equal) bits.push("same bytes");
    if (!member.is_representative && member.cosine !== null && member.cosine !== undefined) bits.push("cosine " + member.cosine.toFixed(3));
    if (member.phash_distance !== null && member.phash_distance !== undefined && !member.is_representative) bits.push("phash distance " + member.phash_distance);
    if (group.kind === "exact" && !member.is_representative && !bits.length) bits.push("same bytes");
    return bits.join(" · ");
  }

  function renderGroup(group) {
    const d = group.decision;
    const keepId = d ? (d.decision === "keep_item" ? d.kept_item_id : d.decision === "confirmed" ? group.suggested_keep_item_id : null) : null;
    const section = el("section", { class: "panel group" + (d && d.decision === "not_duplicate" ? " dismissed" : ""),
      dataset: { groupId: group.id, decision: d ? d.decision : "" } });
    const head = el("div", { class: "group-head" },
      el("strong", { text: "Group " + group.id }), badge(group.kind),
      el("span", { text: (group.category || "no category") + " · " + group.size + " items" }),
      group.new_since_previous ? el("span", { class: "badge new", text: "new since the last run" }) : null,
      group.dismissed ? el("span", { class: "badge cancelled", text: "dismissed before" }) : null,
      d ? el("span", { class: "badge decided decision", text: DECISION_WORDS[d.decision] + (d.decided_by ? " (" + d.decided_by + ")" : "") }) : null,
      el("span", { class: "decision-buttons" },
        el("button", { type: "button", class: "secondary confirm", text: "Confirmed duplicates", onclick: () => decide(group, "confirmed") }),
        el("button", { type: "button", class: "danger not-duplicate", text: "Not a duplicate", onclick: () => decide(group, "not_duplicate") })));
    const members = el("div", { class: "group-members" });
    for (const m of group.members) {
      const cls = keepId ? (m.item_id === keepId ? " keep" : " drop") : "";
      members.append(el("figure", { class: "card-img member" + cls, dataset: { itemId: m.item_id } },
        el("img", { src: m.image_url, alt: m.key || "item " + m.item_id, loading: "lazy" }),
        el("figcaption", { class: "caption" },
          el("span", { class: "key", text: m.key || "item " + m.item_id, title: m.key || "" }),
          el("span", { class: "evidence", text: (m.width && m.height ? m.width + "×" + m.height + " · " : "") + evidence(m, group) }),
          el("button", { type: "button", class: "secondary keep-this", text: m.item_id === keepId ? "Kept" : "Keep this one",
            onclick: () => decide(group, "keep_item", m.item_id) }))));
    }
    section.append(head, members);
    return section;
  }

  async function decide(group, decision, itemId) {
    const body = { decision, decided_by: "web ui" };
    if (itemId) body.item_id = itemId;
    try {
      const made = await api("/dedup-groups/" + group.id + "/decision", { method: "POST", json: body });
      group.decision = made;
      const fresh = renderGroup(group);
      groupsEl.querySelector("[data-group-id='" + group.id + "']").replaceWith(fresh);
      setStatus(statusEl, "Group " + group.id + ": " + DECISION_WORDS[made.decision] + " (saved).");
    } catch (err) {
      setStatus(statusEl, "The decision for group " + group.id + " was not saved: " + err.message, "error");
    }
  }

  async function showPage() {
    clear(groupsEl);
    delete groupsEl.dataset.run; // set again once this run's page is shown
    if (!runSel.value) {
      $("pager").classList.add("hidden");
      $("run-summary").textContent = available ? "No dedup run yet for this catalogue: find duplicates now." : "";
      return;
    }
    const params = new URLSearchParams({ limit: String(PAGE) });
    if ($("kind").value) params.set("kind", $("kind").value);
    if ($("only-new").checked) params.set("only_new", "true");
    if ($("include-dismissed").checked) params.set("include_dismissed", "true");
    if (cursors[pageIndex] !== null) params.set("cursor", String(cursors[pageIndex]));
    try {
      const [run, page] = await Promise.all([api("/dedup-runs/" + runSel.value), api("/dedup-runs/" + runSel.value + "/groups?" + params)]);
      summary(run);
      for (const group of page.groups) groupsEl.append(renderGroup(group));
      if (!page.groups.length) groupsEl.append(el("p", { class: "panel muted", text: "No groups to review here." }));
      nextCursor = page.next_cursor;
      $("pager").classList.toggle("hidden", pageIndex === 0 && !nextCursor);
      $("prev").disabled = pageIndex === 0;
      $("next").disabled = !nextCursor;
      $("page-label").textContent = "page " + (pageIndex + 1);
      groupsEl.dataset.run = runSel.value;
      setStatus(statusEl, "");
    } catch (err) {
      setStatus(statusEl, "The groups could not be read: " + err.message, "error");
    }
  }

  function restart() { cursors = [null]; pageIndex = 0; showPage(); }

  async function runDedup() {
    $("run-dedup").disabled = true;
    const box = $("run-progress");
    try {
      const body = {};
      const threshold = parseFloat($("threshold").value);
      if (!Number.isNaN(threshold)) body.threshold = threshold;
      const accepted = await api("/catalogues/" + catalogueSel.value + "/dedup", { method: "POST", json: body });
      clear(box).classList.remove("hidden");
      const bar = progressBar({ status: "queued", progress: {} });
      box.append(el("p", { text: "Finding duplicates (job " + accepted.job_id + ")…" }), bar);
      const job = await pollJob(accepted.job_id, (j) => updateProgress(bar, j), 500);
      if (job.status !== "succeeded") throw new Error("job " + job.id + " " + job.status + (job.error ? ": " + job.error.message : ""));
      box.classList.add("hidden");
      await loadRuns(job.result && job.result.dedup_run_id);
      restart();
    } catch (err) {
      setStatus(statusEl, "Dedup did not finish: " + err.message, "error");
    } finally {
      $("run-dedup").disabled = !available;
    }
  }

  $("prev").addEventListener("click", () => { if (pageIndex > 0) { pageIndex -= 1; showPage(); } });
  $("next").addEventListener("click", () => {
    if (!nextCursor) return;
    cursors = cursors.slice(0, pageIndex + 1).concat([nextCursor]);
    pageIndex += 1;
    showPage();
  });
  for (const id of ["kind", "only-new", "include-dismissed"]) $(id).addEventListener("change", restart);
  runSel.addEventListener("change", restart);
  catalogueSel.addEventListener("change", () => loadRuns().then(restart).catch((err) => setStatus(statusEl, err.message, "error")));
  $("run-dedup").addEventListener("click", runDedup);
  loadCatalogues(catalogueSel)
    .then((cats) => (cats.length ? loadRuns().then(restart) : setStatus(statusEl, "No catalogue yet.")))
    .catch((err) => setStatus(statusEl, "Could not load: " + err.message, "error"));
})();
