"""Catalogues and their items: create/get catalogues, upsert a scan, mark removed and bad items."""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import delete, func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from shared.db._common import CHUNK, check_choice, chunks, table_of
from shared.db.models import (
    CATALOGUE_SOURCES,
    METRICS,
    Catalogue,
    Embedding,
    Item,
    utcnow,
)
from shared.errors import Conflict, InvalidInput, NotFound

ITEMS = table_of(Item)

# ---------------------------------------------------------------------------------------------
# Catalogues


@dataclass(frozen=True)
class CatalogueInfo:
    id: int
    name: str
    source_kind: str
    source_path: str
    root: str | None
    default_metric: str
    default_k: int
    created_at: datetime
    updated_at: datetime


def _catalogue_info(row: Catalogue) -> CatalogueInfo:
    return CatalogueInfo(
        id=row.id,
        name=row.name,
        source_kind=row.source_kind,
        source_path=row.source_path,
        root=row.root,
        default_metric=row.default_metric,
        default_k=row.default_k,
        created_at=row.created_at,
        updated_at=row.updated_at,
    )


def create_catalogue(
    session: Session,
    name: str,
    *,
    source_kind: str,
    source_path: str,
    root: str | None = None,
    default_metric: str = "cosine",
    default_k: int = 10,
) -> CatalogueInfo:
    """Create a catalogue; :class:`Conflict` if the name is taken."""
    if not name.strip():
        raise InvalidInput("a catalogue needs a name")
    check_choice("source_kind", source_kind, CATALOGUE_SOURCES)
    check_choice("default_metric", default_metric, METRICS)
    if default_k < 1:
        raise InvalidInput(f"default_k must be positive, not {default_k}")
    if session.scalar(select(Catalogue.id).where(Catalogue.name == name)) is not None:
        raise Conflict(f"catalogue {name!r} already exists")
    row = Catalogue(
        name=name,
        source_kind=source_kind,
        source_path=source_path,
        root=root,
        default_metric=default_metric,
        default_k=default_k,
    )
    try:
        with session.begin_nested():
            session.add(row)
    except IntegrityError as exc:
        raise Conflict(f"catalogue {name!r} already exists") from exc
    return _catalogue_info(row)


def get_catalogue(session: Session, catalogue_id: int) -> CatalogueInfo:
    row = session.get(Catalogue, catalogue_id)
    if row is None:
        raise NotFound(f"catalogue {catalogue_id} not found")
    return _catalogue_info(row)


def get_catalogue_by_name(session: Session, name: str) -> CatalogueInfo:
    row = session.scalar(select(Catalogue).where(Catalogue.name == name))
    if row is None:
        raise NotFound(f"catalogue {name!r} not found")
    return _catalogue_info(row)


def get_or_create_catalogue(
    session: Session,
    name: str,
    *,
    source_kind: str,
    source_path: str,
    root: str | None = None,
    default_metric: str = "cosine",
    default_k: int = 10,
) -> tuple[CatalogueInfo, bool]:
    """The catalogue called ``name``, created with these fields if missing; (info, created)."""
    row = session.scalar(select(Catalogue).where(Catalogue.name == name))
    if row is not None:
        return _catalogue_info(row), False
    try:
        info = create_catalogue(
            session,
            name,
            source_kind=source_kind,
            source_path=source_path,
            root=root,
            default_metric=default_metric,
            default_k=default_k,
        )
    except Conflict:  # created meanwhile by another process
        return get_catalogue_by_name(session, name), False
    return info, True


def list_catalogues(session: Session) -> list[CatalogueInfo]:
    rows = session.scalars(select(Catalogue).order_by(Catalogue.name)).all()
    return [_catalogue_info(r) for r in rows]


def _require_catalogue(session: Session, catalogue_id: int) -> None:
    if session.scalar(select(Catalogue.id).where(Catalogue.id == catalogue_id)) is None:
        raise NotFound(f"catalogue {catalogue_id} not found")


# ---------------------------------------------------------------------------------------------
# Items


@dataclass(frozen=True)
class ScannedItem:
    """One good image found by a catalogue scan."""

    key: str  # SKU / ASIN / relative path: unique within the catalogue
    sha256: str
    location: str | None = None
    width: int | None = None
    height: int | None = None
    size_bytes: int | None = None
    given_category: str | None = None
    phash: str | None = None
    meta: dict[str, Any] | None = None


@dataclass(frozen=True)
class BadItem:
    """An entry a scan found but could not use (corrupt, too large, unreadable)."""

    key: str
    reason: str
    sha256: str | None = None
    size_bytes: int | None = None
    location: str | None = None


