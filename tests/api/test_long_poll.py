"""GET /api/v1/jobs/<id>?wait=S: answered when the job finishes, or after S seconds."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest

from api.routes.jobs import WAIT_DB_POLL_S
from shared import jobbell
from shared.db import services
from shared.db.session import get_engine, session_scope
from tests.api.conftest import ApiEnv


def _new_job(api: ApiEnv) -> int:
    resp = api.client.post(f"/api/v1/catalogues/{api.catalogue_id}/reindex", json={"full": False})
    assert resp.status_code == 202
    return int(resp.get_json()["job_id"])


def test_wait_answers_when_the_job_finishes(api: ApiEnv) -> None:
    job_id = _new_job(api)
    started = threading.Event()

    def worker() -> None:
        started.wait(10)
        time.sleep(0.3)  # the request below is waiting by now
        with session_scope(api.settings) as s:
            services.transition_job(s, job_id, "running")
        with session_scope(api.settings) as s:
            services.transition_job(s, job_id, "succeeded", result={"note": "done"})

    thread = threading.Thread(target=worker)
    thread.start()
    started.set()
    t0 = time.monotonic()
    resp = api.client.get(f"/api/v1/jobs/{job_id}?wait=15")
    took = time.monotonic() - t0
    thread.join(10)
    assert resp.status_code == 200
    body = resp.get_json()
    assert body["status"] == "succeeded"  # seen only because the request waited for it
    assert took < 10  # answered when the job finished, not when the wait ran out


def test_wait_ends_with_the_job_still_running(api: ApiEnv) -> None:
    job_id = _new_job(api)
    t0 = time.monotonic()
    resp = api.client.get(f"/api/v1/jobs/{job_id}?wait=0.3")
    assert time.monotonic() - t0 >= 0.3
    assert resp.status_code == 200 and resp.get_json()["status"] == "queued"
    # without wait (and for a finished job) the answer is immediate, as before
    assert api.client.get(f"/api/v1/jobs/{job_id}").get_json()["status"] == "queued"


def test_wait_is_capped_by_the_server(api: ApiEnv) -> None:
    job_id = _new_job(api)
    app = api.client.application
    settings = app.extensions["fir_settings"]
    app.extensions["fir_settings"] = settings.model_copy(update={"api_max_wait_s": 0.1})
    try:
        t0 = time.monotonic()
        resp = api.client.get(f"/api/v1/jobs/{job_id}?wait=60")
        assert time.monotonic() - t0 < 5
    finally:
        app.extensions["fir_settings"] = settings
    assert resp.status_code == 200 and resp.get_json()["status"] == "queued"


def test_bad_wait_values_are_refused(api: ApiEnv) -> None:
    job_id = _new_job(api)
    for bad in ("-1", "61", "soon"):
        resp = api.client.get(f"/api/v1/jobs/{job_id}?wait={bad}")
        assert resp.status_code == 422, bad
        assert "wait" in resp.get_data(as_text=True)
    missing = api.client.get("/api/v1/jobs/99999999?wait=5")
    assert missing.status_code == 404  # at once, not after the wait


def test_finishing_a_job_rings_the_bell_after_the_commit_only(api: ApiEnv) -> None:
    bell = jobbell.bell_path(api.settings.resolved_home())
    job_id = _new_job(api)
    before = jobbell.stamp(bell)
    with session_scope(api.settings) as s:
        services.transition_job(s, job_id, "running")  # not terminal: no ring
    assert jobbell.stamp(bell) == before
    with pytest.raises(RuntimeError), session_scope(api.settings) as s:
        services.transition_job(s, job_id, "succeeded")
        raise RuntimeError("rolled back")
    assert jobbell.stamp(bell) == before  # rolled back: nothing finished, no ring
    with session_scope(api.settings) as s:
        services.transition_job(s, job_id, "succeeded")
    assert jobbell.stamp(bell) != before


def test_a_waiting_request_reads_the_database_rarely(api: ApiEnv, monkeypatch: pytest.MonkeyPatch) -> None:
    job_id = _new_job(api)
    reads = []
    real = services.get_job
    monkeypatch.setattr(services, "get_job", lambda s, j: reads.append(j) or real(s, j))
    resp = api.client.get(f"/api/v1/jobs/{job_id}?wait=0.5")
    assert resp.get_json()["status"] == "queued"
    # the bell is watched in between: 0.5 s / WAIT_DB_POLL_S reads at most, not one per few ms
    assert 1 <= len(reads) <= 0.5 / WAIT_DB_POLL_S + 2


def test_a_job_finished_without_a_ring_is_still_seen(api: ApiEnv) -> None:
    """A process that rings no bell this API sees (another file system): the database poll
    still answers the wait, within WAIT_DB_POLL_S."""
    job_id = _new_job(api)
    engine = get_engine(api.settings)

    def finish() -> None:
        time.sleep(0.2)
        with session_scope(engine) as s:  # an engine target rings nothing
            services.transition_job(s, job_id, "running")
            services.transition_job(s, job_id, "succeeded")

    thread = threading.Thread(target=finish)
    thread.start()
    t0 = time.monotonic()
    resp = api.client.get(f"/api/v1/jobs/{job_id}?wait=20")
    took = time.monotonic() - t0
    thread.join(10)
    assert resp.get_json()["status"] == "succeeded"
    assert took < 10


def _hub(api: ApiEnv) -> jobbell.Hub:
    return jobbell.hub(jobbell.bell_path(api.settings.resolved_home()))


def _finish_later(api: ApiEnv, job_id: int, after_s: float, ring: bool) -> threading.Thread:
    """Finishes the job from another thread; ``ring=False``: through an engine target, which
    rings nothing (a worker this API does not hear)."""
    target = api.settings if ring else get_engine(api.settings)

    def finish() -> None:
        time.sleep(after_s)
        with session_scope(target) as s:
            services.transition_job(s, job_id, "running")
            services.transition_job(s, job_id, "succeeded")

    thread = threading.Thread(target=finish)
    thread.start()
    return thread


def test_waits_read_the_database_less_once_the_bell_is_trusted(api: ApiEnv, monkeypatch: pytest.MonkeyPatch) -> None:
    """Jobs heard finishing by the bell make the hub trusted; a wait then reads the job about
    every WAIT_DB_POLL_TRUSTED_S instead of every WAIT_DB_POLL_S. A finish that comes without a
    ring is still seen, within the longer interval, and takes the trust back."""
    import api.routes.jobs as jobs_routes
    from api.routes.jobs import WAIT_DB_POLL_TRUSTED_S

    hub = _hub(api)
    hub.heard(False)  # whatever earlier tests left
    assert hub.listening  # the test's premise: this process hears the bell through its socket
    with monkeypatch.context() as m:
        m.setattr(jobs_routes, "WAIT_DB_POLL_S", 5.0)  # only the ring wakes these waits
        for _ in range(jobbell.TRUSTED_AFTER):
            job_id = _new_job(api)
            thread = _finish_later(api, job_id, 0.1, ring=True)
            assert api.client.get(f"/api/v1/jobs/{job_id}?wait=10").get_json()["status"] == "succeeded"
            thread.join(10)
    assert hub.trusted
    reads: list[int] = []
    real = services.get_job
    monkeypatch.setattr(services, "get_job", lambda s, j: reads.append(j) or real(s, j))
    job_id = _new_job(api)
    api.client.get(f"/api/v1/jobs/{job_id}?wait=1")
    assert 1 <= len(reads) <= 1 / WAIT_DB_POLL_TRUSTED_S + 2  # untrusted: about 1 / WAIT_DB_POLL_S
    thread = _finish_later(api, job_id, 0.2, ring=False)
    t0 = time.monotonic()
    assert api.client.get(f"/api/v1/jobs/{job_id}?wait=10").get_json()["status"] == "succeeded"
    took = time.monotonic() - t0
    thread.join(10)
    assert took < 0.2 + WAIT_DB_POLL_TRUSTED_S + 1.0
    assert not hub.trusted  # found by a read, not a ring: back to reading every WAIT_DB_POLL_S
    reads.clear()
    job_id = _new_job(api)
    api.client.get(f"/api/v1/jobs/{job_id}?wait=0.5")
    assert len(reads) >= 0.5 / WAIT_DB_POLL_S / 2


def test_a_ring_that_lands_while_the_job_is_read_was_not_missed(api: ApiEnv, monkeypatch: pytest.MonkeyPatch) -> None:
    """The worker commits, then rings: a poll's read can see the finished job a moment before
    the ring arrives. That finish counts as heard by the bell, not as a lost ring."""
    hub = _hub(api)
    hub.heard(False)
    job_id = _new_job(api)
    calls: list[int] = []
    real = services.get_job

    def read(session: Any, j: int) -> Any:
        calls.append(j)
        if len(calls) == 2:  # the wait's first poll: the job finishes and rings just before this read
            with session_scope(get_engine(api.settings)) as s:
                services.transition_job(s, job_id, "running")
                services.transition_job(s, job_id, "succeeded")
            jobbell.ring(jobbell.bell_path(api.settings.resolved_home()))
            time.sleep(0.1)  # the hub's thread counts it
        return real(session, j)

    monkeypatch.setattr(services, "get_job", read)
    assert api.client.get(f"/api/v1/jobs/{job_id}?wait=5").get_json()["status"] == "succeeded"
    assert len(calls) == 2
    for _ in range(jobbell.TRUSTED_AFTER - 1):
        hub.heard(True)
    assert hub.trusted  # the finish above counted as the first of TRUSTED_AFTER
