"""Request ids, one JSON access-log line per request, and Prometheus metrics for the API.

Metrics (``GET /metrics``, Prometheus text format):

- ``fir_http_request_duration_seconds{method,route,status}``: request latency by route
  (the URL rule, e.g. ``/api/v1/jobs/<int:job_id>``, never the raw path);
- read from the database on every scrape, so every API process answers the same:
  ``fir_jobs{type,status}``, ``fir_queue_depth{type}`` (jobs queued per type),
  ``fir_active_model_version{model_id,backbone}`` (value: the version id),
  ``fir_index_size{catalogue_id,catalogue}`` (vectors of the active model),
  ``fir_catalogue_items{catalogue_id,catalogue,status}``, ``fir_workers_live``,
  ``fir_metrics_database_up``.

Several API processes (gunicorn's workers): with ``PROMETHEUS_MULTIPROC_DIR`` set (``fir up``
sets it), the latency histogram is summed over every process (prometheus_client's
multiprocess mode). Without it, each process counts only its own requests, and a scrape sees
the process that answered it.
"""

from __future__ import annotations

import logging
import os
import re
import time
import uuid
from collections.abc import Iterator
from typing import Any

from flask import Flask, Response, g, request
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from shared import logging_setup
from shared.config import Settings

access_log = logging.getLogger("fir.access")
log = logging.getLogger(__name__)

REQUEST_ID_HEADER = "X-Request-ID"
_SAFE_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
QUIET_ROUTES = ("/metrics", "/healthz", "/readyz", "/static/<path:filename>")

APP_REGISTRY = CollectorRegistry(auto_describe=True)
REQUEST_SECONDS = Histogram(
    "fir_http_request_duration_seconds", "HTTP request latency by route.",
    ["method", "route", "status"], registry=APP_REGISTRY,
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0),
)


def init_app(app: Flask) -> None:
    """Request ids (``X-Request-ID`` in and out), latency metrics, the access log."""

    @app.before_request
    def _start() -> None:
        incoming = request.headers.get(REQUEST_ID_HEADER, "")
        rid = incoming if _SAFE_ID.match(incoming) else uuid.uuid4().hex
        g.fir_request_id = rid
        g.fir_started = time.perf_counter()
        g.fir_log_tokens = logging_setup.bind(request_id=rid)

    @app.after_request
    def _finish(response: Response) -> Response:
        rid = g.get("fir_request_id")
        if rid:
            response.headers[REQUEST_ID_HEADER] = rid
        started = g.get("fir_started")
        if started is None:
            return response
        elapsed = time.perf_counter() - started
        route = request.url_rule.rule if request.url_rule is not None else "<unmatched>"
        REQUEST_SECONDS.labels(request.method, route, str(response.status_code)).observe(elapsed)
        level = logging.DEBUG if route in QUIET_ROUTES else logging.INFO
        access_log.log(level, "%s %s %d", request.method, request.path, response.status_code,
                       extra={"request_id": rid, "method": request.method, "path": request.path, "route": route,
                              "status": response.status_code, "duration_ms": round(elapsed * 1000, 2)})
        return response

    @app.teardown_request
    def _unbind(_exc: BaseException | None) -> None:
        tokens = g.pop("fir_log_tokens", None)
        if tokens:
            logging_setup.unbind(tokens)


class _Forward(Collector):
    """Yields another registry's metrics (this process's, outside multiprocess mode)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry

    def collect(self) -> Iterator[Any]:
        yield from self.registry.collect()


class DatabaseCollector(Collector):
    """Gauges read from FIR's database at scrape time."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    def collect(self) -> Iterator[Any]:
        from shared.db import heartbeat, services, stats
        from shared.db.session import session_scope

        up = GaugeMetricFamily("fir_metrics_database_up", "1 when the scrape could read the database.")
        try:
            with session_scope(self.settings) as session:
                counts = stats.job_counts(session)
                depth = stats.queue_depth(session)
                active = services.get_active_model_version(session)
                sizes = stats.catalogue_sizes(session, active.id if active else None)
                live = heartbeat.recent(session, max_age_s=max(30.0, 3 * self.settings.worker_heartbeat_s))
        except Exception as exc:  # noqa: BLE001 - a scrape reports, never fails
            log.warning("metrics: database unreadable: %s", exc)
            up.add_metric([], 0.0)
            yield up
            return
        up.add_metric([], 1.0)
        yield up
        jobs = GaugeMetricFamily("fir_jobs", "Jobs in the database by type and status.",
                                 labels=["type", "status"])
        for (job_type, status), n in sorted(counts.items()):
            jobs.add_metric([job_type, status], n)
        yield jobs
        queue = GaugeMetricFamily("fir_queue_depth", "Jobs queued (not yet running) per type.", labels=["type"])
        for job_type in sorted(set(depth) | {"query", "index", "reindex", "dedup"}):
            queue.add_metric([job_type], depth.get(job_type, 0))
        yield queue
        model = GaugeMetricFamily("fir_active_model_version",
                                  "The active model version (value: its id; absent when none).",
                                  labels=["model_id", "backbone"])
        if active is not None:
            model.add_metric([active.model_id or "", active.backbone], active.id)
        yield model
        index = GaugeMetricFamily("fir_index_size", "Catalogue items with a vector of the active model.",
                                  labels=["catalogue_id", "catalogue"])
        items = GaugeMetricFamily("fir_catalogue_items", "Catalogue items by status.",
                                  labels=["catalogue_id", "catalogue", "status"])
        for size in sizes:
            index.add_metric([str(size.catalogue_id), size.name], size.indexed)
            for status, n in sorted(size.items_by_status.items()):
                items.add_metric([str(size.catalogue_id), size.name, status], n)
        yield index
        yield items
        workers = GaugeMetricFamily("fir_workers_live", "Workers whose heartbeat is recent.")
        workers.add_metric([], len(live))
        yield workers


def multiprocess_dir() -> str | None:
    return os.environ.get("PROMETHEUS_MULTIPROC_DIR") or None


def render(settings: Settings) -> tuple[bytes, str]:
    """The metrics page: this process's (or every process's) metrics plus the database's."""
    registry = CollectorRegistry(auto_describe=False)
    if multiprocess_dir():
        from prometheus_client import multiprocess

        multiprocess.MultiProcessCollector(registry)
    else:
        registry.register(_Forward(APP_REGISTRY))
    registry.register(DatabaseCollector(settings))
    return generate_latest(registry), CONTENT_TYPE_LATEST
