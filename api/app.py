"""The application factory: nothing happens at import time."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from apiflask import APIFlask

from shared.config import Settings

log = logging.getLogger(__name__)

# (task name, job id, task id or None) -> the broker's task id; a given task id is used as is
Enqueue = Callable[[str, int, str | None], str | None]


def celery_enqueuer(settings: Settings) -> Enqueue:
    """Send a task by name through the Celery app (no task module imported)."""
    from worker.factory import make_celery, queue_of

    celery = make_celery(settings)

    def enqueue(task_name: str, job_id: int, task_id: str | None = None) -> str | None:
        result = celery.send_task(task_name, args=[job_id], queue=queue_of(task_name), task_id=task_id)
        return str(result.id)

    return enqueue


def create_app(settings: Settings | None = None, enqueue: Enqueue | None = None) -> APIFlask:
    settings = settings or Settings()
    app = APIFlask(__name__, title="FIR", version="1", spec_path="/api/v1/openapi.json",
                   docs_path="/api/v1/docs")
    app.config["MAX_CONTENT_LENGTH"] = settings.max_upload_bytes + 1024 * 1024
    app.config["VALIDATION_ERROR_STATUS_CODE"] = 422
    app.config["SYNC_LOCAL_SPEC"] = False
    app.config["AUTO_404_RESPONSE"] = True
    app.config["JSON_SORT_KEYS"] = False
    app.extensions["fir_settings"] = settings
    app.extensions["fir_enqueue"] = enqueue or celery_enqueuer(settings)

    from api import errors, observability, openapi
    from api.routes import catalogues, health, jobs, metrics, queries, ui

    errors.register(app)
    from api import auth

    auth.init_app(app)  # API keys: before every other request hook
    from api import guards

    guards.init_app(app)
    openapi.register(app)
    observability.init_app(app)
    app.config.update(ui.DOCS_CONFIG)  # the docs page's JS/CSS are served locally, not from a CDN
    app.register_blueprint(health.bp)
    app.register_blueprint(catalogues.bp)
    app.register_blueprint(queries.bp)
    app.register_blueprint(jobs.bp)
    app.register_blueprint(_dedup_blueprint())
    app.register_blueprint(metrics.bp)
    app.register_blueprint(ui.bp)
    return app


def fir_settings() -> Settings:
    from flask import current_app

    return current_app.extensions["fir_settings"]


def enqueue(task_name: str, job_id: int, task_id: str | None = None) -> str | None:
    from flask import current_app

    fn: Any = current_app.extensions["fir_enqueue"]
    return fn(task_name, job_id, task_id)


def _dedup_blueprint() -> Any:
    """The de-duplication routes (api/routes/dedup.py)."""
    from api.routes import dedup

    return dedup.bp
