"""The ``celery -A worker.celery_app`` target: only exposes ``app``."""

from __future__ import annotations

from worker import observability  # noqa: F401 - connects the logging and metrics signals
from worker.factory import make_celery

app = make_celery()
app.conf.include = ["worker.tasks"]
