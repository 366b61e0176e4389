"""The worker's logs and metrics.

Logs: Celery's ``setup_logging`` signal hands logging to :mod:`shared.logging_setup` (JSON
lines by default); ``task_prerun``/``task_postrun`` bind the task id and the job id (the
task's first argument) to every record the task writes.

Metrics (``FIR_WORKER_METRICS_PORT`` > 0): the worker's main process serves
``http://FIR_WORKER_METRICS_HOST:PORT/metrics``; the tasks run in pool processes, which write
their metrics to files (prometheus_client's multiprocess mode, a folder per worker under
``$FIR_HOME/metrics``) that the main process sums on every scrape.

- ``fir_worker_embedded_images_total{kind}`` and ``fir_worker_embedding_seconds_total{kind}``
  (kind: ``index`` or ``query``): throughput is their ratio, e.g.
  ``rate(fir_worker_embedded_images_total[5m]) / rate(fir_worker_embedding_seconds_total[5m])``;
  an index batch's time includes decoding and writing its vectors;
- ``fir_worker_embedding_images_per_second{kind}``: the most recent batch's rate;
- ``fir_worker_tasks_total{task,state}`` and ``fir_worker_task_duration_seconds{task}``.

prometheus_client is imported only after the metrics folder is chosen (the mode is fixed at
import); nothing here imports torch.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import time
from functools import lru_cache
from pathlib import Path
from typing import Any

from celery import signals

from shared import logging_setup
from shared.config import Settings
from shared.procs import pid_alive

log = logging.getLogger(__name__)

_started: dict[str, float] = {}  # task id -> perf_counter at prerun
_tokens: dict[str, Any] = {}


def _settings(sender: Any = None) -> Settings:
    app = getattr(sender, "app", None)
    conf = getattr(app, "conf", None)
    found = getattr(conf, "fir_settings", None) if conf is not None else None
    if isinstance(found, Settings):
        return found
    from worker.celery_app import app as celery_app

    return celery_app.conf.fir_settings


# -- logging -----------------------------------------------------------------------------------
@signals.setup_logging.connect
def _setup_logging(loglevel: Any = None, **_: Any) -> None:
    """Celery leaves logging alone when this signal has a receiver: FIR configures it."""
    from worker.celery_app import app

    s: Settings = app.conf.fir_settings
    level = s.log_level if loglevel in (None, "") else loglevel
    logging_setup.configure_logging(s.log_format, level, process_name="worker")


@signals.task_prerun.connect
def _task_prerun(task_id: str | None = None, task: Any = None, args: Any = None, **_: Any) -> None:
    job_id = args[0] if args and isinstance(args[0], int) else None
    if task_id:
        _tokens[task_id] = logging_setup.bind(task_id=task_id, job_id=job_id)
        _started[task_id] = time.perf_counter()


@signals.task_postrun.connect
def _task_postrun(task_id: str | None = None, task: Any = None, state: str | None = None, **_: Any) -> None:
    started = _started.pop(task_id or "", None)
    name = getattr(task, "name", None) or "unknown"
    if started is not None and metrics_enabled():
        m = _metrics()
        m["tasks"].labels(name, (state or "unknown").lower()).inc()
        m["task_seconds"].labels(name).observe(time.perf_counter() - started)
    tokens = _tokens.pop(task_id or "", None)
    if tokens:
        logging_setup.unbind(tokens)
    else:
        logging_setup.clear()


# -- metrics -----------------------------------------------------------------------------------
def metrics_enabled() -> bool:
    return bool(os.environ.get("PROMETHEUS_MULTIPROC_DIR"))


def metrics_dir(settings: Settings, pid: int | None = None) -> Path:
    return settings.resolved_home() / "metrics" / f"worker-{pid or os.getpid()}"


@signals.worker_init.connect
def _worker_init(sender: Any = None, **_: Any) -> None:
    """In the worker's main process, before the pool forks: choose the metrics folder."""
    s = _settings(sender)
    if s.worker_metrics_port <= 0 or os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        return
    folder = metrics_dir(s)
    _remove_stale(folder.parent)
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True, exist_ok=True)
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(folder)


def _remove_stale(parent: Path) -> None:
    """Folders of workers whose process is gone."""
    if not parent.is_dir():
        return
    for folder in parent.glob("worker-*"):
        pid = folder.name.removeprefix("worker-")
        if pid.isdigit() and not pid_alive(int(pid)):
            shutil.rmtree(folder, ignore_errors=True)


@signals.worker_ready.connect
def _worker_ready(sender: Any = None, **_: Any) -> None:
    s = _settings(sender)
    if s.worker_metrics_port <= 0 or not metrics_enabled():
        return
    from prometheus_client import CollectorRegistry, multiprocess, start_http_server

    registry = CollectorRegistry(auto_describe=False)
    multiprocess.MultiProcessCollector(registry)
    try:
        start_http_server(s.worker_metrics_port, addr=s.worker_metrics_host, registry=registry)
    except OSError as exc:  # another worker on this host has the port: run on without
        log.warning("worker metrics not served on %s:%d: %s", s.worker_metrics_host, s.worker_metrics_port, exc)
        return
    log.info("worker metrics on http://%s:%d/metrics", s.worker_metrics_host, s.worker_metrics_port)


@signals.worker_process_shutdown.connect
def _process_shutdown(pid: int | None = None, **_: Any) -> None:
    if metrics_enabled():
        from prometheus_client import multiprocess

        with contextlib.suppress(Exception):
            multiprocess.mark_process_dead(pid or os.getpid())


@signals.worker_shutdown.connect
def _worker_shutdown(sender: Any = None, **_: Any) -> None:
    folder = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if folder and Path(folder).name == f"worker-{os.getpid()}":
        shutil.rmtree(folder, ignore_errors=True)


@lru_cache(maxsize=1)
def _metrics() -> dict[str, Any]:
    from prometheus_client import Counter, Gauge, Histogram

    return {
        "images": Counter("fir_worker_embedded_images_total", "Images embedded by this worker.", ["kind"]),
        "seconds": Counter("fir_worker_embedding_seconds_total", "Seconds spent embedding them.", ["kind"]),
        "rate": Gauge("fir_worker_embedding_images_per_second", "The most recent embedding batch's rate.",
                      ["kind"], multiprocess_mode="mostrecent"),
        "tasks": Counter("fir_worker_tasks_total", "Tasks finished, by name and state.", ["task", "state"]),
        "task_seconds": Histogram("fir_worker_task_duration_seconds", "Task run time.", ["task"],
                                  buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600)),
    }


def record_embedding(kind: str, images: int, seconds: float) -> None:
    """Count ``images`` embedded in ``seconds`` (no-op while worker metrics are off)."""
    if images <= 0 or not metrics_enabled():
        return
    m = _metrics()
    m["images"].labels(kind).inc(images)
    m["seconds"].labels(kind).inc(max(seconds, 0.0))
    if seconds > 0:
        m["rate"].labels(kind).set(images / seconds)


class EmbeddingMeter:
    """Turns an index job's ``progress(done, total)`` calls into embedding throughput."""

    def __init__(self, kind: str = "index") -> None:
        self.kind = kind
        self.done = 0
        self.at = time.perf_counter()

    def update(self, done: int) -> None:
        now = time.perf_counter()
        if done > self.done:
            record_embedding(self.kind, done - self.done, now - self.at)
        self.done = max(done, self.done)
        self.at = now
