"""What operators get from the running service: Prometheus metrics from the API (summed over
gunicorn's two workers) and from the worker, and JSON log lines carrying job, task and request
ids."""

from __future__ import annotations

import re

import pytest
import requests

from tests.e2e.conftest import Live, json_lines
from tests.integration.test_service import poll_job, wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


def _value(text: str, name: str, **labels: str) -> float | None:
    for line in text.splitlines():
        if not line.startswith(name + "{") and not line.startswith(name + " "):
            continue
        if all(f'{k}="{v}"' in line for k, v in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    return None


def test_metrics_and_logs(live: Live) -> None:
    photo = next((live.trained.catalogue / "test" / "shirt").glob("*.jpg")).read_bytes()
    job_ids = []
    for n in range(4):  # enough requests that both gunicorn workers answer some
        resp = requests.post(f"{live.base}/api/v1/queries", data={"catalogue": "shop", "k": "2"},
                             files={"file": ("q.jpg", photo, "image/jpeg")}, timeout=30,
                             headers={"X-Request-ID": f"e2e-req-{n}"})
        assert resp.status_code == 202, resp.text
        assert resp.headers["X-Request-ID"] == f"e2e-req-{n}"
        job_ids.append(resp.json()["job_id"])
    for job_id in job_ids:
        assert poll_job(live.base, job_id, logs=live.logs)["status"] == "succeeded"

    text = requests.get(f"{live.base}/metrics", timeout=10).text
    posted = _value(text, "fir_http_request_duration_seconds_count", route="/api/v1/queries", method="POST",
                    status="202")
    assert posted is not None and posted >= 4, "the latency histogram sums every API process"
    assert _value(text, "fir_index_size", catalogue="shop") == 48
    assert _value(text, "fir_catalogue_items", catalogue="shop", status="active") == 48
    assert (_value(text, "fir_jobs", type="query", status="succeeded") or 0) >= 4
    assert _value(text, "fir_queue_depth", type="query") is not None
    assert re.search(rf'fir_active_model_version\{{[^}}]*model_id="{live.trained.model_id}"', text)
    assert _value(text, "fir_workers_live") == 1
    assert _value(text, "fir_metrics_database_up") == 1

    worker_url = f"http://127.0.0.1:{live.worker_metrics_port}/metrics"

    def scraped() -> str | None:
        body = requests.get(worker_url, timeout=5).text
        return body if _value(body, "fir_worker_embedded_images_total", kind="query") else None

    worker = wait_for(scraped, 30, "worker metrics", live.logs)
    assert (_value(worker, "fir_worker_embedded_images_total", kind="query") or 0) >= 4
    assert (_value(worker, "fir_worker_embedding_seconds_total", kind="query") or 0) > 0
    assert (_value(worker, "fir_worker_embedding_images_per_second", kind="query") or 0) > 0
    assert (_value(worker, "fir_worker_tasks_total", task="fir.query", state="success") or 0) >= 1

    worker_lines = json_lines(live.logs[0])
    assert worker_lines, "the worker logs JSON lines"
    in_tasks = [r for r in worker_lines if r.get("job_id") in job_ids]
    assert in_tasks and all(r.get("task_id") for r in in_tasks), "records inside a task carry job and task ids"
    api_lines = json_lines(live.logs[1])
    assert any(r.get("logger") == "gunicorn.error" for r in api_lines), "gunicorn's own lines are JSON too"
    access = [r for r in api_lines if r.get("logger") == "fir.access" and r.get("request_id", "").startswith("e2e-req-")]
    assert len(access) == 4 and all(r["status"] == 202 and r["route"] == "/api/v1/queries" for r in access)
