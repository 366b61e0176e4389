"""Catalogues and their items."""

from __future__ import annotations

import hashlib
import json
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from apiflask import APIBlueprint
from flask import request, send_file
from werkzeug.datastructures import FileStorage

from api.app import enqueue, fir_settings
from api.auth import can_read
from api.routes.common import db, iso, item_out, job_url
from api.schemas import (
    CatalogueIn,
    CatalogueList,
    CatalogueOut,
    ItemOut,
    ItemPage,
    ItemPathsIn,
    ItemsCreatedOut,
    ItemsQuery,
    ItemUploadIn,
    JobAccepted,
    ReindexIn,
)
from shared.data.readers import Sample
from shared.db import listing, services
from shared.db.catalogues import ScannedItem
from shared.dedup.phash import phash
from shared.errors import InvalidInput, NotFound
from shared.imaging import load_image, probe_image
from shared.indexing import scan_samples
from worker.factory import TASK_INDEX

bp = APIBlueprint("catalogues", __name__, url_prefix="/api/v1", tag="Catalogues")
IMAGE_RESPONSE: dict[int | str, dict[str, Any]] = {
    200: {"description": "the image bytes", "content": {"image/*": {"schema": {"type": "string", "format": "binary"}}}}}

EXTENSIONS = {"JPEG": ".jpg", "PNG": ".png", "WEBP": ".webp", "BMP": ".bmp", "GIF": ".gif", "TIFF": ".tif"}
KEY_RE = re.compile(r"^[\w][\w .,@+=/-]*$")


def check_key(key: str) -> str:
    """Item keys are SKUs, ASINs or relative paths: no traversal, no absolute paths."""
    parts = key.split("/")
    if (not KEY_RE.match(key) or key.startswith("/") or any(p in ("", ".", "..") for p in parts)
            or len(key) > 500):
        raise InvalidInput(f"invalid item key {key!r}: use letters, digits and . , @ + = - _ / without '..'")
    return key


def inside(root: Path, candidate: str) -> Path:
    """``candidate`` resolved under ``root``; refuses anything that escapes it."""
    base = root.resolve()
    path = (base / candidate).resolve()
    if not path.is_relative_to(base):
        raise InvalidInput(f"path {candidate!r} is outside the catalogue's root")
    return path


def next_reindex(at: str) -> str:
    hour, minute = (int(x) for x in at.split(":"))
    now = datetime.now(UTC)
    run = now.replace(hour=hour, minute=minute, second=0, microsecond=0)
    if run <= now:
        run += timedelta(days=1)
    return run.isoformat()


def catalogue_out(session: Any, cat: Any, detail: bool = False) -> dict[str, Any]:
    out: dict[str, Any] = {
        "id": cat.id, "name": cat.name, "root": cat.root or cat.source_path or None,
        "source_kind": cat.source_kind, "default_metric": cat.default_metric, "default_k": cat.default_k,
        "created_at": iso(cat.created_at),
    }
    if detail:
        active = services.get_active_model_version(session)
        out["counts"] = {"by_status": services.count_items(session, cat.id),
                         "by_category": listing.count_by_category(session, cat.id)}
        out["active_model"] = ({"id": active.id, "model_id": active.model_id, "backbone": active.backbone,
                                "weights_source": active.weights_source, "labels": active.labels,
                                "metrics": {k: v for k, v in (active.metrics or {}).items() if k != "history"}}
                               if active else None)
        out["index_generation"] = services.get_index_generation(session, cat.id, active.id) if active else None
        last = listing.last_job(session, cat.id, ("index", "reindex"))
        out["last_reindex"] = ({"job_id": last.id, "status": last.status, "finished_at": iso(last.finished_at)}
                               if last else None)
        out["next_reindex"] = next_reindex(fir_settings().nightly_reindex_at) if (cat.source_path or "") else None
    return out


@bp.post("/catalogues")
@bp.input(CatalogueIn)
@bp.output(CatalogueOut, status_code=201)
def create_catalogue(json_data: dict[str, Any]) -> dict[str, Any]:
    """Create a catalogue, optionally over a server-side folder."""
    root = json_data.get("root")
    if root is not None and not Path(root).is_dir():
        raise InvalidInput(f"root {root!r} is not a folder on the server")
    with db() as session:
        cat = services.create_catalogue(
            session, json_data["name"].strip(), source_kind="folder",
            source_path=str(Path(root).resolve()) if root else "", root=str(Path(root).resolve()) if root else None,
            default_metric=json_data["default_metric"], default_k=json_data["default_k"])
        return catalogue_out(session, cat, detail=True)


