"""Jobs (the unit clients submit and poll) and the results of query jobs.

Job status moves only along these edges (anything else raises :class:`InvalidTransition`)::

    queued  -> running | cancelled | failed
    running -> succeeded | failed | cancelled | queued   (queued again: redelivery / retry)
    succeeded, failed, cancelled: terminal

Transitions are compare-and-set (``UPDATE ... WHERE status = <the status read>``), so two
workers racing on one job cannot both win.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
from sqlalchemy import delete, func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from shared.db._common import check_choice, chunks, json_normal, table_of
from shared.db.models import (
    JOB_STATUSES,
    JOB_TYPES,
    METRICS,
    Item,
    Job,
    ModelVersion,
    QueryResult,
    QueryResultRow,
    utcnow,
)
from shared.db.session import FINISHED_JOBS
from shared.errors import Conflict, InvalidInput, InvalidTransition, NotFound

JobType = Literal["query", "index", "reindex", "dedup", "train", "backfill", "evaluate"]
JobStatus = Literal["queued", "running", "succeeded", "failed", "cancelled"]

JOBS = table_of(Job)
RESULTS = table_of(QueryResult)
RESULT_ROWS = table_of(QueryResultRow)

TERMINAL: frozenset[str] = frozenset({"succeeded", "failed", "cancelled"})
TRANSITIONS: Mapping[str, frozenset[str]] = {
    "queued": frozenset({"running", "cancelled", "failed"}),
    "running": frozenset({"succeeded", "failed", "cancelled", "queued"}),
    "succeeded": frozenset(),
    "failed": frozenset(),
    "cancelled": frozenset(),
}


def is_terminal(status: str) -> bool:
    return status in TERMINAL


def can_transition(old: str, new: str) -> bool:
    return new in TRANSITIONS.get(old, frozenset())


@dataclass(frozen=True)
class JobInfo:
    id: int
    type: str
    status: str
    catalogue_id: int | None
    model_version_id: int | None
    params: dict[str, Any] | None
    progress_done: int
    progress_total: int | None
    error_code: str | None
    error_message: str | None
    idempotency_key: str | None
    task_id: str | None
    result: dict[str, Any] | None
    attempts: int
    created_at: datetime
    updated_at: datetime
    started_at: datetime | None
    finished_at: datetime | None

    @property
    def terminal(self) -> bool:
        return self.status in TERMINAL


def _info(row: Any) -> JobInfo:
    """From an ORM ``Job`` or a Core row of the jobs table (same attribute names)."""
    return JobInfo(
        id=row.id,
        type=row.type,
        status=row.status,
        catalogue_id=row.catalogue_id,
        model_version_id=row.model_version_id,
        params=row.params,
        progress_done=row.progress_done,
        progress_total=row.progress_total,
        error_code=row.error_code,
        error_message=row.error_message,
        idempotency_key=row.idempotency_key,
        task_id=row.task_id,
        result=row.result,
        attempts=row.attempts,
        created_at=row.created_at,
        updated_at=row.updated_at,
        started_at=row.started_at,
        finished_at=row.finished_at,
    )


def _row(session: Session, job_id: int, *, lock: bool = False) -> Any:
    """The job's current row (a Core row: no ORM identity map to go stale)."""
    stmt = select(JOBS).where(JOBS.c.id == job_id)
    if lock:
        stmt = stmt.with_for_update()
    row = session.execute(stmt).first()
    if row is None:
        raise NotFound(f"job {job_id} not found")
    return row


def new_task_id() -> str:
    """A broker task id chosen before the job row is written: the row stores it and the message
    is sent under it, so a redelivered message is recognised as the job's own (one write
    transaction per submitted job)."""
    return str(uuid.uuid4())


