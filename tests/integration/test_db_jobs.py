"""Jobs: idempotent creation, the status state machine, progress; query results."""

from __future__ import annotations

import hashlib
import itertools

import pytest
from sqlalchemy.orm import Session

from shared.db import services as db
from shared.db.models import JOB_STATUSES
from shared.errors import Conflict, InvalidInput, InvalidTransition, NotFound

pytestmark = pytest.mark.integration

VALID = {
    ("queued", "running"),
    ("queued", "cancelled"),
    ("queued", "failed"),
    ("running", "succeeded"),
    ("running", "failed"),
    ("running", "cancelled"),
    ("running", "queued"),
}


def job_in(session: Session, status: str) -> int:
    """A job brought to ``status`` along valid edges."""
    job, _ = db.create_job(session, "index", params={"scan": True})
    path = {
        "queued": [],
        "running": ["running"],
        "succeeded": ["running", "succeeded"],
        "failed": ["running", "failed"],
        "cancelled": ["cancelled"],
    }[status]
    for step in path:
        db.transition_job(session, job.id, step)
    return job.id


def test_create_job(db_session: Session) -> None:
    cat = db.create_catalogue(db_session, "c", source_kind="folder", source_path="/c").id
    job, created = db.create_job(
        db_session, "query", params={"k": 10, "metric": "cosine"}, catalogue_id=cat
    )
    assert created and job.status == "queued" and job.type == "query"
    assert job.params == {"k": 10, "metric": "cosine"} and job.catalogue_id == cat
    assert job.progress_done == 0 and job.attempts == 0 and not job.terminal
    assert db.get_job(db_session, job.id) == job
    with pytest.raises(InvalidInput):
        db.create_job(db_session, "teleport")
    with pytest.raises(NotFound):
        db.get_job(db_session, 999_999)


def test_same_idempotency_key_same_job(db_session: Session) -> None:
    first, created = db.create_job(
        db_session, "query", params={"k": 5}, idempotency_key="client-42"
    )
    again, created_again = db.create_job(
        db_session, "query", params={"k": 5}, idempotency_key="client-42"
    )
    assert created and not created_again and again.id == first.id
    assert db.get_job_by_idempotency_key(db_session, "client-42") == again
    with pytest.raises(Conflict):
        db.create_job(db_session, "query", params={"k": 6}, idempotency_key="client-42")
    other, created_other = db.create_job(db_session, "query", params={"k": 5})
    assert created_other and other.id != first.id


@pytest.mark.parametrize(("old", "new"), list(itertools.product(JOB_STATUSES, JOB_STATUSES)))
def test_transitions(db_session: Session, old: str, new: str) -> None:
    job_id = job_in(db_session, old)
    if (old, new) in VALID:
        info = db.transition_job(db_session, job_id, new)
        assert info.status == new
    else:
        with pytest.raises(InvalidTransition) as err:
            db.transition_job(db_session, job_id, new)
        assert err.value.code == "invalid_transition" and err.value.http_status == 409
        assert db.get_job(db_session, job_id).status == old


def test_transition_side_effects(db_session: Session) -> None:
    job, _ = db.create_job(db_session, "dedup")
    running = db.transition_job(db_session, job.id, "running", task_id="celery-1")
    assert running.started_at is not None and running.attempts == 1
    assert running.task_id == "celery-1" and running.finished_at is None
    # Worker lost: redelivered, run again.
    requeued = db.transition_job(db_session, job.id, "queued", error_message="worker lost")
    assert requeued.status == "queued" and requeued.error_message == "worker lost"
    again = db.transition_job(db_session, job.id, "running")
    assert again.attempts == 2 and again.started_at == running.started_at
    done = db.transition_job(db_session, job.id, "succeeded", result={"groups": 3})
    assert done.finished_at is not None and done.terminal
    assert done.result == {"groups": 3} and done.error_message is None


