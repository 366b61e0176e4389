"""De-duplication: start a run (202 + job), review its groups, export them, decide; and check
one upload against the catalogue ("is this already in my catalogue?")."""

from __future__ import annotations

import hashlib
import uuid
from typing import Any

from apiflask import APIBlueprint
from flask import Response, url_for

from api.app import enqueue, fir_settings
from api.routes.catalogues import EXTENSIONS, read_upload
from api.routes.common import db, iso, job_url
from api.routes.queries import submit
from api.schemas import (
    CheckDuplicateIn,
    DedupDecisionIn,
    DedupDecisionOut,
    DedupExportQuery,
    DedupGroupOut,
    DedupGroupPage,
    DedupGroupsQuery,
    DedupIn,
    DedupRunList,
    DedupRunOut,
    DedupRunsQuery,
    JobAccepted,
)
from shared.db import dedup as store
from shared.db import listing, services
from shared.db.models import Item
from shared.dedup.detect import DEFAULT_THRESHOLD
from shared.dedup.export import export_csv, export_json, group_records, run_record
from shared.dedup.run import DedupRequest
from shared.errors import Conflict, UnknownCategory
from shared.imaging import validate_image
from worker.factory import TASK_DEDUP

bp = APIBlueprint("dedup", __name__, url_prefix="/api/v1", tag="Dedup")


def _with_urls(group: dict[str, Any]) -> dict[str, Any]:
    for m in group["members"]:
        m["image_url"] = url_for("catalogues.item_image", item_id=m["item_id"])
    return group


def _run_out(session: Any, run: store.DedupRunInfo) -> dict[str, Any]:
    out = run_record(session, run)
    out["groups_url"] = url_for("dedup.list_groups", run_id=run.id)
    out["export_url"] = url_for("dedup.export_run", run_id=run.id, format="csv")
    return out


@bp.post("/catalogues/<int:catalogue_id>/dedup")
@bp.input(DedupIn, arg_name="body")
@bp.output(JobAccepted, status_code=202)
@bp.doc(description="Find exact (same content hash) and near-duplicate (feature cosine >= threshold, within "
                    "each category) groups in the catalogue, with the active model's vectors. Over the whole "
                    "catalogue, one `category`, or `only_new` items against the rest. Poll the job; its "
                    "result names the `dedup_run_id` whose groups page through `/dedup-runs/<id>/groups`.")
def start_dedup(catalogue_id: int, body: dict[str, Any]) -> tuple[dict[str, Any], int, dict[str, str]]:
    since = body.get("since")
    request = DedupRequest.from_params({**body, "since": since.isoformat() if since is not None else None})
    task_id = services.new_task_id()
    with db() as session:
        services.get_catalogue(session, catalogue_id)
        active = services.get_active_model_version(session)
        if active is None:
            raise Conflict("no active model version: train one and activate it (`fir models activate`)")
        if request.category is not None and request.category not in listing.count_by_category(session, catalogue_id):
            raise UnknownCategory(f"catalogue {catalogue_id} has no active items in category {request.category!r}")
        job, _ = services.create_job(session, "dedup", params={"catalogue_id": catalogue_id, **request.as_params()},
                                     catalogue_id=catalogue_id, model_version_id=active.id, task_id=task_id)
    enqueue(TASK_DEDUP, job.id, task_id)
    return {"job_id": job.id}, 202, {"Location": job_url(job.id)}


@bp.get("/catalogues/<int:catalogue_id>/dedup-runs")
@bp.input(DedupRunsQuery, location="query", arg_name="query")
@bp.output(DedupRunList)
def list_runs(catalogue_id: int, query: dict[str, Any]) -> dict[str, Any]:
    """The catalogue's dedup runs, newest first."""
    with db() as session:
        services.get_catalogue(session, catalogue_id)
        runs = store.list_dedup_runs(session, catalogue_id, limit=query["limit"] + 1, before_id=query["cursor"])
        more = len(runs) > query["limit"]
        runs = runs[: query["limit"]]
        return {"runs": [_run_out(session, r) for r in runs], "next_cursor": runs[-1].id if more else None}


@bp.get("/dedup-runs/<int:run_id>")
@bp.output(DedupRunOut)
def get_run(run_id: int) -> dict[str, Any]:
    """A run: its parameters, statistics and group counts."""
    with db() as session:
        return _run_out(session, store.get_dedup_run(session, run_id))


