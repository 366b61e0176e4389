"""The ``celery -A worker.celery_app`` target: only exposes ``app``."""

from __future__ import annotations

from worker.factory import make_celery

app = make_celery()
app.conf.include = ["worker.tasks"]