@bp.get("/catalogues")
@bp.output(CatalogueList)
def list_catalogues() -> dict[str, Any]:
    with db() as session:
        return {"catalogues": [catalogue_out(session, c, detail=True) for c in services.list_catalogues(session)
                               if can_read(c.id)]}


@bp.get("/catalogues/<int:catalogue_id>")
@bp.output(CatalogueOut)
def get_catalogue(catalogue_id: int) -> dict[str, Any]:
    """Counts by category and status, active model, index generation, last and next re-index."""
    with db() as session:
        return catalogue_out(session, services.get_catalogue(session, catalogue_id), detail=True)


def _store_upload(catalogue_id: int, data: bytes, fmt: str) -> tuple[Path, str]:
    sha = hashlib.sha256(data).hexdigest()
    folder = fir_settings().resolved_home() / "images" / str(catalogue_id)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{sha}{EXTENSIONS.get(fmt, '.img')}"
    if not path.exists():
        tmp = path.with_suffix(path.suffix + ".part")
        tmp.write_bytes(data)
        tmp.replace(path)
    return path, sha


def read_upload(file: FileStorage) -> bytes:
    s = fir_settings()
    data = file.read(s.max_upload_bytes + 1)
    if len(data) > s.max_upload_bytes:
        from shared.errors import ImageTooLarge

        raise ImageTooLarge(file.filename or "<upload>", f"upload larger than the cap of {s.max_upload_bytes} bytes")
    return data


def _enqueue_index(catalogue_id: int) -> int:
    task_id = services.new_task_id()
    with db() as session:
        job, _ = services.create_job(session, "index", params={"catalogue_id": catalogue_id, "full": False},
                                     catalogue_id=catalogue_id, task_id=task_id)
    enqueue(TASK_INDEX, job.id, task_id)
    return job.id


@bp.post("/catalogues/<int:catalogue_id>/items")
@bp.input(ItemUploadIn, location="form_and_files", arg_name="form")
@bp.output(ItemsCreatedOut, status_code=201)
@bp.doc(description="Multipart upload of one image (`file`, optional `key`, `category`, `metadata` JSON). "
                    "A JSON body `{\"paths\": [...]}` of server-side paths under the catalogue's root is "
                    "accepted too (see the items-from-paths operation). Both create an index job.")
def add_items(catalogue_id: int, form: dict[str, Any]) -> tuple[dict[str, Any], int, dict[str, str]]:
    s = fir_settings()
    with db() as session:
        services.get_catalogue(session, catalogue_id)
    file: FileStorage = form["file"]
    data = read_upload(file)
    image = load_image(data, max_pixels=s.max_image_pixels)  # full decode: refuse bad data up front
    fmt = probe_image(data, max_pixels=s.max_image_pixels)[0]
    meta: dict[str, Any] = {}
    if form.get("metadata"):
        try:
            meta = json.loads(form["metadata"])
        except json.JSONDecodeError as exc:
            raise InvalidInput(f"metadata is not valid JSON: {exc}") from exc
        if not isinstance(meta, dict):
            raise InvalidInput("metadata must be a JSON object")
    key = check_key(form["key"]) if form.get("key") else None  # refused before anything is written
    path, sha = _store_upload(catalogue_id, data, fmt)
    key = key or f"upload/{sha[:16]}"
    meta = {**meta, "origin": "upload", "filename": file.filename or ""}
    with db() as session:
        result = services.upsert_items(session, catalogue_id, [ScannedItem(
            key=key, sha256=sha, location=str(path), width=image.width, height=image.height,
            size_bytes=len(data), given_category=form.get("category"), meta=meta,
            phash=phash(image))])
        items = [services.get_item(session, result.ids_by_key[key])]
        out_items = [item_out(i) for i in items]
    job_id = _enqueue_index(catalogue_id) if result.needs_embedding else None
    body = {"items": out_items, "job_id": job_id, "job_url": job_url(job_id) if job_id else None,
            "duplicates": 0 if result.needs_embedding else 1}
    return body, 201, ({"Location": job_url(job_id)} if job_id else {})


@bp.post("/catalogues/<int:catalogue_id>/items/paths")
@bp.input(ItemPathsIn)
@bp.output(ItemsCreatedOut, status_code=201)
def add_items_from_paths(catalogue_id: int, json_data: dict[str, Any]) -> tuple[dict[str, Any], int, dict[str, str]]:
    """Add server-side images by path, relative to the catalogue's root."""
    return _add_paths(catalogue_id, json_data)