@dataclass
class UpsertResult:
    new: int = 0
    changed: int = 0  # same key, new content hash
    unchanged: int = 0  # same key, same hash, was active
    reactivated: int = 0  # same key, same hash, was removed or bad: active again
    # New, changed, and formerly bad items: they have no (valid) embedding. Sorted ids.
    needs_embedding: list[int] = field(default_factory=list)
    ids_by_key: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class ItemInfo:
    id: int
    catalogue_id: int
    external_key: str
    sha256: str | None
    phash: str | None
    given_category: str | None
    predicted_category: str | None
    width: int | None
    height: int | None
    size_bytes: int | None
    location: str | None
    meta: dict[str, Any] | None
    status: str
    bad_reason: str | None
    first_seen_at: datetime
    last_seen_at: datetime


def _item_info(row: Item) -> ItemInfo:
    return ItemInfo(
        id=row.id,
        catalogue_id=row.catalogue_id,
        external_key=row.external_key,
        sha256=row.sha256,
        phash=row.phash,
        given_category=row.given_category,
        predicted_category=row.predicted_category,
        width=row.width,
        height=row.height,
        size_bytes=row.size_bytes,
        location=row.location,
        meta=row.meta,
        status=row.status,
        bad_reason=row.bad_reason,
        first_seen_at=row.first_seen_at,
        last_seen_at=row.last_seen_at,
    )


_DESCRIPTIVE = ("location", "width", "height", "size_bytes", "given_category", "phash", "meta")


def _descriptive(item: ScannedItem) -> dict[str, Any]:
    return {
        "location": item.location,
        "width": item.width,
        "height": item.height,
        "size_bytes": item.size_bytes,
        "given_category": item.given_category,
        "phash": item.phash,
        "meta": item.meta,
    }


def _delete_embeddings_of(session: Session, item_ids: Sequence[int]) -> None:
    for chunk in chunks(item_ids):
        session.execute(delete(Embedding).where(Embedding.item_id.in_(chunk)))


def upsert_items(
    session: Session,
    catalogue_id: int,
    scanned: Sequence[ScannedItem],
    *,
    seen_at: datetime | None = None,
) -> UpsertResult:
    """Record a scan's good items, keyed by ``key`` and compared by content ``sha256``.

    New keys are inserted; a key whose hash changed is updated, its stale embeddings deleted and
    its predicted category cleared; a key seen before with the same hash only has its last-seen
    time (and any changed descriptive field) updated, and becomes active again if it was
    removed or bad. Keys absent from the scan are left alone: see :func:`mark_unseen_removed`.
    """
    _require_catalogue(session, catalogue_id)
    seen_at = seen_at or utcnow()
    by_key: dict[str, ScannedItem] = {}
    for item in scanned:
        if item.key in by_key:
            raise InvalidInput(f"key {item.key!r} appears twice in one scan")
        if len(item.sha256) != 64:
            raise InvalidInput(f"{item.key!r}: sha256 must be 64 hex digits")
        by_key[item.key] = item

    existing: dict[str, Any] = {}
    cols = (Item.external_key, Item.id, Item.sha256, Item.status) + tuple(
        getattr(Item, c) for c in _DESCRIPTIVE
    )
    for row in session.execute(select(*cols).where(Item.catalogue_id == catalogue_id)):
        existing[row.external_key] = row

    result = UpsertResult()
    new_rows: list[dict[str, Any]] = []
    changed_rows: list[dict[str, Any]] = []
    touched_rows: list[dict[str, Any]] = []  # same hash but a field or the status moved
    unchanged_ids: list[int] = []
    needs: list[int] = []
    for key, item in by_key.items():
        old = existing.get(key)
        fields = _descriptive(item)
        if old is None:
            new_rows.append(
                {
                    "catalogue_id": catalogue_id,
                    "external_key": key,
                    "sha256": item.sha256,
                    "status": "active",
                    "bad_reason": None,
                    "predicted_category": None,
                    "first_seen_at": seen_at,
                    "last_seen_at": seen_at,
                    **fields,
                }
            )
            continue
        result.ids_by_key[key] = old.id
        if old.sha256 != item.sha256:
            result.changed += 1
            needs.append(old.id)
            changed_rows.append(
                {
                    "id": old.id,
                    "sha256": item.sha256,
                    "status": "active",
                    "bad_reason": None,
                    "predicted_category": None,
                    "last_seen_at": seen_at,
                    **fields,
                }
            )
            continue
        moved = {c: fields[c] for c in _DESCRIPTIVE if getattr(old, c) != fields[c]}
        if old.status != "active":
            result.reactivated += 1
            if old.status == "bad":
                needs.append(old.id)
            moved.update(status="active", bad_reason=None)
        else:
            result.unchanged += 1
        if moved:
            touched_rows.append({"id": old.id, "last_seen_at": seen_at, **moved})
        else:
            unchanged_ids.append(old.id)

    for new_chunk in chunks(new_rows):
        for inserted in session.execute(
            ITEMS.insert().returning(Item.id, Item.external_key), list(new_chunk)
        ):
            result.ids_by_key[inserted.external_key] = inserted.id
            needs.append(inserted.id)
    result.new = len(new_rows)

    if changed_rows:
        _delete_embeddings_of(session, [r["id"] for r in changed_rows])
        _bulk_update_by_id(session, changed_rows)
    _bulk_update_by_id(session, touched_rows)
    for id_chunk in chunks(unchanged_ids):
        session.execute(update(ITEMS).where(ITEMS.c.id.in_(id_chunk)).values(last_seen_at=seen_at))
    result.needs_embedding = sorted(needs)
    return result