@bp.get("/dedup-runs/<int:run_id>/groups")
@bp.input(DedupGroupsQuery, location="query", arg_name="query")
@bp.output(DedupGroupPage)
def list_groups(run_id: int, query: dict[str, Any]) -> dict[str, Any]:
    """A page of the run's groups, largest first, each with its members' evidence, the suggested
    item to keep, any decision, and whether it is new since the previous run. Groups a reviewer
    marked not-a-duplicate before the run are hidden unless ``include_dismissed``."""
    with db() as session:
        groups = store.page_dedup_groups(session, run_id, after_id=query["cursor"], limit=query["limit"] + 1,
                                         include_dismissed=query["include_dismissed"], kind=query["kind"],
                                         only_new=query["only_new"])
        more = len(groups) > query["limit"]
        groups = groups[: query["limit"]]
        records = [_with_urls(g) for g in group_records(session, groups)]
    return {"run_id": run_id, "groups": records, "next_cursor": groups[-1].id if more else None}


@bp.get("/dedup-runs/<int:run_id>/export")
@bp.input(DedupExportQuery, location="query", arg_name="query")
@bp.doc(responses={200: "the run as CSV (one row per member) or JSON (run and groups)"})
def export_run(run_id: int, query: dict[str, Any]) -> Response:
    """The whole run as a CSV or JSON file."""
    with db() as session:
        if query["format"] == "csv":
            body, mime = export_csv(session, run_id, include_dismissed=query["include_dismissed"]), "text/csv"
        else:
            body, mime = export_json(session, run_id, include_dismissed=query["include_dismissed"]), "application/json"
    resp = Response(body, mimetype=mime)
    resp.headers["Content-Disposition"] = f'attachment; filename="dedup-run-{run_id}.{query["format"]}"'
    return resp


@bp.get("/dedup-groups/<int:group_id>")
@bp.output(DedupGroupOut)
def get_group(group_id: int) -> dict[str, Any]:
    with db() as session:
        return _with_urls(group_records(session, [store.get_dedup_group(session, group_id)])[0])


@bp.post("/dedup-groups/<int:group_id>/decision")
@bp.input(DedupDecisionIn, arg_name="body")
@bp.output(DedupDecisionOut)
@bp.doc(description="`confirmed`, `not_duplicate`, or `keep_item` with the `item_id` to keep (a member). "
                    "Decisions follow the group into later runs by its fingerprint (members and their "
                    "content): a group marked not_duplicate is not brought back unless a member changes.")
def decide(group_id: int, body: dict[str, Any]) -> dict[str, Any]:
    with db() as session:
        decision = store.decide_dedup_group(session, group_id, body["decision"], decided_by=body["decided_by"],
                                            kept_item_id=body["item_id"], note=body["note"])
    return {"group_id": group_id, "fingerprint": decision.fingerprint, "decision": decision.decision,
            "kept_item_id": decision.kept_item_id, "decided_by": decision.decided_by, "note": decision.note,
            "decided_at": iso(decision.decided_at)}


@bp.post("/catalogues/<int:catalogue_id>/check-duplicate")
@bp.input(CheckDuplicateIn, location="form_and_files", arg_name="form")
@bp.output(JobAccepted, status_code=202)
@bp.doc(description="Is this photo already in my catalogue? A query job (polled like any query) whose "
                    "results flag `is_duplicate` (cosine >= `threshold`, or the same bytes as an item), "
                    "with a `duplicate` summary on the finished job.")
def check_duplicate(catalogue_id: int, form: dict[str, Any]) -> tuple[dict[str, Any], int, dict[str, str]]:
    from sqlalchemy import select

    s = fir_settings()
    with db() as session:
        services.get_catalogue(session, catalogue_id)
    data = read_upload(form["file"])
    fmt = validate_image(data, max_pixels=s.max_image_pixels)  # refuse bad images before anything is written
    sha = hashlib.sha256(data).hexdigest()
    with db() as session:
        if form.get("category") and form["category"] not in listing.count_by_category(session, catalogue_id):
            raise UnknownCategory(f"catalogue {catalogue_id} has no active items in category {form['category']!r}")
        exact = sorted(session.scalars(select(Item.id).where(
            Item.catalogue_id == catalogue_id, Item.sha256 == sha, Item.status == "active")))
    folder = s.resolved_home() / "uploads"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{uuid.uuid4().hex}{EXTENSIONS.get(fmt, '.img')}"
    path.write_bytes(data)
    threshold = form["threshold"] if form.get("threshold") is not None else DEFAULT_THRESHOLD
    params = {"catalogue_id": catalogue_id, "k": form["k"], "metric": "cosine",
              "routing": "label" if form.get("category") else "none", "category": form.get("category"),
              "threshold": None, "duplicate_threshold": threshold, "exact_item_ids": exact,
              "upload": str(path)}
    return submit(params, None)