def _add_paths(catalogue_id: int, json_data: dict[str, Any]) -> tuple[dict[str, Any], int, dict[str, str]]:
    s = fir_settings()
    with db() as session:
        cat = services.get_catalogue(session, catalogue_id)
    if not cat.root:
        raise InvalidInput("this catalogue has no root folder; upload files instead")
    root = Path(cat.root)
    samples = []
    for raw in json_data["paths"]:
        path = inside(root, raw)
        if not path.is_file():
            raise NotFound(f"{raw!r} is not a file under the catalogue's root")
        samples.append(Sample(key=check_key(path.relative_to(root.resolve()).as_posix()), path=path,
                              category=json_data.get("category")))
    good, bad = scan_samples(samples, s.max_image_pixels)
    if bad:
        raise InvalidInput("; ".join(f"{b.key}: {b.reason}" for b in bad[:5]))
    with db() as session:
        result = services.upsert_items(session, catalogue_id, good)
        out_items = [item_out(services.get_item(session, result.ids_by_key[g.key])) for g in good]
    job_id = _enqueue_index(catalogue_id) if result.needs_embedding else None
    body = {"items": out_items, "job_id": job_id, "job_url": job_url(job_id) if job_id else None,
            "duplicates": len(good) - len(result.needs_embedding)}
    return body, 201, ({"Location": job_url(job_id)} if job_id else {})


@bp.before_request
def _json_items_form() -> Any:
    """``POST .../items`` with a JSON body is the server-side-paths form of the same contract."""
    if (request.method == "POST" and request.endpoint == "catalogues.add_items" and request.is_json):
        from flask import jsonify

        from api.schemas import ItemPathsIn as Schema_

        errors = Schema_().validate(request.get_json(silent=True) or {})
        if errors:
            from api.errors import error_body

            return error_body("validation_error", f"the request is not valid: {errors}", 422)
        body, status, headers = _add_paths(request.view_args["catalogue_id"],  # type: ignore[index]
                                           Schema_().load(request.get_json()))
        from api.schemas import ItemsCreatedOut as Out

        resp = jsonify(Out().dump(body))
        resp.status_code = status
        resp.headers.update(headers)
        return resp
    return None


@bp.get("/catalogues/<int:catalogue_id>/items")
@bp.input(ItemsQuery, location="query", arg_name="query")
@bp.output(ItemPage)
def list_items(catalogue_id: int, query: dict[str, Any]) -> dict[str, Any]:
    """Items with filters; ``next_cursor`` pages on."""
    with db() as session:
        services.get_catalogue(session, catalogue_id)
        items = listing.list_items(session, catalogue_id, category=query["category"], status=query["status"],
                                   after_id=query["cursor"], limit=query["limit"] + 1)
        more = len(items) > query["limit"]
        items = items[: query["limit"]]
        return {"items": [item_out(i) for i in items], "next_cursor": items[-1].id if more else None}


@bp.get("/items/<int:item_id>")
@bp.output(ItemOut)
def get_item(item_id: int) -> dict[str, Any]:
    with db() as session:
        return item_out(services.get_item(session, item_id))


@bp.get("/items/<int:item_id>/image")
@bp.doc(responses=IMAGE_RESPONSE)
def item_image(item_id: int) -> Any:
    """The item's image bytes."""
    with db() as session:
        item = services.get_item(session, item_id)
    if not item.location or not Path(item.location).is_file():
        raise NotFound(f"the image of item {item_id} is not available")
    return send_file(Path(item.location), max_age=3600)


@bp.delete("/items/<int:item_id>")
@bp.output({}, status_code=204)
def delete_item(item_id: int) -> tuple[str, int]:
    """Remove an item from its catalogue (queries stop returning it)."""
    with db() as session:
        listing.remove_item(session, item_id)
    return "", 204


@bp.post("/catalogues/<int:catalogue_id>/reindex")
@bp.input(ReindexIn, arg_name="body")
@bp.output(JobAccepted, status_code=202)
def reindex(catalogue_id: int, body: dict[str, Any]) -> tuple[dict[str, Any], int, dict[str, str]]:
    """Re-index incrementally; ``{"full": true}`` re-embeds everything."""
    task_id = services.new_task_id()
    with db() as session:
        services.get_catalogue(session, catalogue_id)
        job, _ = services.create_job(session, "reindex", params={"catalogue_id": catalogue_id,
                                                                  "full": bool(body.get("full"))},
                                     catalogue_id=catalogue_id, task_id=task_id)
    enqueue(TASK_INDEX, job.id, task_id)
    return {"job_id": job.id}, 202, {"Location": job_url(job.id)}