def create_job(
    session: Session,
    job_type: str,
    *,
    params: dict[str, Any] | None = None,
    catalogue_id: int | None = None,
    model_version_id: int | None = None,
    idempotency_key: str | None = None,
    progress_total: int | None = None,
    task_id: str | None = None,
) -> tuple[JobInfo, bool]:
    """Create a queued job; returns ``(job, created)``.

    With an ``idempotency_key`` already used, the existing job comes back with
    ``created=False`` (enqueue only when ``created``); reusing a key for a different job type
    or different params raises :class:`Conflict`. ``task_id`` is the broker's task id the
    caller will send the job's message under (:func:`new_task_id`), stored with the row.
    """
    check_choice("job type", job_type, JOB_TYPES)
    params_n = json_normal(params) if params is not None else None
    if idempotency_key is not None:
        if not idempotency_key or len(idempotency_key) > 255:
            raise InvalidInput("an idempotency key is 1 to 255 characters")
        known = session.scalar(select(Job).where(Job.idempotency_key == idempotency_key))
        if known is not None:
            return _same_job(known, job_type, params_n), False
    if idempotency_key is None:  # one Core statement: no savepoint, no ORM flush (a query's submit)
        now = utcnow()
        created = session.execute(JOBS.insert().values(
            type=job_type, status="queued", params=params_n, catalogue_id=catalogue_id,
            model_version_id=model_version_id, progress_done=0, progress_total=progress_total,
            attempts=0, task_id=task_id, created_at=now, updated_at=now,
        ).returning(*JOBS.c)).one()
        return _info(created), True
    row = Job(
        type=job_type,
        status="queued",
        params=params_n,
        catalogue_id=catalogue_id,
        model_version_id=model_version_id,
        idempotency_key=idempotency_key,
        progress_done=0,
        progress_total=progress_total,
        attempts=0,
        task_id=task_id,
    )
    try:
        with session.begin_nested():
            session.add(row)
    except IntegrityError:
        if idempotency_key is None:
            raise
        known = session.scalar(select(Job).where(Job.idempotency_key == idempotency_key))
        if known is None:
            raise
        return _same_job(known, job_type, params_n), False
    return _info(row), True


def _same_job(known: Job, job_type: str, params: Any) -> JobInfo:
    if known.type != job_type or json_normal(known.params) != params:
        raise Conflict(
            f"idempotency key {known.idempotency_key!r} was used for another request (job {known.id})"
        )
    return _info(known)


def get_job(session: Session, job_id: int) -> JobInfo:
    return _info(_row(session, job_id))


def get_job_by_idempotency_key(session: Session, key: str) -> JobInfo | None:
    row = session.scalar(select(Job).where(Job.idempotency_key == key))
    return None if row is None else _info(row)


def list_jobs(
    session: Session,
    *,
    status: str | None = None,
    job_type: str | None = None,
    catalogue_id: int | None = None,
    limit: int = 50,
    before_id: int | None = None,
) -> list[JobInfo]:
    """Newest first; ``before_id`` pages backwards."""
    stmt = select(Job).order_by(Job.id.desc()).limit(limit)
    if status is not None:
        stmt = stmt.where(Job.status == check_choice("status", status, JOB_STATUSES))
    if job_type is not None:
        stmt = stmt.where(Job.type == check_choice("job type", job_type, JOB_TYPES))
    if catalogue_id is not None:
        stmt = stmt.where(Job.catalogue_id == catalogue_id)
    if before_id is not None:
        stmt = stmt.where(Job.id < before_id)
    return [_info(r) for r in session.scalars(stmt)]


def transition_job(
    session: Session,
    job_id: int,
    new_status: str,
    *,
    error_code: str | None = None,
    error_message: str | None = None,
    result: dict[str, Any] | None = None,
    task_id: str | None = None,
) -> JobInfo:
    """Move a job to ``new_status`` if the state machine allows it, else :class:`InvalidTransition`.

    ``running`` stamps ``started_at`` (first time) and counts an attempt; a terminal status
    stamps ``finished_at``; ``failed`` records ``error_code`` (default ``"internal"``) and
    ``error_message``; ``succeeded`` clears any error of an earlier attempt and may set the
    ``result`` pointer; ``task_id`` records the broker's id.
    """
    check_choice("status", new_status, JOB_STATUSES)
    row = _row(session, job_id, lock=True)
    old = row.status
    if not can_transition(old, new_status):
        raise InvalidTransition(f"job {job_id} cannot go from {old} to {new_status}")
    now = utcnow()
    values: dict[str, Any] = {"status": new_status, "updated_at": now}
    if new_status == "running":
        values["attempts"] = JOBS.c.attempts + 1
        if row.started_at is None:
            values["started_at"] = now
    if new_status in TERMINAL:
        values["finished_at"] = now
        session.info[FINISHED_JOBS] = True  # session_scope rings the job bell after the commit
    if new_status == "failed":
        values["error_code"] = error_code or "internal"
        values["error_message"] = error_message
    elif new_status == "succeeded":
        values["error_code"] = None
        values["error_message"] = None
    elif error_code is not None or error_message is not None:
        values["error_code"] = error_code
        values["error_message"] = error_message
    if result is not None:
        values["result"] = json_normal(result)
    if task_id is not None:
        values["task_id"] = task_id
    done = session.execute(
        update(JOBS).where(JOBS.c.id == job_id, JOBS.c.status == old).values(**values)
    )
    if done.rowcount != 1:  # type: ignore[attr-defined]
        raise InvalidTransition(f"job {job_id} changed status meanwhile (was {old})")
    # the row as it now stands, without reading it again (the compare-and-set above held)
    changed = {k: v for k, v in values.items() if k not in ("attempts", "result")}
    if new_status == "running":
        changed["attempts"] = row.attempts + 1
    if result is not None:
        changed["result"] = values["result"]
    return replace(_info(row), **changed)


