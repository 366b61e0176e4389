"""Engines and sessions: one engine per database URL per process, one session per unit of work.

``session_scope(target)`` commits on success and rolls back on error; after a commit that
finished a job (see :data:`FINISHED_JOBS`) it rings FIR home's job bell (:mod:`shared.jobbell`).
Engines are cached per URL; after a fork the child drops (without closing) the connections it
inherited, so a Celery prefork child never shares a socket or SQLite handle with its parent.

SQLite connections get ``foreign_keys=ON``, WAL journaling, ``synchronous=NORMAL`` and a busy
timeout. SQLAlchemy, not the sqlite3 module, emits ``BEGIN`` (the documented recipe), so that
SAVEPOINTs work; ``session_scope(..., immediate=True)`` starts with ``BEGIN IMMEDIATE`` for
read-then-write transactions that race other processes.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import Connection, make_url
from sqlalchemy.orm import Session, sessionmaker

from shared import jobbell
from shared.config import Settings

SQLITE_BUSY_TIMEOUT_MS = 30_000
SQLITE_MMAP_BYTES = 0x7FFF0000  # SQLite's default compile-time ceiling (about 2 GiB)

_lock = threading.Lock()
_engines: dict[str, Engine] = {}
_engine_pids: dict[str, int] = {}  # the process whose connections each cached pool holds
_fork_hook_installed = False

# ``session.info`` key: set by a transition to a terminal status, read after the commit
FINISHED_JOBS = "fir_finished_jobs"


def _url_of(target: str | Settings | None) -> str:
    if target is None:
        return Settings().resolved_database_url()
    if isinstance(target, Settings):
        return target.resolved_database_url()
    return target


def ensure_sqlite_folder(url: str) -> None:
    """Create the folder of a SQLite file database if it is missing."""
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite":
        return
    database = parsed.database
    if not database or database == ":memory:" or database.startswith("file:"):
        return
    Path(database).expanduser().resolve().parent.mkdir(parents=True, exist_ok=True)


def _install_sqlite_hooks(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Let SQLAlchemy emit BEGIN itself (pysqlite's implicit BEGIN breaks SAVEPOINT).
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        try:
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=NORMAL")
            # Memory-mapped reads: loading a catalogue's vectors is ~30% faster.
            cursor.execute(f"PRAGMA mmap_size={SQLITE_MMAP_BYTES}")
        finally:
            cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        mode = conn.get_execution_options().get("sqlite_begin", "")
        conn.exec_driver_sql(f"BEGIN {mode}".strip())


def create_fir_engine(url: str, **kwargs: Any) -> Engine:
    """A new engine for ``url`` with FIR's settings (uncached; prefer :func:`get_engine`)."""
    backend = make_url(url).get_backend_name()
    if backend == "sqlite":
        ensure_sqlite_folder(url)
        kwargs.setdefault("connect_args", {}).setdefault("timeout", SQLITE_BUSY_TIMEOUT_MS / 1000)
    else:
        kwargs.setdefault("pool_pre_ping", True)
    engine = create_engine(url, **kwargs)
    if backend == "sqlite":
        _install_sqlite_hooks(engine)
    return engine


def get_engine(target: str | Settings | None = None) -> Engine:
    """The process's engine for a URL (or for ``Settings().resolved_database_url()``)."""
    url = _url_of(target)
    with _lock:
        engine = _engines.get(url)
        if engine is None:
            engine = create_fir_engine(url)
            _engines[url] = engine
            _engine_pids[url] = os.getpid()
    dispose_after_fork()
    return engine


def get_sessionmaker(engine: Engine) -> sessionmaker[Session]:
    """A session factory bound to ``engine`` (``expire_on_commit=False``)."""
    return sessionmaker(bind=engine, expire_on_commit=False)


@contextmanager
def session_scope(
    target: Engine | Settings | str | None = None, *, immediate: bool = False
) -> Iterator[Session]:
    """A session for one unit of work: commit when the block ends, roll back if it raises.

    ``target`` is an engine, a Settings, a URL, or None (``Settings()`` from the environment).
    ``immediate=True`` takes SQLite's write lock at BEGIN (no effect on PostgreSQL).
    """
    engine = target if isinstance(target, Engine) else get_engine(target)
    if immediate and engine.dialect.name == "sqlite":
        engine = engine.execution_options(sqlite_begin="IMMEDIATE")
    session = Session(bind=engine, expire_on_commit=False)
    try:
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()
    if session.info.get(FINISHED_JOBS) and not isinstance(target, Engine | str):
        # a job reached a terminal status in this (committed) transaction: wake the long polls
        jobbell.ring(jobbell.bell_path((target or Settings()).resolved_home()))


def _dispose_in_child() -> None:
    pid = os.getpid()
    for url, engine in list(_engines.items()):
        if _engine_pids.get(url) != pid:
            engine.dispose(close=False)
            _engine_pids[url] = pid


def dispose_after_fork() -> None:
    """Make forked children drop (not close) the pooled connections they inherit.

    Registers an ``os.register_at_fork(after_in_child=...)`` hook once per process
    (:func:`get_engine` does so too), and when called in a child (e.g. from Celery's
    ``worker_process_init``) drops right away what the parent's engines still pool.
    Idempotent: calling it again is harmless.
    """
    global _fork_hook_installed
    if not _fork_hook_installed:
        with _lock:
            if not _fork_hook_installed:
                os.register_at_fork(after_in_child=_dispose_in_child)
                _fork_hook_installed = True
    _dispose_in_child()


def dispose_engines() -> None:
    """Close every cached engine's connections and forget them (tests, shutdown)."""
    with _lock:
        engines = list(_engines.values())
        _engines.clear()
        _engine_pids.clear()
    for engine in engines:
        engine.dispose()
