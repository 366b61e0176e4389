"""Helpers shared by the routes: one database session per request, serialisation."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from typing import Any

from flask import has_request_context, request, url_for
from sqlalchemy.orm import Session

from api.app import fir_settings
from shared.db import services
from shared.db.session import session_scope
from shared.errors import NotFound

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


@contextmanager
def db(write: bool | None = None) -> Iterator[Session]:
    """One session for a unit of work inside a request.

    A request that may write (POST, PUT, PATCH, DELETE) begins its transaction with SQLite's
    write lock (``BEGIN IMMEDIATE``). A deferred transaction that reads first and writes later
    has to upgrade its lock, and SQLite answers an upgrade that meets another writer with
    SQLITE_BUSY at once, without waiting out the busy timeout; taking the lock at BEGIN waits
    in line instead. Reads never take it, nor does ``write=False`` (a read-only unit of work
    inside a writing request: it does not queue behind the workers' writes). PostgreSQL is
    unaffected.
    """
    writes = has_request_context() and request.method not in SAFE_METHODS if write is None else write
    with session_scope(fir_settings(), immediate=writes) as session:
        yield session


def iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def resolve_catalogue(session: Session, ref: str | int) -> Any:
    """A catalogue by id or by name."""
    text = str(ref).strip()
    if text.isdigit():
        try:
            return services.get_catalogue(session, int(text))
        except NotFound:
            pass
    try:
        return services.get_catalogue_by_name(session, text)
    except NotFound:
        raise NotFound(f"catalogue {text!r} not found") from None


def item_out(item: Any) -> dict[str, Any]:
    return {
        "id": item.id,
        "catalogue_id": item.catalogue_id,
        "key": item.external_key,
        "sha256": item.sha256,
        "category": item.given_category or item.predicted_category,
        "given_category": item.given_category,
        "predicted_category": item.predicted_category,
        "width": item.width,
        "height": item.height,
        "bytes": item.size_bytes,
        "status": item.status,
        "bad_reason": item.bad_reason,
        "metadata": item.meta,
        "image_url": url_for("catalogues.item_image", item_id=item.id),
        "first_seen": iso(item.first_seen_at),
        "last_seen": iso(item.last_seen_at),
    }


def job_url(job_id: int) -> str:
    return url_for("jobs.get_job", job_id=job_id)
