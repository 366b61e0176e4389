"""A job left 'running' by a worker that died is taken over on redelivery, never skipped
(skipping it would lose an accepted job); a live one elsewhere is re-checked later."""

from __future__ import annotations

import io
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from celery.exceptions import Retry
from PIL import Image
from sqlalchemy import update

from shared.db import services
from shared.db.models import Job
from shared.db.session import session_scope
from tests.api.conftest import ApiEnv


@pytest.fixture()
def tasks(api: ApiEnv) -> Iterator[Any]:
    from worker import holder, tasks
    from worker.celery_app import app

    previous = app.conf.fir_settings
    app.conf.fir_settings = api.settings
    holder.reset_holder()
    yield tasks
    app.conf.fir_settings = previous
    holder.reset_holder()


def _running_job(api: ApiEnv, task_id: str, idle_s: float = 0.0) -> int:
    buf = io.BytesIO()
    Image.new("RGB", (48, 48), (30, 160, 90)).save(buf, "JPEG")
    buf.seek(0)
    resp = api.client.post("/api/v1/queries", content_type="multipart/form-data",
                           data={"catalogue": "demo", "k": "3", "file": (buf, "q.jpg")})
    job_id = int(resp.get_json()["job_id"])
    with session_scope(api.settings) as session:
        session.execute(update(Job).where(Job.id == job_id).values(task_id=task_id))
        services.transition_job(session, job_id, "running")  # claimed by a worker that then died
        if idle_s:
            session.execute(update(Job).where(Job.id == job_id)
                            .values(updated_at=datetime.now(UTC) - timedelta(seconds=idle_s)))
    return job_id


def _deliver(task: Any, job_id: int, task_id: str, redelivered: bool) -> Any:
    task.push_request(id=task_id, delivery_info={"redelivered": redelivered})
    try:
        return task.run(job_id)
    finally:
        task.pop_request()


def test_redelivered_own_message_takes_the_job_over(api: ApiEnv, tasks: Any) -> None:
    job_id = _running_job(api, "t-own")
    out = _deliver(tasks.run_query, job_id, "t-own", redelivered=True)
    assert job_id in out["answered"]
    job = api.client.get(f"/api/v1/jobs/{job_id}").get_json()
    assert job["status"] == "succeeded" and len(job["results"]) == 3


def test_a_live_job_elsewhere_is_rechecked_not_dropped(api: ApiEnv, tasks: Any) -> None:
    job_id = _running_job(api, "t-live")
    with pytest.raises(Retry):
        _deliver(tasks.run_query, job_id, "t-live", redelivered=False)
    assert api.client.get(f"/api/v1/jobs/{job_id}").get_json()["status"] == "running"


def test_a_stale_running_job_is_taken_over(api: ApiEnv, tasks: Any) -> None:
    job_id = _running_job(api, "t-stale", idle_s=tasks.QUERY_STALE_S + 30)
    out = _deliver(tasks.run_query, job_id, "t-stale", redelivered=False)
    assert job_id in out["answered"]
    assert api.client.get(f"/api/v1/jobs/{job_id}").get_json()["status"] == "succeeded"


def test_a_query_job_stores_the_task_id_its_message_carries(api: ApiEnv, monkeypatch: pytest.MonkeyPatch) -> None:
    """The submit chooses the task id, stores it with the job and sends the message under it,
    so that a redelivery of that message is recognised as the job's own."""
    given: list[str | None] = []
    real = api.client.application.extensions["fir_enqueue"]

    def spy(task: str, job_id: int, task_id: str | None = None) -> str | None:
        given.append(task_id)
        return real(task, job_id, task_id)

    monkeypatch.setitem(api.client.application.extensions, "fir_enqueue", spy)
    buf = io.BytesIO()
    Image.new("RGB", (48, 48), (90, 30, 160)).save(buf, "JPEG")
    buf.seek(0)
    resp = api.client.post("/api/v1/queries", content_type="multipart/form-data",
                           data={"catalogue": "demo", "k": "3", "file": (buf, "q.jpg")})
    assert resp.status_code == 202
    job_id = int(resp.get_json()["job_id"])
    with session_scope(api.settings) as session:
        stored = services.get_job(session, job_id).task_id
    assert given and given[0] is not None and stored == given[0]
    assert api.client.delete(f"/api/v1/jobs/{job_id}").status_code == 200  # leave no queued query behind
