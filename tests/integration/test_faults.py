"""Faults injected into the real processes (Celery worker, gunicorn API) on real Redis and
PostgreSQL: a worker killed mid-job, Redis restarted with jobs queued, PostgreSQL unreachable,
poison jobs. Each ends with every accepted job finished and nothing half-written.

Redis here is this module's own ``redis-server`` (append-only file on, on a free port), never
the shared one; PostgreSQL is reached through a TCP proxy this module owns, so "the database is
down" means closing the proxy, never stopping the server.
"""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import requests
from PIL import Image
from sqlalchemy import func, select
from sqlalchemy.engine import make_url

from shared.config import Settings
from tests.integration.test_service import (
    BIN,
    _free_port,
    _start,
    _stop,
    poll_job,
    prepare,
    wait_for,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow]


# -- infrastructure this module owns ---------------------------------------------------------
class TcpProxy:
    """A loopback TCP forwarder that can be cut (listener closed, live connections reset) and
    restored: "PostgreSQL unreachable" without touching PostgreSQL."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.port = _free_port()
        self._conns: list[socket.socket] = []
        self._lock = threading.Lock()
        self._listener: socket.socket | None = None
        self.up()

    def up(self) -> None:
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", self.port))
        sock.listen(64)
        self._listener = sock
        threading.Thread(target=self._accept, args=(sock,), daemon=True).start()

    def down(self) -> None:
        # shutdown() first: it wakes the threads blocked in accept()/recv() on Linux, which a
        # bare close() from another thread does not (the kernel socket would live on)
        if self._listener is not None:
            with contextlib.suppress(OSError):
                self._listener.shutdown(socket.SHUT_RDWR)
            self._listener.close()
            self._listener = None
        with self._lock:
            for c in self._conns:
                with contextlib.suppress(OSError):
                    c.shutdown(socket.SHUT_RDWR)
                with contextlib.suppress(OSError):
                    c.close()
            self._conns.clear()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._conns += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                with contextlib.suppress(OSError):
                    s.close()


class OwnRedis:
    """A redis-server for this module only, persisting to an append-only file."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.port = _free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        redis_server = shutil.which("redis-server")
        if redis_server is None:
            pytest.skip("redis-server is not installed")
        self.proc = subprocess.Popen(
            [redis_server, "--port", str(self.port), "--bind", "127.0.0.1", "--appendonly", "yes",
             "--appendfsync", "always", "--save", "", "--dir", str(self.folder)],
            stdout=open(self.folder / "redis.log", "ab"), stderr=subprocess.STDOUT)  # noqa: SIM115
        import redis

        wait_for(lambda: redis.Redis(port=self.port, socket_connect_timeout=1).ping(), 20, "own redis")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()  # SIGTERM: redis flushes the append-only file and exits
            self.proc.wait(20)
        self.proc = None


@dataclass
class Env:
    home: Path
    settings: Settings  # as the processes see it (database through the proxy)
    direct: Settings  # the test's own view (database directly)
    catalogue_id: int
    catalogue_dir: Path
    redis: OwnRedis
    proxy: TcpProxy
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    port: int = 0

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def logs(self) -> list[Path]:
        return sorted(self.home.glob("*.log"))

    def env(self, **extra: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("FIR_")}
        env.update(FIR_HOME=str(self.home), FIR_DATABASE_URL=self.settings.resolved_database_url(),
                   FIR_BROKER_URL=self.redis.url, FIR_LOADER_WORKERS="0", FIR_WORKER_HEARTBEAT_S="2",
                   FIR_BROKER_VISIBILITY_TIMEOUT="6", FIR_BATCH_SIZE="2", OMP_NUM_THREADS="1",
                   FIR_LOG_FORMAT="text")
        env.update(extra)
        return env

    def start_worker(self, name: str) -> subprocess.Popen[bytes]:
        cmd = [str(BIN / "celery"), "-A", "worker.celery_app", "worker", "-Q", "gpu,cpu", "-c", "1",
               "-n", f"{name}@%h", "--loglevel", "INFO"]
        proc = _start(cmd, self.env(), self.home / f"{name}.log")
        self.procs[name] = proc
        return proc

    def start_api(self) -> None:
        self.port = _free_port()
        cmd = [str(BIN / "gunicorn"), "-w", "2", "-b", f"127.0.0.1:{self.port}", "--timeout", "60", "api.wsgi:app"]
        self.procs["api"] = _start(cmd, self.env(), self.home / "api.log")
        wait_for(lambda: requests.get(f"{self.base}/healthz", timeout=3).ok, 60, "the API", self.logs)

    def wait_worker(self, name: str) -> None:
        def seen() -> bool:
            from shared.db import heartbeat
            from shared.db.session import session_scope

            with session_scope(self.direct) as session:
                return any(w["name"].startswith(name + "@") and w["pid"] == self.procs[name].pid
                           for w in heartbeat.recent(session, max_age_s=10))

        wait_for(seen, 120, f"worker {name}", self.logs)


