"""Catalogues and items: create/get, scans upserted by key and content hash."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime, timedelta

import numpy as np
import pytest
from sqlalchemy.orm import Session

from shared.db import services as db
from shared.errors import Conflict, InvalidInput, NotFound

pytestmark = pytest.mark.integration


def sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def scan(*pairs: tuple[str, str], category: str | None = "dress") -> list[db.ScannedItem]:
    return [
        db.ScannedItem(
            key=key,
            sha256=sha(content),
            location=f"store/{sha(content)}.jpg",
            width=64,
            height=48,
            size_bytes=1234,
            given_category=category,
            meta={"source": "test"},
        )
        for key, content in pairs
    ]


@pytest.fixture
def catalogue_id(db_session: Session) -> int:
    return db.create_catalogue(
        db_session, "shop", source_kind="folder", source_path="/data/shop", root="/data"
    ).id


def test_create_and_get_catalogue(db_session: Session) -> None:
    info = db.create_catalogue(
        db_session,
        "fashion",
        source_kind="manifest",
        source_path="/m.csv",
        default_metric="euclidean",
        default_k=25,
    )
    assert db.get_catalogue(db_session, info.id) == info
    assert db.get_catalogue_by_name(db_session, "fashion").id == info.id
    assert info.default_metric == "euclidean" and info.default_k == 25
    assert info.created_at.tzinfo is not None
    with pytest.raises(Conflict):
        db.create_catalogue(db_session, "fashion", source_kind="folder", source_path="/x")
    same, created = db.get_or_create_catalogue(
        db_session, "fashion", source_kind="folder", source_path="/x"
    )
    assert (same.id, created) == (info.id, False)
    other, created = db.get_or_create_catalogue(
        db_session, "other", source_kind="folder", source_path="/o"
    )
    assert created and other.id != info.id
    assert [c.name for c in db.list_catalogues(db_session)] == ["fashion", "other"]


def test_catalogue_errors(db_session: Session) -> None:
    with pytest.raises(NotFound):
        db.get_catalogue(db_session, 123456)
    with pytest.raises(NotFound):
        db.get_catalogue_by_name(db_session, "nope")
    with pytest.raises(InvalidInput):
        db.create_catalogue(db_session, "x", source_kind="ftp", source_path="/x")
    with pytest.raises(InvalidInput):
        db.create_catalogue(
            db_session, "x", source_kind="folder", source_path="/x", default_metric="l1"
        )


def test_first_scan_inserts_everything(db_session: Session, catalogue_id: int) -> None:
    res = db.upsert_items(db_session, catalogue_id, scan(("a.jpg", "A"), ("b.jpg", "B")))
    assert (res.new, res.changed, res.unchanged, res.reactivated) == (2, 0, 0, 0)
    assert sorted(res.ids_by_key) == ["a.jpg", "b.jpg"]
    assert res.needs_embedding == sorted(res.ids_by_key.values())
    item = db.get_item(db_session, res.ids_by_key["a.jpg"])
    assert item.sha256 == sha("A") and item.status == "active"
    assert item.width == 64 and item.meta == {"source": "test"}
    assert db.get_item_by_key(db_session, catalogue_id, "b.jpg").id == res.ids_by_key["b.jpg"]
    assert db.count_items(db_session, catalogue_id) == {"active": 2, "removed": 0, "bad": 0}


def test_second_identical_scan_finds_nothing_new(db_session: Session, catalogue_id: int) -> None:
    t0 = datetime(2026, 1, 1, tzinfo=UTC)
    first = db.upsert_items(
        db_session, catalogue_id, scan(("a.jpg", "A"), ("b.jpg", "B")), seen_at=t0
    )
    t1 = t0 + timedelta(days=1)
    again = db.upsert_items(
        db_session, catalogue_id, scan(("a.jpg", "A"), ("b.jpg", "B")), seen_at=t1
    )
    assert (again.new, again.changed, again.unchanged, again.reactivated) == (0, 0, 2, 0)
    assert again.needs_embedding == []
    assert again.ids_by_key == first.ids_by_key
    item = db.get_item(db_session, first.ids_by_key["a.jpg"])
    assert item.first_seen_at == t0 and item.last_seen_at == t1


def test_changed_hash_needs_embedding_and_drops_stale_vectors(
    db_session: Session, catalogue_id: int
) -> None:
    first = db.upsert_items(db_session, catalogue_id, scan(("a.jpg", "A"), ("b.jpg", "B")))
    mv = _model_version(db_session)
    ids = [first.ids_by_key["a.jpg"], first.ids_by_key["b.jpg"]]
    db.write_embeddings(db_session, mv, ids, np.ones((2, 4), dtype=np.float32))
    db.set_predicted_categories(db_session, {ids[0]: "shirt"})

    res = db.upsert_items(db_session, catalogue_id, scan(("a.jpg", "A2"), ("b.jpg", "B")))
    assert (res.new, res.changed, res.unchanged) == (0, 1, 1)
    assert res.needs_embedding == [ids[0]]
    changed = db.get_item(db_session, ids[0])
    assert changed.sha256 == sha("A2")
    assert changed.predicted_category is None  # the router's guess was about the old image
    assert db.items_missing_embeddings(db_session, catalogue_id, mv) == [ids[0]]


def test_removed_items_and_their_return(db_session: Session, catalogue_id: int) -> None:
    first = db.upsert_items(
        db_session, catalogue_id, scan(("a.jpg", "A"), ("b.jpg", "B"), ("c.jpg", "C"))
    )
    second = scan(("a.jpg", "A"), ("d.jpg", "D"))
    res = db.upsert_items(db_session, catalogue_id, second)
    assert (res.new, res.changed, res.unchanged) == (1, 0, 1)
    removed = db.mark_unseen_removed(db_session, catalogue_id, {s.key for s in second})
    assert removed == 2
    assert db.get_item(db_session, first.ids_by_key["b.jpg"]).status == "removed"
    assert db.count_items(db_session, catalogue_id) == {"active": 2, "removed": 2, "bad": 0}
    # Marking again changes nothing.
    assert db.mark_unseen_removed(db_session, catalogue_id, {s.key for s in second}) == 0

    back = db.upsert_items(db_session, catalogue_id, scan(("b.jpg", "B")))
    assert (back.new, back.changed, back.unchanged, back.reactivated) == (0, 0, 0, 1)
    assert back.needs_embedding == []  # same bytes: its vectors were kept
    assert db.get_item(db_session, first.ids_by_key["b.jpg"]).status == "active"


def test_bad_items_are_recorded_with_their_reason(db_session: Session, catalogue_id: int) -> None:
    first = db.upsert_items(db_session, catalogue_id, scan(("a.jpg", "A")))
    ids = db.record_bad_items(
        db_session,
        catalogue_id,
        [
            db.BadItem(key="broken.jpg", reason="truncated JPEG", size_bytes=10),
            db.BadItem(key="a.jpg", reason="decompression bomb", sha256=sha("A-bomb")),
        ],
    )
    assert len(ids) == 2 and first.ids_by_key["a.jpg"] in ids
    a = db.get_item(db_session, first.ids_by_key["a.jpg"])
    assert (a.status, a.bad_reason) == ("bad", "decompression bomb")
    broken = db.get_item_by_key(db_session, catalogue_id, "broken.jpg")
    assert (broken.status, broken.bad_reason, broken.sha256) == ("bad", "truncated JPEG", None)
    assert db.count_items(db_session, catalogue_id) == {"active": 0, "removed": 0, "bad": 2}

    # Fixed later: a good scan of the same key makes it active again and due for embedding.
    res = db.upsert_items(db_session, catalogue_id, scan(("broken.jpg", "fixed")))
    assert res.changed == 1 and res.needs_embedding == [broken.id]
    fixed = db.get_item(db_session, broken.id)
    assert (fixed.status, fixed.bad_reason) == ("active", None)


def test_same_bytes_under_two_keys_are_two_items(db_session: Session, catalogue_id: int) -> None:
    res = db.upsert_items(db_session, catalogue_id, scan(("a.jpg", "X"), ("copy-of-a.jpg", "X")))
    assert res.new == 2
    assert len(set(res.ids_by_key.values())) == 2


def test_scan_input_is_validated(db_session: Session, catalogue_id: int) -> None:
    with pytest.raises(InvalidInput):
        db.upsert_items(db_session, catalogue_id, scan(("a.jpg", "A"), ("a.jpg", "B")))
    with pytest.raises(InvalidInput):
        db.upsert_items(db_session, catalogue_id, [db.ScannedItem(key="a", sha256="short")])
    with pytest.raises(NotFound):
        db.upsert_items(db_session, 987654, scan(("a.jpg", "A")))


def test_descriptive_changes_are_stored_without_reembedding(
    db_session: Session, catalogue_id: int
) -> None:
    first = db.upsert_items(db_session, catalogue_id, scan(("a.jpg", "A"), category="dress"))
    res = db.upsert_items(db_session, catalogue_id, scan(("a.jpg", "A"), category="shirt"))
    assert res.unchanged == 1 and res.needs_embedding == []
    assert db.get_item(db_session, first.ids_by_key["a.jpg"]).given_category == "shirt"


def test_large_scan_in_chunks(db_session: Session, catalogue_id: int) -> None:
    items = scan(*((f"{i:05d}.jpg", str(i)) for i in range(2500)))
    res = db.upsert_items(db_session, catalogue_id, items)
    assert res.new == 2500 and len(res.needs_embedding) == 2500
    again = db.upsert_items(db_session, catalogue_id, items)
    assert again.unchanged == 2500 and again.needs_embedding == []
    keys = {s.key for s in items[:1000]}
    assert db.mark_unseen_removed(db_session, catalogue_id, keys) == 1500
    got = db.get_items(db_session, list(res.ids_by_key.values())[:1500])
    assert len(got) == 1500


def _model_version(session: Session) -> int:
    digest = sha("model")
    return db.register_model_version(
        session,
        backbone="resnet50",
        weights_source="imagenet",
        labels=["dress", "shirt"],
        model_id=digest[:16],
        checkpoint_path="/m.pt",
        checkpoint_sha256=digest,
    ).id