def _bulk_update_by_id(session: Session, rows: Sequence[dict[str, Any]]) -> None:
    """Per-row UPDATEs by primary key; rows with the same set of columns share one executemany."""
    groups: dict[tuple[str, ...], list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault(tuple(sorted(row)), []).append(row)
    for group in groups.values():
        for chunk in chunks(group):
            session.execute(update(Item), list(chunk))


def mark_unseen_removed(session: Session, catalogue_id: int, seen_keys: Collection[str]) -> int:
    """Mark the catalogue's items whose key a complete scan did not see as removed.

    ``seen_keys`` are all keys the scan found, good and bad. Embeddings are kept (an item that
    comes back unchanged needs none). Returns how many items were marked.
    """
    seen = seen_keys if isinstance(seen_keys, set | frozenset) else set(seen_keys)
    rows = session.execute(
        select(Item.id, Item.external_key).where(
            Item.catalogue_id == catalogue_id, Item.status != "removed"
        )
    ).all()
    gone = [r.id for r in rows if r.external_key not in seen]
    for chunk in chunks(gone):
        session.execute(update(ITEMS).where(ITEMS.c.id.in_(chunk)).values(status="removed"))
    return len(gone)


def record_bad_items(
    session: Session,
    catalogue_id: int,
    bad: Sequence[BadItem],
    *,
    seen_at: datetime | None = None,
) -> list[int]:
    """Record entries a scan could not use, with their reason; returns their item ids.

    A known key becomes ``bad`` (its embeddings, now stale, are deleted); an unknown key is
    inserted as ``bad``.
    """
    _require_catalogue(session, catalogue_id)
    seen_at = seen_at or utcnow()
    keys = [b.key for b in bad]
    existing: dict[str, int] = {}
    for chunk in chunks(keys):
        for row in session.execute(
            select(Item.external_key, Item.id).where(
                Item.catalogue_id == catalogue_id, Item.external_key.in_(chunk)
            )
        ):
            existing[row.external_key] = row.id
    ids: list[int] = []
    updates: list[dict[str, Any]] = []
    inserts: list[dict[str, Any]] = []
    for b in bad:
        values: dict[str, Any] = {
            "status": "bad",
            "bad_reason": b.reason,
            "last_seen_at": seen_at,
            "sha256": b.sha256,
            "size_bytes": b.size_bytes,
            "location": b.location,
        }
        if b.key in existing:
            updates.append({"id": existing[b.key], **values})
            ids.append(existing[b.key])
        else:
            inserts.append(
                {
                    "catalogue_id": catalogue_id,
                    "external_key": b.key,
                    "first_seen_at": seen_at,
                    **values,
                }
            )
    if updates:
        _delete_embeddings_of(session, [u["id"] for u in updates])
        _bulk_update_by_id(session, updates)
    for insert_chunk in chunks(inserts):
        ids.extend(session.scalars(ITEMS.insert().returning(Item.id), list(insert_chunk)).all())
    return ids


def set_predicted_categories(session: Session, categories: Mapping[int, str | None]) -> int:
    """Store the router's predicted category per item id; returns how many were written."""
    rows = [{"id": i, "predicted_category": c} for i, c in categories.items()]
    _bulk_update_by_id(session, rows)
    return len(rows)


def get_item(session: Session, item_id: int) -> ItemInfo:
    row = session.get(Item, item_id)
    if row is None:
        raise NotFound(f"item {item_id} not found")
    return _item_info(row)


def get_items(session: Session, item_ids: Iterable[int]) -> dict[int, ItemInfo]:
    """Items by id (missing ids are simply absent from the answer)."""
    ids = sorted(set(item_ids))
    out: dict[int, ItemInfo] = {}
    for chunk in chunks(ids, CHUNK):
        for row in session.scalars(select(Item).where(Item.id.in_(chunk))):
            out[row.id] = _item_info(row)
    return out


def get_item_by_key(session: Session, catalogue_id: int, key: str) -> ItemInfo:
    row = session.scalar(
        select(Item).where(Item.catalogue_id == catalogue_id, Item.external_key == key)
    )
    if row is None:
        raise NotFound(f"item {key!r} not found in catalogue {catalogue_id}")
    return _item_info(row)


def count_items(session: Session, catalogue_id: int) -> dict[str, int]:
    """How many items the catalogue has per status (every status present, zeros included)."""
    counts = {"active": 0, "removed": 0, "bad": 0}
    for status, n in session.execute(
        select(Item.status, func.count())
        .where(Item.catalogue_id == catalogue_id)
        .group_by(Item.status)
    ):
        counts[status] = int(n)
    return counts
