"""gunicorn's own settings for FIR: ``gunicorn -c python:api.gunicorn_conf api.wsgi:app``
(``fir up`` does). gunicorn's log lines (start, workers booting and exiting, timeouts) come out
in the same format as the app's (``FIR_LOG_FORMAT``, JSON by default), and there is no gunicorn
access log: the app writes one ``fir.access`` line per request, with its request id."""

from __future__ import annotations

from typing import Any

from shared.config import Settings

_settings = Settings()

_formatter: dict[str, Any] = (
    {"()": "shared.logging_setup.JsonFormatter", "process_name": "gunicorn"}
    if _settings.log_format == "json"
    else {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"}
)

accesslog = None
logconfig_dict: dict[str, Any] = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"fir": _formatter},
    "handlers": {"stderr": {"class": "logging.StreamHandler", "formatter": "fir", "stream": "ext://sys.stderr"}},
    "root": {"level": _settings.log_level.upper(), "handlers": ["stderr"]},
    "loggers": {
        "gunicorn.error": {"level": "INFO", "handlers": ["stderr"], "propagate": False},
        "gunicorn.access": {"level": "INFO", "handlers": [], "propagate": False},
    },
}

# Threaded workers: a client long-polling a job (GET /api/v1/jobs/<id>?wait=S) holds one
# thread, not a whole worker process. Requests are short and mostly wait on the database or
# the disk, so threads are enough; CPU-heavy work happens in the Celery workers.
worker_class = "gthread"
threads = 8
