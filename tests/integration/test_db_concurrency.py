"""Races between real connections (committed data, so each test gets its own database)."""

from __future__ import annotations

import hashlib
import threading
from pathlib import Path

import pytest
from sqlalchemy.orm import Session

from shared.db import migrate
from shared.db import services as db
from shared.db.session import create_fir_engine, session_scope
from shared.errors import Conflict, InvalidTransition

pytestmark = pytest.mark.integration


def _register(session: Session, name: str) -> int:
    digest = hashlib.sha256(name.encode()).hexdigest()
    return db.register_model_version(
        session,
        backbone="resnet50",
        weights_source="imagenet",
        labels=["a"],
        model_id=digest[:16],
        checkpoint_path=f"/{name}.pt",
        checkpoint_sha256=digest,
    ).id


def test_concurrent_activations_leave_one_active(empty_db_url: str) -> None:
    migrate.upgrade(empty_db_url)
    engine = create_fir_engine(empty_db_url)
    try:
        with session_scope(engine) as s:
            v1, v2, v3 = (_register(s, n) for n in ("c1", "c2", "c3"))
            db.activate_model_version(s, v1)

        outcome: dict[str, object] = {}
        first_in = threading.Event()

        def second() -> None:
            first_in.wait(10)
            try:
                # SQLite: take the write lock at BEGIN, so the second writer waits its turn.
                with session_scope(engine, immediate=True) as s2:
                    outcome["second"] = db.activate_model_version(s2, v3).id
            except (Conflict, InvalidTransition) as exc:
                outcome["second"] = exc

        thread = threading.Thread(target=second)
        with session_scope(engine, immediate=True) as s1:
            db.activate_model_version(s1, v2)
            thread.start()
            first_in.set()
            thread.join(0.5)  # the second activation must wait for this transaction
            assert thread.is_alive()
        thread.join(30)
        assert not thread.is_alive()

        with session_scope(engine) as s:
            active = db.list_model_versions(s, state="active")
        assert len(active) == 1
        if isinstance(outcome["second"], Exception):
            assert active[0].id == v2
        else:
            assert active[0].id == v3 == outcome["second"]
    finally:
        engine.dispose()


def test_concurrent_starts_of_one_job_have_one_winner(empty_db_url: str) -> None:
    migrate.upgrade(empty_db_url)
    engine = create_fir_engine(empty_db_url)
    try:
        with session_scope(engine) as s:
            job, _ = db.create_job(s, "query")
        results: list[object] = []
        barrier = threading.Barrier(2)

        def start() -> None:
            barrier.wait(10)
            try:
                with session_scope(engine, immediate=True) as s2:
                    results.append(db.transition_job(s2, job.id, "running").status)
            except InvalidTransition as exc:
                results.append(exc)

        threads = [threading.Thread(target=start) for _ in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        assert sorted(map(type, results), key=str) == sorted([str, InvalidTransition], key=str)
        with session_scope(engine) as s:
            assert db.get_job(s, job.id).attempts == 1
    finally:
        engine.dispose()


def test_parallel_load_matches_the_single_stream(
    empty_db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    import numpy as np

    from shared.db import vectors

    migrate.upgrade(empty_db_url)
    engine = create_fir_engine(empty_db_url)
    try:
        with session_scope(engine) as s:
            cat = db.create_catalogue(s, "p", source_kind="folder", source_path="/p").id
            res = db.upsert_items(
                s,
                cat,
                [
                    db.ScannedItem(
                        key=f"{i}.jpg",
                        sha256=hashlib.sha256(str(i).encode()).hexdigest(),
                        given_category=("dress", "shirt")[i % 2],
                    )
                    for i in range(101)
                ],
            )
            mv = _register(s, "par")
            ids = sorted(res.ids_by_key.values())
            matrix = np.random.default_rng(0).standard_normal((101, 24)).astype(np.float32)
            db.write_embeddings(s, mv, ids, matrix)

        monkeypatch.setattr(vectors, "PARALLEL_MIN_ROWS", 1)
        used: list[int] = []
        real = vectors._load_postgres_parallel

        def spy(*args: object, **kwargs: object) -> object:
            used.append(1)
            return real(*args, **kwargs)  # type: ignore[arg-type]

        monkeypatch.setattr(vectors, "_load_postgres_parallel", spy)
        with session_scope(engine) as s:
            one = db.load_vectors(s, cat, mv, parallel=1)
        for parts in (2, 3):
            with session_scope(engine) as s:
                many = db.load_vectors(s, cat, mv, parallel=parts)
            assert many[0].tolist() == one[0].tolist() == ids
            assert many[1].tobytes() == one[1].tobytes() == matrix.tobytes()
            assert many[2] == one[2]
        is_pg = engine.dialect.name == "postgresql"
        assert len(used) == (2 if is_pg else 0)

        # A session that has written falls back to its own connection (it sees its writes).
        used.clear()
        with session_scope(engine) as s:
            db.write_embeddings(s, mv, ids[:1], np.zeros((1, 24), dtype=np.float32))
            _, mine, _ = db.load_vectors(s, cat, mv, parallel=2)
            assert not mine[0].any()
            s.rollback()
        assert used == []
    finally:
        engine.dispose()


def test_overlapping_query_batch_claims_take_each_job_once(empty_db_url: str, tmp_path: Path) -> None:
    """Workers claiming micro-batches at once, each from its own message's job, over the same
    waiting jobs: every job is claimed by exactly one, and none fails (on PostgreSQL two
    claims that locked rows in opposite orders would deadlock; they lock in id order)."""
    from shared.config import Settings
    from shared.db.session import dispose_engines
    from worker import tasks
    from worker.celery_app import app

    migrate.upgrade(empty_db_url)
    settings = Settings(home=tmp_path, database_url=empty_db_url)
    previous = app.conf.fir_settings
    app.conf.fir_settings = settings
    try:
        with session_scope(settings) as s:
            ids = [db.create_job(s, "query", params={"catalogue_id": 1})[0].id for _ in range(48)]
        # each worker's own job sits at the far end of the others' batches
        owners = [ids[-1 - 2 * i] if i % 2 else ids[2 * i] for i in range(12)]
        claimed: list[int] = []
        errors: list[BaseException] = []
        barrier = threading.Barrier(4)
        lock = threading.Lock()

        def worker(mine: list[int]) -> None:
            barrier.wait(10)
            for job_id in mine:
                try:
                    got, _ = tasks._claim_queries(job_id, None, False, limit=8)
                except BaseException as exc:  # noqa: BLE001 - the assertion below reports it
                    errors.append(exc)
                    continue
                with lock:
                    claimed.extend(j.id for j in got)

        threads = [threading.Thread(target=worker, args=(owners[i::4],)) for i in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert not errors, errors
        assert len(claimed) == len(set(claimed))  # nobody took a job twice
        with session_scope(settings) as s:
            running = {j.id for j in db.list_jobs(s, status="running", job_type="query", limit=100)}
        assert running == set(claimed)
    finally:
        app.conf.fir_settings = previous
        dispose_engines()
