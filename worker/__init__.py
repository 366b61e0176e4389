"""FIR's Celery workers: the app factory, the per-process model holder and the tasks."""