def test_take_queued_claims_as_the_transition_does(db_session: Session) -> None:
    """The one-statement claim moves a queued job as ``transition_job(..., "running")`` does,
    and takes nothing that is not queued."""
    job, _ = db.create_job(db_session, "query", params={"catalogue_id": 1})
    taken = db.take_queued(db_session, job.id)
    assert taken is not None and taken.status == "running" and taken.attempts == 1
    assert taken.started_at is not None and taken.params == {"catalogue_id": 1}
    assert db.get_job(db_session, job.id) == taken  # what it returned is the row as stored
    assert db.take_queued(db_session, job.id) is None  # already running: another worker's
    db.transition_job(db_session, job.id, "queued")  # redelivered
    again = db.take_queued(db_session, job.id)
    assert again is not None and again.attempts == 2 and again.started_at == taken.started_at
    for status in ("succeeded", "cancelled"):
        assert db.take_queued(db_session, job_in(db_session, status)) is None
    assert db.take_queued(db_session, 10**9) is None
    queued = [db.create_job(db_session, "query")[0].id for _ in range(3)]
    db.create_job(db_session, "index")
    assert db.queued_job_ids(db_session, "query", 10)[-3:] == queued  # oldest first, queries only
    assert db.queued_job_ids(db_session, "query", 2) == db.queued_job_ids(db_session, "query", 10)[:2]


def test_failure_records_the_error(db_session: Session) -> None:
    job, _ = db.create_job(db_session, "train")
    db.transition_job(db_session, job.id, "running")
    failed = db.transition_job(
        db_session, job.id, "failed", error_code="bad_image", error_message="x.jpg: truncated"
    )
    assert (failed.error_code, failed.error_message) == ("bad_image", "x.jpg: truncated")
    job2, _ = db.create_job(db_session, "train")
    assert db.transition_job(db_session, job2.id, "failed").error_code == "internal"


def test_progress(db_session: Session) -> None:
    job, _ = db.create_job(db_session, "index", progress_total=100)
    db.transition_job(db_session, job.id, "running")
    assert db.update_job_progress(db_session, job.id, 40)
    assert db.update_job_progress(db_session, job.id, 50, total=200)
    info = db.get_job(db_session, job.id)
    assert (info.progress_done, info.progress_total) == (50, 200)
    db.transition_job(db_session, job.id, "cancelled")
    assert not db.update_job_progress(db_session, job.id, 60)  # tells the worker to stop
    assert db.get_job(db_session, job.id).progress_done == 50
    with pytest.raises(NotFound):
        db.update_job_progress(db_session, 999_999, 1)
    with pytest.raises(InvalidInput):
        db.update_job_progress(db_session, job.id, -1)


def test_task_id_and_listing(db_session: Session) -> None:
    a, _ = db.create_job(db_session, "query", task_id="t-a")
    b, _ = db.create_job(db_session, "index")
    assert db.get_job(db_session, a.id).task_id == "t-a"
    assert [j.id for j in db.list_jobs(db_session)] == [b.id, a.id]
    assert [j.id for j in db.list_jobs(db_session, job_type="query")] == [a.id]
    assert [j.id for j in db.list_jobs(db_session, before_id=b.id)] == [a.id]
    db.transition_job(db_session, b.id, "running")
    assert [j.id for j in db.list_jobs(db_session, status="running")] == [b.id]


