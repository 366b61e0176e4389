"""FIR's Celery workers: the app factory, the per-process model holder and the tasks."""

from shared.threads import calm_openmp

calm_openmp()  # before torch and faiss load: a worker answers queries one at a time
