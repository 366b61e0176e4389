"""Read models for the API and housekeeping: item listings, counts, the last job of a kind,
removing an item."""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import delete, func, select, update
from sqlalchemy.orm import Session

from shared.db.catalogues import ItemInfo, _item_info
from shared.db.jobs import JobInfo, _info
from shared.db.models import Item, Job
from shared.db.vectors import bump_index_generation
from shared.db.versions import get_active_model_version
from shared.errors import NotFound


def list_items(session: Session, catalogue_id: int, *, category: str | None = None, status: str | None = None,
               after_id: int | None = None, limit: int = 50) -> list[ItemInfo]:
    """Items in id order after ``after_id`` (cursor pagination)."""
    stmt = select(Item).where(Item.catalogue_id == catalogue_id).order_by(Item.id).limit(limit)
    if category is not None:
        stmt = stmt.where(func.coalesce(Item.given_category, Item.predicted_category) == category)
    if status is not None:
        stmt = stmt.where(Item.status == status)
    if after_id is not None:
        stmt = stmt.where(Item.id > after_id)
    return [_item_info(row) for row in session.scalars(stmt)]


def count_by_category(session: Session, catalogue_id: int) -> dict[str, int]:
    """Active items per category (given, else predicted; ``uncategorised`` when neither)."""
    cat = func.coalesce(Item.given_category, Item.predicted_category)
    rows = session.execute(
        select(cat, func.count()).where(Item.catalogue_id == catalogue_id, Item.status == "active").group_by(cat)
    )
    return {str(c) if c else "uncategorised": int(n) for c, n in rows}


def uploaded_item_keys(session: Session, catalogue_id: int, upload_prefix: str) -> set[str]:
    """Keys of items whose image lives in FIR's own store (uploads), which a scan of the
    catalogue's source folder cannot see and must not mark removed."""
    rows = session.execute(select(Item.external_key).where(
        Item.catalogue_id == catalogue_id, Item.location.like(f"{upload_prefix}%")))
    return {r[0] for r in rows}


def last_job(session: Session, catalogue_id: int, types: Sequence[str]) -> JobInfo | None:
    row = session.scalar(select(Job).where(Job.catalogue_id == catalogue_id, Job.type.in_(types))
                         .order_by(Job.id.desc()).limit(1))
    return _info(row) if row is not None else None


def remove_item(session: Session, item_id: int) -> None:
    """Mark an item removed and bump the index generation so workers drop it."""
    row = session.get(Item, item_id)
    if row is None:
        raise NotFound(f"item {item_id} not found")
    session.execute(update(Item).where(Item.id == item_id).values(status="removed"))
    active = get_active_model_version(session)
    if active is not None:
        bump_index_generation(session, row.catalogue_id, active.id)


def delete_embeddings(session: Session, catalogue_id: int, model_version_id: int) -> int:
    """Drop a catalogue's vectors for one model version (a full re-embed follows)."""
    from shared.db.models import Embedding

    ids = select(Item.id).where(Item.catalogue_id == catalogue_id).scalar_subquery()
    result = session.execute(delete(Embedding).where(Embedding.model_version_id == model_version_id,
                                                     Embedding.item_id.in_(ids)))
    return int(result.rowcount or 0)  # type: ignore[attr-defined]
