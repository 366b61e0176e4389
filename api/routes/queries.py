"""Query submission: 202 Accepted + Location, polled through /api/v1/jobs/<id>; or, with
``wait``, the finished query in the submit's own response (200)."""

from __future__ import annotations

import uuid
from typing import Any

from apiflask import APIBlueprint
from flask import Response, jsonify, request

from api.app import enqueue, fir_settings
from api.routes.catalogues import EXTENSIONS, read_upload
from api.routes.common import db, job_url, resolve_catalogue
from api.routes.jobs import wait_for_job
from api.schemas import JobAccepted, JobAnswered, QueryFormIn, QueryJsonIn
from shared.db import services
from shared.errors import InvalidInput
from shared.imaging import validate_image
from worker.factory import TASK_QUERY

bp = APIBlueprint("queries", __name__, url_prefix="/api/v1", tag="Queries")

MAX_BATCH = 64  # files in one batch query
MAX_BATCH_K = 1000


def _validate_category(params: dict[str, Any]) -> None:
    if params["routing"] == "label" and not params.get("category"):
        raise InvalidInput("routing 'label' needs the query's category")


Submitted = tuple[dict[str, Any], int, dict[str, str]] | Response


def submit(params: dict[str, Any], key: str | None, wait: float = 0.0) -> Submitted:
    task_id = services.new_task_id()
    with db() as session:
        job, created = services.create_job(session, "query", params=params, catalogue_id=params["catalogue_id"],
                                           idempotency_key=key, task_id=task_id)
    if created:
        enqueue(TASK_QUERY, job.id, task_id)
    return accepted(job.id, wait)


def accepted(job_id: int, wait: float) -> Submitted:
    """202 with the job's id; with ``wait``, 200 with the finished job if it finishes in time."""
    headers = {"Location": job_url(job_id)}
    if wait > 0:
        out, finished = wait_for_job(job_id, wait)
        if finished:
            resp = jsonify(JobAnswered().dump({**out, "job_id": job_id}))
            resp.headers.update(headers)
            return resp
    return {"job_id": job_id}, 202, headers


def _idempotency_key() -> str | None:
    key = request.headers.get("Idempotency-Key")
    if key is not None and not (1 <= len(key) <= 200):
        raise InvalidInput("Idempotency-Key must be 1 to 200 characters")
    return key


def _common(data: dict[str, Any]) -> dict[str, Any]:
    with db(write=False) as session:
        cat = resolve_catalogue(session, data["catalogue"])
    params = {"catalogue_id": cat.id, "k": data["k"], "metric": data["metric"], "routing": data["routing"],
              "category": data.get("category"), "threshold": data.get("threshold")}
    _validate_category(params)
    if data.get("duplicate_threshold") is not None:
        if params["metric"] != "cosine":
            raise InvalidInput("duplicate_threshold is a cosine similarity: use metric 'cosine'")
        params["duplicate_threshold"] = data["duplicate_threshold"]
    return params


@bp.post("/queries")
@bp.input(QueryFormIn, location="form_and_files", arg_name="form")
@bp.output(JobAccepted, status_code=202)
@bp.doc(description="Multipart `file` plus the query parameters; or a JSON body with `item_id` instead "
                    "of a file (see QueryJsonIn). An `Idempotency-Key` header makes a retried "
                    "submission return the same job. The batch form repeats `file` (up to 64): one "
                    "job answers every file, its results under `batch` in input order. With `wait`, "
                    "a query that finishes within it is answered in this response (200).",
        responses={200: {"description": "`wait` was given and the query finished in time: the job, "
                                        "results included",
                         "content": {"application/json": {"schema": JobAnswered}}},
                   202: "the query is queued; poll the job (Location)"})
def create_query(form: dict[str, Any]) -> Submitted:
    s = fir_settings()
    key = _idempotency_key()
    params = _common(form)
    if key is not None:
        with db(write=False) as session:
            known = services.get_job_by_idempotency_key(session, key)
        if known is not None:
            return accepted(known.id, form["wait"])
    files = request.files.getlist("file") or [form["file"]]
    if len(files) > MAX_BATCH:
        raise InvalidInput(f"a batch query takes at most {MAX_BATCH} files, got {len(files)}")
    if len(files) > 1 and params["k"] > MAX_BATCH_K:
        raise InvalidInput(f"k is at most {MAX_BATCH_K} in a batch query")
    # Every file is read and decoded (validate_image) before anything is written.
    blobs = []
    for f in files:
        data = read_upload(f)
        blobs.append((data, validate_image(data, max_pixels=s.max_image_pixels)))
    folder = s.resolved_home() / "uploads"
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for data, fmt in blobs:
        path = folder / f"{uuid.uuid4().hex}{EXTENSIONS.get(fmt, '.img')}"
        path.write_bytes(data)
        paths.append(str(path))
    if len(paths) == 1:
        params["upload"] = paths[0]
    else:
        params["uploads"] = paths  # the batch form: many files, one job
    return submit(params, key, form["wait"])


@bp.before_request
def _json_query() -> Any:
    """``POST /api/v1/queries`` with a JSON body queries by an existing item's id."""
    if request.method == "POST" and request.endpoint == "queries.create_query" and request.is_json:
        from api.errors import error_body

        schema = QueryJsonIn()
        errors = schema.validate(request.get_json(silent=True) or {})
        if errors:
            return error_body("validation_error", f"the request is not valid: {errors}", 422)
        data = schema.load(request.get_json())
        params = _common(data)
        with db() as session:
            item = services.get_item(session, data["item_id"])
        if item.catalogue_id != params["catalogue_id"]:
            raise InvalidInput(f"item {item.id} is not in catalogue {params['catalogue_id']}")
        params["item_id"] = item.id
        done = submit(params, _idempotency_key(), data["wait"])
        if isinstance(done, Response):
            return done
        body, status, headers = done
        resp = jsonify(body)
        resp.status_code = status
        resp.headers.update(headers)
        return resp
    return None
