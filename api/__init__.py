"""FIR's HTTP API: a thin Flask (APIFlask) app that validates requests, writes jobs to the
database, enqueues them by task name and reads results back. It never imports torch."""

from api.app import create_app

__all__ = ["create_app"]