def test_query_results_round_trip_and_upsert(db_session: Session) -> None:
    cat = db.create_catalogue(db_session, "q", source_kind="folder", source_path="/q").id
    res = db.upsert_items(
        db_session,
        cat,
        [
            db.ScannedItem(
                key=f"{i}.jpg",
                sha256=hashlib.sha256(str(i).encode()).hexdigest(),
                given_category="dress",
                location=f"store/{i}.jpg",
            )
            for i in range(5)
        ],
    )
    digest = hashlib.sha256(b"qm").hexdigest()
    mv = db.register_model_version(
        db_session,
        backbone="resnet50",
        weights_source="imagenet",
        labels=["dress", "shirt"],
        model_id=digest[:16],
        checkpoint_path="/m.pt",
        checkpoint_sha256=digest,
    ).id
    job, _ = db.create_job(db_session, "query", catalogue_id=cat)
    db.transition_job(db_session, job.id, "running")
    assert db.get_query_results(db_session, job.id) is None

    ids = [res.ids_by_key[k] for k in ("3.jpg", "1.jpg", "4.jpg")]
    result_id = db.write_query_results(
        db_session,
        job.id,
        item_ids=ids,
        scores=[0.99, 0.8, 0.5],
        model_version_id=mv,
        catalogue_id=cat,
        metric="cosine",
        k=3,
        routed_categories=["dress"],
        probabilities={"dress": 0.7, "shirt": 0.3},
        routing="svm",
        elapsed_ms=6.0,
    )
    db.transition_job(db_session, job.id, "succeeded")
    out = db.get_query_results(db_session, job.id)
    assert out is not None and out.id == result_id
    assert [h.item_id for h in out.hits] == ids and [h.rank for h in out.hits] == [1, 2, 3]
    assert [h.score for h in out.hits] == pytest.approx([0.99, 0.8, 0.5])
    assert out.hits[0].external_key == "3.jpg" and out.hits[0].location == "store/3.jpg"
    assert out.hits[0].category == "dress"
    assert out.routed_categories == ["dress"]
    assert out.probabilities == pytest.approx({"dress": 0.7, "shirt": 0.3})
    assert out.model_version_id == mv and out.model_id == digest[:16]
    assert db.get_job(db_session, job.id).result == {"query_result_id": result_id}

    # A redelivered task writes again: the answer is replaced, not duplicated.
    again = db.write_query_results(
        db_session,
        job.id,
        item_ids=ids[:1],
        scores=[0.9],
        model_version_id=mv,
        catalogue_id=cat,
        metric="euclidean",
        k=1,
    )
    out2 = db.get_query_results(db_session, job.id)
    assert out2 is not None and out2.id == again and len(out2.hits) == 1
    assert out2.metric == "euclidean"
    with pytest.raises(InvalidInput):
        db.write_query_results(
            db_session,
            job.id,
            item_ids=ids,
            scores=[1.0],
            model_version_id=mv,
            catalogue_id=cat,
            metric="cosine",
            k=3,
        )


def test_query_results_with_succeed_finish_the_job_in_the_same_write(db_session: Session) -> None:
    """``succeed=True``: the answer and running -> succeeded together; a job that is no longer
    running (cancelled while it ran) raises, and the caller's transaction writes nothing."""
    cat = db.create_catalogue(db_session, "s", source_kind="folder", source_path="/s").id
    res = db.upsert_items(db_session, cat, [db.ScannedItem(key="a.jpg", sha256="a" * 64)])
    item = res.ids_by_key["a.jpg"]
    job, _ = db.create_job(db_session, "query", catalogue_id=cat)
    db.transition_job(db_session, job.id, "running")
    rid = db.write_query_results(db_session, job.id, item_ids=[item], scores=[0.9], model_version_id=None,
                                 catalogue_id=cat, metric="cosine", k=1, succeed=True)
    done = db.get_job(db_session, job.id)
    assert done.status == "succeeded" and done.finished_at is not None
    assert done.result == {"query_result_id": rid}
    out = db.get_query_results(db_session, job.id)
    assert out is not None and [h.item_id for h in out.hits] == [item]

    cancelled, _ = db.create_job(db_session, "query", catalogue_id=cat)
    db.transition_job(db_session, cancelled.id, "running")
    db.transition_job(db_session, cancelled.id, "cancelled")
    nested = db_session.begin_nested()
    with pytest.raises(InvalidTransition):
        db.write_query_results(db_session, cancelled.id, item_ids=[item], scores=[0.9], model_version_id=None,
                               catalogue_id=cat, metric="cosine", k=1, succeed=True)
    nested.rollback()
    assert db.get_job(db_session, cancelled.id).status == "cancelled"
    assert db.get_query_results(db_session, cancelled.id) is None
    with pytest.raises(NotFound):
        db.write_query_results(db_session, 10**9, item_ids=[item], scores=[0.9], model_version_id=None,
                               catalogue_id=cat, metric="cosine", k=1)
