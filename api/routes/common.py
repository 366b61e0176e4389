"""Helpers shared by the routes: one database session per request, serialisation."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from typing import Any

from flask import url_for
from sqlalchemy.orm import Session

from api.app import fir_settings
from shared.db import services
from shared.db.session import session_scope
from shared.errors import NotFound


@contextmanager
def db() -> Iterator[Session]:
    with session_scope(fir_settings()) as session:
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
