"""Jobs: poll, page through results, cancel, list."""

from __future__ import annotations

import time
from typing import Any

from apiflask import APIBlueprint
from flask import url_for

from api.app import fir_settings
from api.routes.common import db, iso
from api.schemas import JobList, JobOut, JobsQuery, JobWaitQuery, ResultPage, ResultsQuery
from shared import jobbell
from shared.db import services
from shared.errors import Conflict

bp = APIBlueprint("jobs", __name__, url_prefix="/api/v1", tag="Jobs")

INLINE_RESULTS = 100
# A waiting GET /jobs/<id> sleeps on the job bell (shared/jobbell.py; workers ring it when a job
# finishes) and reads the job's status when it rings, and at least this often in any case;
# once this process has heard its waiters' last jobs finish by the bell (Hub.trusted), at least
# every WAIT_DB_POLL_TRUSTED_S (a ring that is then lost costs that much latency once, and
# takes the trust back).
WAIT_DB_POLL_S = 0.05
WAIT_DB_POLL_TRUSTED_S = 0.5


def _hits(result: Any, params: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    hits = [{"rank": h.rank, "item_id": h.item_id, "key": h.external_key, "score": h.score,
             "category": h.category, "image_url": url_for("catalogues.item_image", item_id=h.item_id)}
            for h in result.hits]
    return flag_duplicates(hits, params)


def flag_duplicates(hits: list[dict[str, Any]], params: dict[str, Any] | None) -> list[dict[str, Any]]:
    """A query with a ``duplicate_threshold`` ("is this already in my catalogue?") flags each hit
    whose cosine reaches it, or whose bytes are the query's (``exact_item_ids``)."""
    threshold = (params or {}).get("duplicate_threshold")
    if threshold is None:
        return hits
    exact = set((params or {}).get("exact_item_ids") or [])
    for h in hits:
        h["is_duplicate"] = h["item_id"] in exact or h["score"] >= float(threshold)
    return hits


def duplicate_summary(hits: list[dict[str, Any]], params: dict[str, Any]) -> dict[str, Any]:
    exact = list(params.get("exact_item_ids") or [])
    matches = [h["item_id"] for h in hits if h.get("is_duplicate")]
    return {"threshold": params["duplicate_threshold"], "is_duplicate": bool(matches or exact),
            "duplicate_item_ids": sorted(set(matches) | set(exact)), "exact_item_ids": exact}


def batch_out(session: Any, result: dict[str, Any]) -> list[dict[str, Any]]:
    """The batch form's answers, one per input file in order, with item keys and categories."""
    ids = {i for entry in result["batch"] for i in entry["item_ids"]}
    items = services.get_items(session, sorted(ids))
    out = []
    for entry in result["batch"]:
        hits = []
        for rank, (item_id, score) in enumerate(zip(entry["item_ids"], entry["scores"], strict=True), start=1):
            item = items.get(item_id)
            hits.append({"rank": rank, "item_id": item_id, "key": item.external_key if item else None,
                         "score": score,
                         "category": (item.given_category or item.predicted_category) if item else None,
                         "image_url": url_for("catalogues.item_image", item_id=item_id)})
        out.append({"index": entry["index"], "results": hits,
                    "routing": {"categories": entry["routed_categories"], "probabilities": entry["probabilities"]}})
    return out


def job_out(session: Any, job: Any, with_results: bool = True) -> dict[str, Any]:
    out: dict[str, Any] = {
        "id": job.id, "type": job.type, "status": job.status, "catalogue_id": job.catalogue_id,
        "progress": {"done": job.progress_done, "total": job.progress_total},
        "params": {k: v for k, v in (job.params or {}).items() if k not in ("upload", "uploads")},
        "error": {"code": job.error_code, "message": job.error_message} if job.error_code else None,
        "created_at": iso(job.created_at), "started_at": iso(job.started_at), "finished_at": iso(job.finished_at),
        "result": job.result if job.type != "query" else None,
    }
    if with_results and job.type == "query" and job.status == "succeeded" and (job.result or {}).get("batch"):
        out["batch"] = batch_out(session, job.result)
        out["model_version"] = {"id": job.result.get("model_version_id"), "model_id": job.result.get("model_id")}
    elif with_results and job.type == "query" and job.status == "succeeded":
        result = services.get_query_results(session, job.id)
        if result is not None:
            hits = _hits(result, job.params)
            out["results"] = hits[:INLINE_RESULTS]
            if (job.params or {}).get("duplicate_threshold") is not None:
                out["duplicate"] = duplicate_summary(hits, job.params or {})
            out["routing"] = {"mode": result.routing, "categories": result.routed_categories,
                              "probabilities": result.probabilities}
            out["model_version"] = {"id": result.model_version_id, "model_id": result.model_id}
            out["elapsed_ms"] = result.elapsed_ms
            if len(hits) > INLINE_RESULTS:
                out["results_url"] = url_for("jobs.job_results", job_id=job.id, offset=INLINE_RESULTS)
    return out


@bp.get("/jobs/<int:job_id>")
@bp.input(JobWaitQuery, location="query", arg_name="query")
@bp.output(JobOut)
def get_job(job_id: int, query: dict[str, Any]) -> dict[str, Any]:
    """Status, progress, timestamps, error, and for a finished query its ranked results.
    ``wait=S`` answers when the job has finished or S seconds have passed (long polling)."""
    return wait_for_job(job_id, float(query["wait"]))[0]


def wait_for_job(job_id: int, wait: float) -> tuple[dict[str, Any], bool]:
    """The job (:func:`job_out`) once it has finished or ``wait`` seconds have passed (at most
    ``api_max_wait_s``), and whether it had finished. ``wait`` 0 is a plain read."""
    settings = fir_settings()
    wait = min(wait, settings.api_max_wait_s)
    if wait <= 0:  # a plain read: no bell
        with db() as session:
            job = services.get_job(session, job_id)
            return job_out(session, job), job.terminal
    bell = jobbell.hub(jobbell.bell_path(settings.resolved_home()))
    token = bell.token()  # before the first read: a job finishing after it rings anew
    with db() as session:
        job = services.get_job(session, job_id)
        if job.terminal:
            return job_out(session, job), True
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        poll = WAIT_DB_POLL_TRUSTED_S if bell.trusted else WAIT_DB_POLL_S
        rung = bell.wait(token, min(deadline, time.monotonic() + poll))
        token = bell.token()
        with db() as session:
            job = services.get_job(session, job_id)
            if job.terminal:
                out = job_out(session, job)
                # a worker rings just after its commit: a ring that lands while the job is read
                # was not missed (a read that beat it is not a lost ring)
                bell.heard(rung or bell.token() != token)
                return out, True
    with db() as session:
        job = services.get_job(session, job_id)
        return job_out(session, job), job.terminal


@bp.get("/jobs/<int:job_id>/results")
@bp.input(ResultsQuery, location="query", arg_name="query")
@bp.output(ResultPage)
def job_results(job_id: int, query: dict[str, Any]) -> dict[str, Any]:
    """A finished query's results, a page at a time."""
    with db() as session:
        job = services.get_job(session, job_id)
        if job.type != "query" or job.status != "succeeded":
            raise Conflict(f"job {job_id} has no results (type {job.type}, status {job.status})")
        result = services.get_query_results(session, job_id)
        hits = _hits(result, job.params) if result else []
    start, size = query["offset"], query["limit"]
    page = hits[start : start + size]
    return {"job_id": job_id, "total": len(hits), "offset": start, "results": page,
            "next_offset": start + size if start + size < len(hits) else None}


@bp.delete("/jobs/<int:job_id>")
@bp.output(JobOut)
def cancel_job(job_id: int) -> dict[str, Any]:
    """Cancel a queued or running job; a finished job answers 409."""
    with db() as session:
        job = services.get_job(session, job_id)
        if job.terminal:
            raise Conflict(f"job {job_id} already {job.status}")
        services.transition_job(session, job_id, "cancelled")
        return job_out(session, services.get_job(session, job_id))


@bp.get("/jobs")
@bp.input(JobsQuery, location="query", arg_name="query")
@bp.output(JobList)
def list_jobs(query: dict[str, Any]) -> dict[str, Any]:
    """Newest first, with filters; ``next_cursor`` pages on."""
    with db() as session:
        jobs = services.list_jobs(session, status=query["status"], job_type=query["type"],
                                  catalogue_id=query["catalogue_id"], limit=query["limit"] + 1,
                                  before_id=query["cursor"])
        more = len(jobs) > query["limit"]
        jobs = jobs[: query["limit"]]
        return {"jobs": [job_out(session, j, with_results=False) for j in jobs],
                "next_cursor": jobs[-1].id if more else None}
