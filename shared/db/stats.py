"""Counts for operators (Prometheus gauges, ``fir status``): a few GROUP BY reads, each one
query, cheap enough to run on every scrape."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from shared.db.models import Catalogue, Embedding, Item, Job


@dataclass(frozen=True)
class CatalogueSize:
    catalogue_id: int
    name: str
    items_by_status: dict[str, int]
    indexed: int  # active items with a vector for the model version asked about


def job_counts(session: Session) -> dict[tuple[str, str], int]:
    """Jobs per (type, status)."""
    rows = session.execute(select(Job.type, Job.status, func.count()).group_by(Job.type, Job.status))
    return {(str(t), str(s)): int(n) for t, s, n in rows}


def queue_depth(session: Session) -> dict[str, int]:
    """Jobs waiting in the queue (status ``queued``) per type."""
    rows = session.execute(select(Job.type, func.count()).where(Job.status == "queued").group_by(Job.type))
    return {str(t): int(n) for t, n in rows}


def catalogue_sizes(session: Session, model_version_id: int | None) -> list[CatalogueSize]:
    """Every catalogue's items by status and its index size (active items with a vector for
    ``model_version_id``; 0 without one)."""
    cats = {int(i): str(n) for i, n in session.execute(select(Catalogue.id, Catalogue.name))}
    by_status: dict[int, dict[str, int]] = {c: {} for c in cats}
    for cat_id, status, n in session.execute(
        select(Item.catalogue_id, Item.status, func.count()).group_by(Item.catalogue_id, Item.status)
    ):
        by_status.setdefault(int(cat_id), {})[str(status)] = int(n)
    indexed: dict[int, int] = {}
    if model_version_id is not None:
        rows = session.execute(
            select(Item.catalogue_id, func.count())
            .select_from(Embedding)
            .join(Item, Item.id == Embedding.item_id)
            .where(Embedding.model_version_id == model_version_id, Item.status == "active")
            .group_by(Item.catalogue_id)
        )
        indexed = {int(c): int(n) for c, n in rows}
    return [CatalogueSize(c, name, by_status.get(c, {}), indexed.get(c, 0)) for c, name in sorted(cats.items())]


def last_queried(session: Session) -> dict[int, datetime]:
    """When each catalogue last got a query (the newest query job's creation), for catalogues
    that ever got one."""
    rows = session.execute(select(Job.catalogue_id, func.max(Job.created_at))
                           .where(Job.type == "query", Job.catalogue_id.is_not(None))
                           .group_by(Job.catalogue_id))
    return {int(c): t for c, t in rows if c is not None and t is not None}