def take_queued(session: Session, job_id: int) -> JobInfo | None:
    """queued -> running in one statement (a compare-and-set ``UPDATE ... RETURNING``), as
    :func:`transition_job` would move it: the running job, or None when the job is not queued
    (missing, taken, finished: the caller reads it to see which). A worker's claim of a fresh
    query job, the common case, then costs one round trip instead of three."""
    now = utcnow()
    row = session.execute(
        update(JOBS)
        .where(JOBS.c.id == job_id, JOBS.c.status == "queued")
        .values(status="running", updated_at=now, attempts=JOBS.c.attempts + 1,
                started_at=func.coalesce(JOBS.c.started_at, now))
        .returning(*JOBS.c)
    ).first()
    return None if row is None else _info(row)


def queued_job_ids(session: Session, job_type: str, limit: int) -> list[int]:
    """The ids of up to ``limit`` queued jobs of a type, oldest first."""
    check_choice("job type", job_type, JOB_TYPES)
    stmt = (select(JOBS.c.id).where(JOBS.c.status == "queued", JOBS.c.type == job_type)
            .order_by(JOBS.c.id).limit(limit))
    return [int(i) for i in session.scalars(stmt)]


def update_job_progress(session: Session, job_id: int, done: int, total: int | None = None) -> bool:
    """Set a job's progress; returns False (and changes nothing) once the job is finished.

    A worker can stop early when it gets False: the job was cancelled or failed meanwhile.
    """
    if done < 0 or (total is not None and total < 0):
        raise InvalidInput("progress counts cannot be negative")
    values: dict[str, Any] = {"progress_done": done, "updated_at": utcnow()}
    if total is not None:
        values["progress_total"] = total
    res = session.execute(
        update(JOBS)
        .where(JOBS.c.id == job_id, JOBS.c.status.in_(("queued", "running")))
        .values(**values)
    )
    if res.rowcount == 1:  # type: ignore[attr-defined]
        return True
    _row(session, job_id)  # NotFound if the job does not exist
    return False


# ---------------------------------------------------------------------------------------------
# Query results


@dataclass(frozen=True)
class QueryHit:
    rank: int
    item_id: int
    score: float
    external_key: str
    category: str | None
    location: str | None


@dataclass(frozen=True)
class QueryResultInfo:
    id: int
    job_id: int
    catalogue_id: int | None
    model_version_id: int | None
    model_id: str | None
    metric: str
    k: int
    routing: str | None
    routed_categories: list[str]
    probabilities: dict[str, Any] | None
    elapsed_ms: float | None
    created_at: datetime
    hits: list[QueryHit]


