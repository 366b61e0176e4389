"""Database-level guarantees: constraints hold even for code that bypasses the services."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime, timedelta, timezone

import pytest
from sqlalchemy import delete, func, select, text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from shared.db.models import Catalogue, Item, Job, ModelVersion

pytestmark = pytest.mark.integration


def _version(n: int, state: str) -> ModelVersion:
    digest = hashlib.sha256(f"model {n}".encode()).hexdigest()
    return ModelVersion(
        model_id=digest[:16],
        backbone="resnet50",
        weights_source="imagenet",
        checkpoint_path=f"/models/{n}.pt",
        checkpoint_sha256=digest,
        labels=["dress", "shirt", "toptee"],
        state=state,
    )


def test_two_active_versions_are_refused_by_the_database(db_session: Session) -> None:
    db_session.add(_version(1, "active"))
    db_session.flush()
    with pytest.raises(IntegrityError), db_session.begin_nested():
        db_session.add(_version(2, "active"))
    # Any number of non-active versions is fine.
    db_session.add_all([_version(3, "ready"), _version(4, "ready"), _version(5, "retired")])
    db_session.flush()
    active = db_session.scalars(select(ModelVersion).where(ModelVersion.state == "active"))
    assert len(active.all()) == 1


def test_two_active_rows_inserted_with_raw_sql_are_refused(db_session: Session) -> None:
    insert = text(
        "INSERT INTO model_versions (model_id, backbone, weights_source, checkpoint_path,"
        " checkpoint_sha256, labels, state, created_at, updated_at)"
        " VALUES (:m, 'resnet50', 'none', '/m.pt', :sha, '[]', 'active',"
        " CURRENT_TIMESTAMP, CURRENT_TIMESTAMP)"
    )
    sha1 = hashlib.sha256(b"a").hexdigest()
    sha2 = hashlib.sha256(b"b").hexdigest()
    db_session.execute(insert, {"m": sha1[:16], "sha": sha1})
    with pytest.raises(IntegrityError), db_session.begin_nested():
        db_session.execute(insert, {"m": sha2[:16], "sha": sha2})


def test_check_constraints_refuse_unknown_states(db_session: Session) -> None:
    with pytest.raises(IntegrityError), db_session.begin_nested():
        db_session.add(_version(1, "bogus"))
    with pytest.raises(IntegrityError), db_session.begin_nested():
        db_session.add(Job(type="query", status="exploded"))
    with pytest.raises(IntegrityError), db_session.begin_nested():
        db_session.add(Job(type="unknown-type", status="queued"))


def test_ready_version_needs_a_checkpoint(db_session: Session) -> None:
    with pytest.raises(IntegrityError), db_session.begin_nested():
        db_session.add(
            ModelVersion(backbone="resnet50", weights_source="none", labels=[], state="ready")
        )
    db_session.add(
        ModelVersion(backbone="resnet50", weights_source="none", labels=[], state="training")
    )
    db_session.flush()


def test_foreign_keys_are_enforced(db_session: Session) -> None:
    with pytest.raises(IntegrityError), db_session.begin_nested():
        db_session.add(Item(catalogue_id=999_999, external_key="x", sha256="0" * 64))


def test_item_key_is_unique_within_a_catalogue(db_session: Session) -> None:
    a = Catalogue(name="a", source_kind="folder", source_path="/a")
    b = Catalogue(name="b", source_kind="folder", source_path="/b")
    db_session.add_all([a, b])
    db_session.flush()
    db_session.add_all(
        [
            Item(catalogue_id=a.id, external_key="k", sha256="1" * 64),
            Item(catalogue_id=b.id, external_key="k", sha256="1" * 64),
            # Same bytes under another key: allowed (that is what exact dedup reports).
            Item(catalogue_id=a.id, external_key="k2", sha256="1" * 64),
        ]
    )
    db_session.flush()
    with pytest.raises(IntegrityError), db_session.begin_nested():
        db_session.add(Item(catalogue_id=a.id, external_key="k", sha256="2" * 64))


def test_timestamps_come_back_aware_and_utc(db_session: Session) -> None:
    paris = timezone(timedelta(hours=2))
    when = datetime(2026, 6, 1, 14, 30, 0, 123456, tzinfo=paris)
    cat = Catalogue(name="t", source_kind="folder", source_path="/t")
    db_session.add(cat)
    db_session.flush()
    item = Item(
        catalogue_id=cat.id,
        external_key="k",
        sha256="3" * 64,
        first_seen_at=when,
        last_seen_at=when,
    )
    db_session.add(item)
    db_session.flush()
    db_session.expire_all()
    got = db_session.scalars(select(Item.first_seen_at).where(Item.id == item.id)).one()
    assert got.tzinfo is not None
    assert got.utcoffset() == timedelta(0)
    assert got == when
    assert got == datetime(2026, 6, 1, 12, 30, 0, 123456, tzinfo=UTC)
    assert cat.created_at.tzinfo is not None


def test_naive_datetimes_are_refused(db_session: Session) -> None:
    cat = Catalogue(name="n", source_kind="folder", source_path="/n")
    cat.created_at = datetime(2026, 1, 1)  # naive
    db_session.add(cat)
    with pytest.raises(Exception, match="naive"):
        db_session.flush()


def test_deleting_a_catalogue_cascades(db_session: Session) -> None:
    from shared.db import services as db

    cat = db.create_catalogue(db_session, "gone", source_kind="folder", source_path="/g").id
    res = db.upsert_items(
        db_session,
        cat,
        [db.ScannedItem(key=k, sha256=hashlib.sha256(k.encode()).hexdigest()) for k in "ab"],
    )
    a, b = res.ids_by_key["a"], res.ids_by_key["b"]
    mv = db.register_model_version(
        db_session, backbone="r", weights_source="w", labels=["x"], **_checkpoint("cascade")
    ).id
    import numpy as np

    db.write_embeddings(db_session, mv, [a, b], np.ones((2, 2)))
    db.bump_index_generation(db_session, cat, mv)
    job, _ = db.create_job(db_session, "query", catalogue_id=cat)
    db.write_query_results(
        db_session,
        job.id,
        item_ids=[a],
        scores=[1.0],
        model_version_id=mv,
        catalogue_id=cat,
        metric="cosine",
        k=1,
    )
    run = db.create_dedup_run(db_session, cat, job_id=job.id)
    _, fingerprint = db.add_dedup_group(
        db_session,
        run,
        kind="exact",
        representative_item_id=a,
        members=[db.MemberEvidence(a, True), db.MemberEvidence(b, True)],
    )
    db.record_dedup_decision(
        db_session, cat, fingerprint, "keep_item", kept_item_id=a, decided_by="me"
    )
    db_session.execute(delete(Catalogue).where(Catalogue.id == cat))
    db_session.flush()
    assert db_session.scalar(select(func.count()).select_from(Item)) == 0
    assert db.get_job(db_session, job.id).catalogue_id is None  # jobs stay, unlinked


def _checkpoint(name: str) -> dict[str, str]:
    digest = hashlib.sha256(name.encode()).hexdigest()
    return {"model_id": digest[:16], "checkpoint_path": f"/{name}.pt", "checkpoint_sha256": digest}
