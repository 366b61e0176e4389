"""The Celery app factory, built from :class:`~shared.config.Settings`.

The API imports this module to enqueue by task name (``send_task``): it imports no task
module and never torch. ``worker.celery_app`` exposes the ``app`` that
``celery -A worker.celery_app worker -Q gpu`` (and ``-Q cpu``, ``beat``) run. Queues: ``gpu`` (embedding, queries, training) and ``cpu`` (scanning, dedup,
housekeeping). Tasks are named explicitly; arguments are ids only (JSON).
"""

from __future__ import annotations

from pathlib import Path

from celery import Celery
from celery.schedules import crontab
from kombu import Queue
from kombu.transport import TRANSPORT_ALIASES

from shared.config import Settings

TASK_QUERY = "fir.query"
TASK_INDEX = "fir.index"
TASK_NIGHTLY_REINDEX = "fir.nightly_reindex"
TASK_HOUSEKEEPING = "fir.housekeeping"
TASK_DEDUP = "fir.dedup"

ROUTES = {
    TASK_QUERY: {"queue": "gpu"},
    TASK_INDEX: {"queue": "gpu"},
    TASK_NIGHTLY_REINDEX: {"queue": "cpu"},
    TASK_HOUSEKEEPING: {"queue": "cpu"},
    TASK_DEDUP: {"queue": "cpu"},
}


# ``filesystem://`` means FIR's atomic variant of kombu's filesystem transport (see
# worker.fs_transport): kombu resolves the alias when a connection opens, in every process
# that imports this module (the API's producers and the workers alike).
TRANSPORT_ALIASES["filesystem"] = "worker.fs_transport:Transport"


def broker_settings(settings: Settings) -> tuple[str, dict[str, object]]:
    """The broker URL and transport options; the default is kombu's filesystem transport
    under FIR's home (no server to run)."""
    if settings.broker_url and not settings.broker_url.startswith("filesystem"):
        timeout = settings.broker_visibility_timeout or settings.task_hard_time_limit + 60
        # unacked tasks of a dead worker are looked for every few seconds (kombu's default scan
        # runs about every 100 s), so redelivery follows the visibility timeout closely
        return settings.broker_url, {"visibility_timeout": timeout,
                                     "unacked_restore_interval": max(1, min(10, timeout // 2)),
                                     "unacked_restore_throttle": 1}
    folder = settings.resolved_home() / "broker"
    queue_dir = folder / "queue"
    processed = folder / "processed"
    control = folder / "control"
    for d in (queue_dir, processed, control):
        d.mkdir(parents=True, exist_ok=True)
    return "filesystem://", {
        "data_folder_in": str(queue_dir),
        "data_folder_out": str(queue_dir),
        "processed_folder": str(processed),
        "control_folder": str(control),  # kombu's default is ./control in the working directory
        "store_processed": False,
        # seconds between looks at the queue folder when nothing rings the broker bell
        # (worker/fs_transport.py: a put rings it, and a waiting worker looks within ~2 ms)
        "polling_interval": 0.05,
    }


def make_celery(settings: Settings | None = None) -> Celery:
    settings = settings or Settings()
    url, options = broker_settings(settings)
    app = Celery("fir", broker=url)
    hour, minute = (int(x) for x in settings.nightly_reindex_at.split(":"))
    app.conf.update(
        broker_transport_options=options,
        broker_connection_retry_on_startup=True,
        task_serializer="json",
        accept_content=["json"],
        task_ignore_result=True,  # job state lives in FIR's own database
        result_backend=None,
        task_queues=[Queue("gpu"), Queue("cpu")],
        task_default_queue="cpu",
        task_routes=ROUTES,
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        # a pool process loads the model (CUDA set-up on a GPU) and runs one forward before it
        # reports ready (worker.tasks._after_fork): Celery's default 4 s would kill a slow one
        worker_proc_alive_timeout=120.0,
        task_soft_time_limit=settings.task_soft_time_limit,
        task_time_limit=settings.task_hard_time_limit,
        worker_hijack_root_logger=False,
        timezone="UTC",
        enable_utc=True,
        beat_schedule={
            "nightly-reindex": {"task": TASK_NIGHTLY_REINDEX, "schedule": crontab(hour=hour, minute=minute)},
            "housekeeping": {"task": TASK_HOUSEKEEPING, "schedule": settings.housekeeping_every_s},
        },
        beat_schedule_filename=str(Path(settings.resolved_home()) / "celerybeat-schedule"),
    )
    app.conf.fir_settings = settings
    return app


def queue_of(task_name: str) -> str:
    return str(ROUTES[task_name]["queue"])