def write_query_results(
    session: Session,
    job_id: int,
    *,
    item_ids: Sequence[int] | npt.NDArray[Any],
    scores: Sequence[float] | npt.NDArray[Any],
    model_version_id: int | None,
    catalogue_id: int | None,
    metric: str,
    k: int,
    routed_categories: Sequence[str] = (),
    probabilities: Mapping[str, float] | None = None,
    routing: str | None = None,
    elapsed_ms: float | None = None,
    succeed: bool = False,
) -> int:
    """Store a query's ranked answer (rank 1 = best) and point the job at it.

    Upserted by job id: writing again (a redelivered task) replaces the earlier answer.
    Returns the result id; the job's ``result`` becomes ``{"query_result_id": id}``.
    ``succeed``: the same statement moves the job running -> succeeded, compare-and-set as
    :func:`transition_job` does (:class:`InvalidTransition` when it is no longer running, e.g.
    cancelled meanwhile; the caller's transaction then writes nothing).
    """
    check_choice("metric", metric, METRICS)
    ids = [int(i) for i in np.asarray(item_ids, dtype=np.int64).reshape(-1)]
    vals = [float(s) for s in np.asarray(scores, dtype=np.float64).reshape(-1)]
    if len(ids) != len(vals):
        raise InvalidInput(f"{len(ids)} item ids but {len(vals)} scores")
    if k < 1:
        raise InvalidInput("k must be positive")
    # the job and its earlier answer, if any, in one read; then Core statements, no ORM flush:
    # a query's answer is written on its latency path
    found = session.execute(
        select(JOBS.c.id, RESULTS.c.id).outerjoin(RESULTS, RESULTS.c.job_id == JOBS.c.id).where(JOBS.c.id == job_id)
    ).first()
    if found is None:
        raise NotFound(f"job {job_id} not found")
    old = found[1]
    if old is not None:
        session.execute(delete(RESULT_ROWS).where(RESULT_ROWS.c.result_id == old))
        session.execute(delete(RESULTS).where(RESULTS.c.id == old))
    now = utcnow()
    header_id = session.execute(RESULTS.insert().values(
        job_id=job_id,
        catalogue_id=catalogue_id,
        model_version_id=model_version_id,
        metric=metric,
        k=k,
        routing=routing,
        routed_categories=list(routed_categories),
        probabilities=(
            {str(c): float(p) for c, p in probabilities.items()}
            if probabilities is not None
            else None
        ),
        elapsed_ms=elapsed_ms,
        created_at=now,
    ).returning(RESULTS.c.id)).scalar_one()
    rows = [
        {"result_id": header_id, "rank": rank, "item_id": item_id, "score": score}
        for rank, (item_id, score) in enumerate(zip(ids, vals, strict=True), start=1)
    ]
    for chunk in chunks(rows):
        session.execute(RESULT_ROWS.insert(), list(chunk))
    values: dict[str, Any] = {"result": {"query_result_id": header_id}, "updated_at": now}
    stmt = update(JOBS).where(JOBS.c.id == job_id)
    if succeed:
        values.update(status="succeeded", finished_at=now, error_code=None, error_message=None)
        stmt = stmt.where(JOBS.c.status == "running")
    if session.execute(stmt.values(**values)).rowcount != 1:  # type: ignore[attr-defined]
        status = session.scalar(select(JOBS.c.status).where(JOBS.c.id == job_id))
        raise InvalidTransition(f"job {job_id} cannot go from {status} to succeeded")
    if succeed:
        session.info[FINISHED_JOBS] = True  # session_scope rings the job bell after the commit
    return int(header_id)


def get_query_results(session: Session, job_id: int) -> QueryResultInfo | None:
    """A query job's stored answer with its items' keys, categories and locations; or None."""
    header = session.execute(  # Core rows, no ORM entities: read on every answered long poll
        select(RESULTS, ModelVersion.model_id.label("model_id_of_version"))
        .outerjoin(ModelVersion, ModelVersion.id == RESULTS.c.model_version_id)
        .where(RESULTS.c.job_id == job_id)
    ).first()
    if header is None:
        return None
    model_id = header.model_id_of_version
    hits = [
        QueryHit(
            rank=r.rank,
            item_id=r.item_id,
            score=r.score,
            external_key=r.external_key,
            category=r.given_category or r.predicted_category,
            location=r.location,
        )
        for r in session.execute(
            select(
                RESULT_ROWS.c.rank,
                RESULT_ROWS.c.item_id,
                RESULT_ROWS.c.score,
                Item.external_key,
                Item.given_category,
                Item.predicted_category,
                Item.location,
            )
            .join(Item, Item.id == RESULT_ROWS.c.item_id)
            .where(RESULT_ROWS.c.result_id == header.id)
            .order_by(RESULT_ROWS.c.rank)
        )
    ]
    return QueryResultInfo(
        id=header.id,
        job_id=header.job_id,
        catalogue_id=header.catalogue_id,
        model_version_id=header.model_version_id,
        model_id=model_id,
        metric=header.metric,
        k=header.k,
        routing=header.routing,
        routed_categories=list(header.routed_categories),
        probabilities=header.probabilities,
        elapsed_ms=header.elapsed_ms,
        created_at=header.created_at,
        hits=hits,
    )