def _jpeg(seed: int, size: int = 64) -> bytes:
    arr = np.random.default_rng(seed).integers(0, 255, (size, size, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "JPEG")
    return buf.getvalue()


def _query(env: Env, seed: int) -> int:
    resp = requests.post(f"{env.base}/api/v1/queries", data={"catalogue": "shop", "k": "3"},
                         files={"file": ("q.jpg", _jpeg(seed), "image/jpeg")}, timeout=30)
    assert resp.status_code == 202, resp.text
    return int(resp.json()["job_id"])


@pytest.fixture(scope="module")
def env(postgres_database_factory: Callable[[], str], trained: Any,
        tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    home = tmp_path_factory.mktemp("faults-home")
    catalogue_dir = home / "catalogue"
    shutil.copytree(trained.catalogue / "train", catalogue_dir)
    db_url = postgres_database_factory()
    url = make_url(db_url)
    proxy = TcpProxy((url.host or "127.0.0.1", url.port or 5432))
    proxied = url.set(host="127.0.0.1", port=proxy.port).render_as_string(hide_password=False)
    redis_dir = home / "redis"
    redis_dir.mkdir()
    own = OwnRedis(redis_dir)
    own.start()
    direct = Settings(home=home, database_url=db_url, broker_url=own.url, loader_workers=0)
    catalogue_id = prepare(direct, trained, catalogue_dir)
    e = Env(home, direct.model_copy(update={"database_url": proxied}), direct, catalogue_id, catalogue_dir,
            own, proxy)
    try:
        e.start_api()
        e.start_worker("w1")
        e.wait_worker("w1")
        yield e
    finally:
        for proc in e.procs.values():
            _stop(proc)
        own.stop()
        proxy.down()


def _counts(env: Env) -> dict[str, int]:
    from shared.db.models import Embedding, Item, Job, QueryResult
    from shared.db.session import session_scope

    with session_scope(env.direct) as session:
        return {m.__name__: int(session.scalar(select(func.count()).select_from(m)) or 0)
                for m in (Embedding, Item, Job, QueryResult)}


# -- the faults ------------------------------------------------------------------------------
def test_worker_killed_mid_reindex_is_redelivered_and_finishes(env: Env) -> None:
    from shared.db.models import Embedding, Item
    from shared.db.session import session_scope

    extra = env.catalogue_dir / "dress"
    extra.mkdir(exist_ok=True)
    for n in range(300):
        (extra / f"new-{n:03d}.jpg").write_bytes(_jpeg(1000 + n, 48))
    resp = requests.post(f"{env.base}/api/v1/catalogues/{env.catalogue_id}/reindex", json={}, timeout=30)
    assert resp.status_code == 202
    job_id = resp.json()["job_id"]

    def started() -> bool:
        job = requests.get(f"{env.base}/api/v1/jobs/{job_id}", timeout=10).json()
        assert job["status"] != "succeeded", "the re-index finished before the kill: make it slower"
        return job["status"] == "running" and (job["progress"]["done"] or 0) > 0

    wait_for(started, 240, "the re-index to be under way", env.logs)
    os.killpg(env.procs["w1"].pid, signal.SIGKILL)  # the worker and its pool child, mid-batch
    env.procs["w1"].wait()
    before = requests.get(f"{env.base}/api/v1/jobs/{job_id}", timeout=10).json()
    assert before["status"] == "running"  # the dead worker left it running
    env.start_worker("w2")
    job = poll_job(env.base, job_id, timeout=240, logs=env.logs)
    assert job["status"] == "succeeded", job
    with session_scope(env.direct) as session:
        version = session.scalar(select(Embedding.model_version_id).limit(1))
        items = set(session.scalars(select(Item.id).where(Item.catalogue_id == env.catalogue_id,
                                                           Item.status == "active")))
        rows = list(session.execute(select(Embedding.item_id).where(Embedding.model_version_id == version)))
    embedded = [r[0] for r in rows if r[0] in items]
    assert len(embedded) == len(set(embedded)), "duplicate embeddings"
    assert set(embedded) == items, f"{len(items - set(embedded))} items without an embedding"
    assert len(items) >= 300


def test_redis_restarted_with_jobs_queued_loses_none(env: Env) -> None:
    env.wait_worker("w2")
    _stop(env.procs.pop("w2"))  # no worker: the jobs wait in Redis
    ids = [_query(env, 500 + n) for n in range(8)]
    env.redis.stop()
    env.redis.start()  # the same append-only file
    env.start_worker("w3")
    for job_id in ids:
        job = poll_job(env.base, job_id, timeout=180, logs=env.logs)
        assert job["status"] == "succeeded", job
        assert len(job["results"]) == 3


def test_poison_jobs_fail_bounded_and_never_block_the_queue(env: Env) -> None:
    from shared.db import services
    from shared.db.session import session_scope
    from worker.factory import TASK_INDEX, TASK_QUERY, make_celery

    celery = make_celery(env.direct)
    with session_scope(env.direct) as session:
        # an index job for a catalogue that does not exist: fails every time it is run
        poison, _ = services.create_job(session, "index", params={"catalogue_id": 987654, "full": False})
    celery.send_task(TASK_INDEX, args=[poison.id], queue="gpu")
    celery.send_task(TASK_QUERY, args=[123456789], queue="gpu")  # a job id with no row at all
    vanished = _query(env, 7)
    with session_scope(env.direct) as session:
        upload = (services.get_job(session, vanished).params or {})["upload"]
    Path(upload).unlink(missing_ok=True)  # its image is gone: a query that can only fail
    good = _query(env, 8)
    assert poll_job(env.base, good, timeout=120, logs=env.logs)["status"] == "succeeded"
    failed = poll_job(env.base, poison.id, timeout=60, logs=env.logs)
    assert failed["status"] == "failed" and failed["error"]["code"]
    lost = poll_job(env.base, vanished, timeout=60, logs=env.logs)
    assert lost["status"] in ("failed", "succeeded")  # micro-batched with another it may have run first


def test_postgres_unreachable_gives_503_then_recovers(env: Env) -> None:
    before = _counts(env)
    env.proxy.down()
    try:
        resp = requests.get(f"{env.base}/api/v1/catalogues/{env.catalogue_id}", timeout=30)
        assert resp.status_code == 503, resp.text
        assert resp.json()["error"]["code"] == "database_unavailable"
        assert int(resp.headers["Retry-After"]) > 0
        resp = requests.post(f"{env.base}/api/v1/queries", data={"catalogue": "shop"},
                             files={"file": ("q.jpg", _jpeg(9), "image/jpeg")}, timeout=30)
        assert resp.status_code == 503
        assert requests.get(f"{env.base}/healthz", timeout=10).status_code == 200
        ready = requests.get(f"{env.base}/readyz", timeout=30)
        assert ready.status_code == 503
        time.sleep(3)
    finally:
        env.proxy.up()
    assert _counts(env) == before  # nothing was written while it was down

    def back() -> bool:
        return requests.get(f"{env.base}/api/v1/catalogues/{env.catalogue_id}", timeout=10).status_code == 200

    wait_for(back, 60, "the API to reach the database again", env.logs)
    # the worker lost its connections too: its next job still runs
    job_id = _query(env, 10)
    assert poll_job(env.base, job_id, timeout=120, logs=env.logs)["status"] == "succeeded"


def test_database_cut_while_a_job_runs_retries_and_finishes(env: Env) -> None:
    job_id = _query(env, 11)
    env.proxy.down()
    time.sleep(4)
    env.proxy.up()
    job = poll_job(env.base, job_id, timeout=180, logs=env.logs)
    assert job["status"] == "succeeded", job
    from shared.db.models import QueryResult
    from shared.db.session import session_scope

    with session_scope(env.direct) as session:
        assert session.scalar(select(func.count()).select_from(QueryResult)
                              .where(QueryResult.job_id == job_id)) == 1


def test_bounded_load_has_no_errors_and_loses_no_job(env: Env) -> None:
    """The smaller sibling of bench/bench_load.py (1,000 queries): 100 queries, 8 clients."""
    from bench.bench_load import run_load

    before = _counts(env)["Job"]
    report = run_load(env.base, "shop", queries=100, clients=8, timeout_s=240)
    assert report.errors == [], report.errors[:5]
    assert report.accepted == report.submitted == 100 and report.succeeded == 100 and report.lost == 0
    assert _counts(env)["Job"] == before + 100
    print(report.table(8))
