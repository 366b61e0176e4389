"""Starting FIR's processes (API, worker, beat) as child processes, and stopping them
cleanly. The command line uses this; it never imports the API or the worker."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from shared.config import Settings


def _bin(name: str) -> str:
    """A console script next to this Python (the same virtual environment)."""
    candidate = Path(sys.executable).parent / name
    return str(candidate) if candidate.exists() else name


def process_commands(settings: Settings, queues: str = "gpu,cpu", api_workers: int = 2,
                     concurrency: int = 1) -> dict[str, list[str]]:
    return {
        "worker": [_bin("celery"), "-A", "worker.celery_app", "worker", "-Q", queues, "-c", str(concurrency),
                   "--loglevel", "INFO", "-n", f"fir-worker-{os.getpid()}@%h"],
        "beat": [_bin("celery"), "-A", "worker.celery_app", "beat", "--loglevel", "INFO"],
        # gunicorn's own lines in the app's log format; no gunicorn access log (the app writes one
        # line per request, with its request id): api/gunicorn_conf.py.
        "api": [_bin("gunicorn"), "-c", "python:api.gunicorn_conf", "-w", str(api_workers),
                "-b", f"{settings.api_host}:{settings.api_port}", "--timeout", "120", "api.wsgi:app"],
    }


def service_env(settings: Settings) -> dict[str, str]:
    env = dict(os.environ)
    env["FIR_HOME"] = str(settings.resolved_home())
    env["FIR_DATABASE_URL"] = settings.resolved_database_url()
    if settings.broker_url:
        env["FIR_BROKER_URL"] = settings.broker_url
    env["FIR_API_HOST"] = settings.api_host
    env["FIR_API_PORT"] = str(settings.api_port)
    env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 2))))
    return env


def api_metrics_env(settings: Settings, env: dict[str, str]) -> dict[str, str]:
    """The API's environment with prometheus_client's multiprocess mode on, so that
    ``/metrics`` sums every gunicorn worker's counts: a fresh folder per start (unless the
    environment names one already)."""
    if env.get("PROMETHEUS_MULTIPROC_DIR"):
        return env
    folder = settings.resolved_home() / "metrics" / "api"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True, exist_ok=True)
    return {**env, "PROMETHEUS_MULTIPROC_DIR": str(folder)}


@dataclass
class Supervisor:
    settings: Settings
    names: Sequence[str] = ("worker", "beat", "api")
    log_dir: Path | None = None
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    def start(self) -> None:
        commands = process_commands(self.settings)
        env = service_env(self.settings)
        for name in self.names:
            proc_env = api_metrics_env(self.settings, env) if name == "api" else env
            out = None
            if self.log_dir is not None:
                self.log_dir.mkdir(parents=True, exist_ok=True)
                out = open(self.log_dir / f"{name}.log", "ab")  # noqa: SIM115 - lives with the process
            self.procs[name] = subprocess.Popen(commands[name], env=proc_env, stdout=out, stderr=subprocess.STDOUT
                                                if out else None, start_new_session=True)

    def alive(self) -> dict[str, bool]:
        return {name: p.poll() is None for name, p in self.procs.items()}

    def stop(self, timeout: float = 20.0) -> None:
        for p in self.procs.values():
            if p.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(p.pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for p in self.procs.values():
            try:
                p.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(p.pid, signal.SIGKILL)
                p.wait()
