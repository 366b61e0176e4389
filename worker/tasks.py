"""Celery tasks. Arguments are job ids; the job row holds the parameters.

Every task is safe to run twice: a job that is no longer queued (already running
elsewhere, finished or cancelled) is skipped; results are upserted by job id.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections import defaultdict
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import torch
from celery import signals
from celery.exceptions import SoftTimeLimitExceeded
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session

from shared.config import Settings
from shared.db import services
from shared.db.jobs import JobInfo
from shared.db.session import dispose_after_fork, session_scope
from shared.errors import BadImage, FirError, InvalidTransition, NotFound
from shared.indexing import index_catalogue
from worker.celery_app import app
from worker.factory import (
    TASK_DEDUP,
    TASK_HOUSEKEEPING,
    TASK_INDEX,
    TASK_NIGHTLY_REINDEX,
    TASK_QUERY,
    queue_of,
)
from worker.holder import get_holder
from worker.observability import EmbeddingMeter, record_embedding

log = logging.getLogger(__name__)

TRANSIENT = (OperationalError, ConnectionError, TimeoutError)


def settings() -> Settings:
    return app.conf.fir_settings


@signals.worker_process_init.connect
def _after_fork(**_: Any) -> None:
    """Models load once per worker process, after the fork (CUDA does not survive one); a
    process that answers queries also runs one forward, then loads the indexed catalogues in
    the background (``FIR_WORKER_WARM_INDEXES``)."""
    dispose_after_fork()
    holder = get_holder(settings())
    try:
        holder.version()
    except FirError as exc:  # no active model yet: loaded on the first task instead
        log.warning("worker start: %s", exc.message)
        return
    if settings().worker_warm_indexes and _serves_queries():
        try:
            holder.warm_model()  # on this thread, which answers the queries: a fraction of a second
        except Exception:  # noqa: BLE001 - the process must start anyway
            log.exception("warm-up forward failed; the first query runs the first forward instead")
        _warm_in_background()


def _warm_in_background() -> None:
    threading.Thread(target=warm_indexes, name="fir-warm", daemon=True).start()


def _serves_queries() -> bool:
    """Whether this worker consumes the query queue (``-Q``; all queues when none is named)."""
    consume = app.amqp.queues.consume_from
    return not consume or queue_of(TASK_QUERY) in consume


def warm_indexes() -> list[int]:
    """:meth:`worker.holder.ModelHolder.warm`, logged; never raises (it runs on its own thread
    beside the tasks, which load what they need themselves if it failed)."""
    t0 = time.perf_counter()
    try:
        loaded = get_holder(settings()).warm()
    except Exception:  # noqa: BLE001 - a failed warm-up must not take the worker down
        log.exception("warm-up failed; catalogues load on their first query instead")
        return []
    log.info("warm-up: %d catalogue(s) loaded in %.1f s", len(loaded), time.perf_counter() - t0)
    return loaded


@signals.worker_ready.connect
def _ready(sender: Any = None, **_: Any) -> None:
    """The worker's main process records a heartbeat in the database every few seconds
    (``/readyz`` reads it; it works with every broker, the filesystem one included)."""
    from shared.db import heartbeat

    name = getattr(sender, "hostname", None) or "worker"
    queues = sorted(q.name for q in app.amqp.queues.consume_from.values()) if app.amqp.queues.consume_from else []
    heartbeat.start_thread(settings(), name, ",".join(queues))


QUERY_STALE_S = 120.0  # a running query untouched this long was lost with its worker


def _delivery(task: Any) -> tuple[str | None, bool]:
    """(this delivery's task id, whether the broker redelivered it after a worker was lost)."""
    request = getattr(task, "request", None)
    info = getattr(request, "delivery_info", None) or {}
    return getattr(request, "id", None), bool(info.get("redelivered"))


def _take(session: Session, job_id: int, task_id: str | None = None, redelivered: bool = False,
          stale_after_s: float | None = None) -> JobInfo | None:
    """queued -> running inside the caller's transaction; the running job, or None when another
    delivery already took it or it is finished.

    A *running* job is taken over (running -> queued -> running) when this delivery is the
    job's own message redelivered after its worker was lost (acks_late + reject on worker
    loss), or when the job has not been touched for ``stale_after_s``: skipping it would lose
    an accepted job."""
    taken = services.take_queued(session, job_id)  # the common case, in one statement
    if taken is not None:
        return taken
    job = services.get_job(session, job_id)
    if job.status == "running":
        own = task_id is not None and job.task_id == task_id
        age = (datetime.now(UTC) - job.updated_at).total_seconds() if job.updated_at else 0.0
        stale = stale_after_s is not None and age > stale_after_s
        if (own and redelivered) or stale:
            log.warning("job %d: taken over after its worker was lost (redelivered=%s, idle %.0f s)",
                        job_id, redelivered, age)
            services.transition_job(session, job_id, "queued")
            return services.transition_job(session, job_id, "running")
    if job.status != "queued":
        log.info("job %d is %s: skipped", job_id, job.status)
        return None
    return services.transition_job(session, job_id, "running")


def _claim(job_id: int, task_id: str | None = None, redelivered: bool = False,
           stale_after_s: float | None = None) -> bool:
    """:func:`_take` in a transaction of its own; False when the job was not taken."""
    try:
        with session_scope(settings(), immediate=True) as session:
            return _take(session, job_id, task_id, redelivered, stale_after_s) is not None
    except (InvalidTransition, NotFound) as exc:
        log.info("job %d not claimed: %s", job_id, exc)
        return False


def _running_elsewhere(job_id: int) -> bool:
    with session_scope(settings()) as session:
        return services.get_job(session, job_id).status == "running"


def _finish(job_id: int, status: str, **kwargs: Any) -> None:
    try:
        with session_scope(settings(), immediate=True) as session:
            services.transition_job(session, job_id, status, **kwargs)
    except InvalidTransition as exc:  # cancelled meanwhile: the cancel wins
        log.info("job %d: %s", job_id, exc)


def _fail(job_id: int, exc: BaseException) -> None:
    code = exc.code if isinstance(exc, FirError) else "internal_error"
    message = exc.message if isinstance(exc, FirError) else f"{type(exc).__name__}: {exc}"
    _finish(job_id, "failed", error_code=code, error_message=message[:2000])


# -- queries -------------------------------------------------------------------------------
Claimed = tuple[list[JobInfo], dict[int, tuple[int, int]]]


def _claim_queries(job_id: int, task_id: str | None, redelivered: bool, limit: int) -> Claimed:
    """This delivery's job (when it can be taken) and up to ``limit - 1`` other query jobs
    waiting in the queue, oldest first (micro-batching), claimed in one transaction; with them,
    read in the same transaction, the state each of their catalogues must be answered under
    (:meth:`worker.holder.ModelHolder.state`; a catalogue whose state cannot be read is left
    out, and :meth:`~worker.holder.ModelHolder.snapshot` reports the error per job).

    Jobs are taken in ascending id order, so that two workers claiming overlapping batches
    lock rows in the same order (PostgreSQL): one waits for the other, and never deadlocks."""
    claimed: list[JobInfo] = []
    with session_scope(settings(), immediate=True) as session:
        others: list[int] = []
        if limit > 1:
            waiting = services.queued_job_ids(session, "query", limit)
            others = [j for j in waiting if j != job_id][: limit - 1]
        for j in sorted([job_id, *others]):
            try:
                if j == job_id:
                    taken = _take(session, j, task_id, redelivered, stale_after_s=QUERY_STALE_S)
                else:
                    taken = services.take_queued(session, j)  # None: another worker took it first
            except (InvalidTransition, NotFound) as exc:  # another worker took it first
                log.info("job %d not claimed: %s", j, exc)
                continue
            if taken is not None:
                claimed.append(taken)
        states: dict[int, tuple[int, int]] = {}
        holder = get_holder(settings())
        for catalogue_id in {(j.params or {}).get("catalogue_id") for j in claimed} - {None}:
            with contextlib.suppress(FirError):  # no active model: each job fails with it later
                states[int(catalogue_id)] = holder.state(session, int(catalogue_id))
    return claimed, states


@app.task(name=TASK_QUERY, bind=True, autoretry_for=TRANSIENT, retry_backoff=True, max_retries=5)
def run_query(self: Any, job_id: int) -> dict[str, Any]:
    s = settings()
    task_id, redelivered = _delivery(self)
    claimed, states = _claim_queries(job_id, task_id, redelivered, s.query_batch_max)
    if not claimed:
        if _running_elsewhere(job_id) and task_id is not None:
            # another worker's batch took this job: look again later, and take it over if that
            # worker died (stale), so the job is never lost
            raise self.retry(countdown=QUERY_STALE_S / 2, max_retries=4)
        return {"skipped": job_id}
    try:
        answer_queries(claimed, states)
    except SoftTimeLimitExceeded:
        for j in claimed:
            _finish(j.id, "failed", error_code="time_limit", error_message="the query ran past its time limit")
        raise
    return {"answered": [j.id for j in claimed]}


def answer_queries(claimed: list[JobInfo], states: dict[int, tuple[int, int]] | None = None) -> None:
    """Embed the claimed queries together, then route and search each one; ``states``: what
    each catalogue's snapshot must be current with, read when they were claimed."""
    s = settings()
    holder = get_holder(s)
    jobs = {job.id: job for job in claimed}
    by_catalogue: dict[int, list[int]] = defaultdict(list)
    for j, job in jobs.items():
        by_catalogue[int((job.params or {})["catalogue_id"])].append(j)
    for catalogue_id, ids in by_catalogue.items():
        t0 = time.perf_counter()
        try:
            snap = holder.snapshot(catalogue_id, (states or {}).get(catalogue_id))
        except Exception as exc:  # noqa: BLE001 - every job of the group gets the error
            for j in ids:
                _fail(j, exc)
            continue
        engine = snap.engine
        vectors: dict[int, np.ndarray] = {}  # job -> [n_inputs, d]
        images: list[torch.Tensor] = []  # uint8 crops (Embedder.prepare)
        owners: list[int] = []
        for j in ids:
            params = jobs[j].params or {}
            try:
                if params.get("item_id") is not None:
                    vectors[j] = _item_vector(snap, int(params["item_id"]))[None, :]
                else:
                    paths = params.get("uploads") or [params["upload"]]
                    # decoded as indexing decodes, so a catalogue photo finds its own vector
                    loaded = [engine.embedder.prepare(Path(p)) for p in paths]
                    images.extend(loaded)
                    owners.extend([j] * len(loaded))
            except (BadImage, FirError) as exc:
                _fail(j, exc)
        if images:
            t_embed = time.perf_counter()
            embedded = engine.embedder.embed_crops(images, batch_size=min(len(images), 32))
            record_embedding("query", len(images), time.perf_counter() - t_embed)
            rows_of: dict[int, list[int]] = defaultdict(list)
            for n, j in enumerate(owners):
                rows_of[j].append(n)
            vectors.update({j: embedded[rows] for j, rows in rows_of.items()})
        embed_ms = (time.perf_counter() - t0) * 1000
        for j, vec in vectors.items():
            params = jobs[j].params or {}
            try:
                category = params.get("category")
                answers = engine.query_vectors(
                    vec, k=int(params.get("k", 10)), metric=params.get("metric", "cosine"),
                    routing=params.get("routing", "svm-fallback"),
                    categories=[category] * len(vec) if category else None,
                    threshold=float(params.get("threshold") or s.fallback_threshold),
                )
                elapsed = embed_ms / max(len(ids), 1)
                # One transaction per answer, its transition a compare-and-set: a job cancelled
                # while it ran raises InvalidTransition and the transaction writes nothing.
                with session_scope(s, immediate=True) as session:
                    if params.get("uploads"):
                        services.transition_job(session, j, "succeeded", result={
                            "model_version_id": snap.version.version_id,
                            "model_id": snap.version.model.model_id,
                            "batch": [{"index": n,
                                       "item_ids": [int(snap.item_ids[m.index]) for m in a.matches],
                                       "scores": [m.score for m in a.matches],
                                       "routed_categories": a.route or [], "probabilities": a.probabilities}
                                      for n, a in enumerate(answers)]})
                        continue
                    answer = answers[0]
                    services.write_query_results(
                        session, j,
                        item_ids=[int(snap.item_ids[m.index]) for m in answer.matches],
                        scores=[m.score for m in answer.matches],
                        model_version_id=snap.version.version_id, catalogue_id=catalogue_id,
                        metric=params.get("metric", "cosine"), k=int(params.get("k", 10)),
                        routed_categories=answer.route or [], probabilities=answer.probabilities,
                        routing=params.get("routing"),
                        elapsed_ms=elapsed + sum(answer.timings_ms.values()),
                        succeed=True,  # the same statement as the result pointer: compare-and-set
                    )
            except InvalidTransition:
                continue
            except FirError as exc:
                _fail(j, exc)


def _item_vector(snap: Any, item_id: int) -> np.ndarray:
    rows = np.flatnonzero(snap.item_ids == item_id)
    if len(rows) == 0:
        raise NotFound(f"item {item_id} is not indexed in catalogue {snap.catalogue_id} for the active model")
    return np.asarray(snap.engine.catalogue.vectors[rows[0]])


# -- indexing ------------------------------------------------------------------------------
@app.task(name=TASK_INDEX, bind=True, autoretry_for=TRANSIENT, retry_backoff=True, max_retries=5)
def run_index(self: Any, job_id: int) -> dict[str, Any]:
    s = settings()
    task_id, redelivered = _delivery(self)
    if not _claim(job_id, task_id, redelivered, stale_after_s=s.task_hard_time_limit + 60):
        return {"skipped": job_id}
    with session_scope(s) as session:
        job = services.get_job(session, job_id)
    params = job.params or {}
    try:
        version = get_holder(s).version()
        meter = EmbeddingMeter("index")

        def progress(done: int, total: int) -> None:
            meter.update(done)
            with session_scope(s) as session:
                services.update_job_progress(session, job_id, done, total)

        report = index_catalogue(s, int(params["catalogue_id"]), version.version_id, version.embedder,
                                 version.router, full=bool(params.get("full")), progress=progress)
    except TRANSIENT:
        with session_scope(s) as session:
            services.transition_job(session, job_id, "queued")  # redelivered by the retry
        raise
    except Exception as exc:  # noqa: BLE001 - recorded on the job, never lost
        log.exception("index job %d failed", job_id)
        _fail(job_id, exc)
        return {"failed": job_id}
    _finish(job_id, "succeeded", result=report.as_dict())
    if s.worker_warm_indexes and _serves_queries():
        _warm_in_background()  # this process's next queries find the new index loaded
    return {"indexed": job_id}


@app.task(name=TASK_NIGHTLY_REINDEX)
def nightly_reindex() -> list[int]:
    """Create an incremental re-index job for every catalogue with a source (idempotent per day)."""
    s = settings()
    day = datetime.now(UTC).strftime("%Y-%m-%d")
    created = []
    with session_scope(s) as session:
        catalogues = [c for c in services.list_catalogues(session) if c.source_path]
    for cat in catalogues:
        task_id = services.new_task_id()
        with session_scope(s) as session:
            job, new = services.create_job(session, "reindex", params={"catalogue_id": cat.id, "full": False},
                                           catalogue_id=cat.id, idempotency_key=f"nightly-{day}-{cat.id}",
                                           task_id=task_id)
        if new:
            app.send_task(TASK_INDEX, args=[job.id], queue=queue_of(TASK_INDEX), task_id=task_id)
            created.append(job.id)
    return created


@app.task(name=TASK_HOUSEKEEPING)
def housekeeping() -> dict[str, int]:
    """Expire old query results; fail jobs stuck running past their time limit."""
    from shared.db import housekeeping as hk

    s = settings()
    now = datetime.now(UTC)
    with session_scope(s) as session:
        expired = hk.expire_query_results(session, now - timedelta(days=s.result_ttl_days))
        stuck = hk.fail_stuck_jobs(session, now - timedelta(seconds=s.task_hard_time_limit + 60))
    return {"expired_results": expired, "failed_stuck_jobs": stuck}


# -- de-duplication ------------------------------------------------------------------------
@app.task(name=TASK_DEDUP, bind=True, autoretry_for=TRANSIENT, retry_backoff=True, max_retries=5)
def run_dedup(self: Any, job_id: int) -> dict[str, Any]:
    """Exact and near-duplicate groups of a catalogue with the active model's vectors (CPU)."""
    from shared.dedup.run import Cancelled, DedupRequest
    from shared.dedup.run import run_dedup as dedup_catalogue

    s = settings()
    if not _claim(job_id):
        return {"skipped": job_id}
    with session_scope(s) as session:
        job = services.get_job(session, job_id)
    params = dict(job.params or {})
    try:
        catalogue_id = int(params.pop("catalogue_id"))

        def progress(done: int, total: int) -> bool:
            with session_scope(s) as session:
                return services.update_job_progress(session, job_id, done, total)

        report = dedup_catalogue(s, catalogue_id, DedupRequest.from_params(params), job_id=job_id,
                                 progress=progress)
    except Cancelled:
        log.info("dedup job %d cancelled", job_id)
        return {"cancelled": job_id}
    except TRANSIENT:
        with session_scope(s) as session:
            services.transition_job(session, job_id, "queued")  # redelivered by the retry
        raise
    except Exception as exc:  # noqa: BLE001 - recorded on the job, never lost
        log.exception("dedup job %d failed", job_id)
        _fail(job_id, exc)
        return {"failed": job_id}
    _finish(job_id, "succeeded", result={"dedup_run_id": report.run_id, **report.as_dict()})
    return {"dedup_run_id": report.run_id}
