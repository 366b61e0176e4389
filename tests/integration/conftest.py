"""Integration fixtures: real databases (SQLite file and PostgreSQL), migrated once per session.

``db_url`` is parametrised over ``sqlite`` and ``postgresql``: each backend gets a fresh
database (a SQLite file in a temporary folder; a PostgreSQL database ``fir_test_<pid>_<n>``
created next to ``FIR_TEST_POSTGRES_URL`` and dropped at the end), upgraded to head once.
``db_session`` runs each test inside a transaction that is rolled back (SQLAlchemy 2's "join an
external transaction" recipe), so tests never see each other's rows.

Where PostgreSQL cannot be reached its tests are skipped with the reason, except under
``CI=true``, where that is a failure.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine, create_engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session

from shared.db import migrate
from shared.db.session import create_fir_engine
from shared.procs import pid_alive

DEFAULT_POSTGRES_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
BACKENDS = ["sqlite", "postgresql"]


def postgres_base_url() -> str:
    return os.environ.get("FIR_TEST_POSTGRES_URL", DEFAULT_POSTGRES_URL)


def _in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in ("1", "true", "yes")


@pytest.fixture(scope="session")
def postgres_admin() -> Iterator[Engine]:
    """An autocommit engine on the base PostgreSQL database (skip/fail when unreachable)."""
    url = postgres_base_url()
    engine = create_engine(url, isolation_level="AUTOCOMMIT", connect_args={"connect_timeout": 5})
    try:
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
    except Exception as exc:
        engine.dispose()
        reason = f"PostgreSQL unreachable at {make_url(url).render_as_string()}: {exc}"
        if _in_ci():
            pytest.fail(reason)
        pytest.skip(reason)
    yield engine
    engine.dispose()


def _drop_stale_databases(admin: Engine) -> None:
    """Drop ``fir_test_<pid>_<n>`` databases left by killed runs (dead pid, nobody connected)."""
    with admin.connect() as conn:
        rows = conn.execute(
            text(
                "SELECT d.datname FROM pg_database d WHERE d.datname LIKE 'fir\\_test\\_%' "
                "AND NOT EXISTS (SELECT 1 FROM pg_stat_activity a WHERE a.datname = d.datname)"
            )
        ).all()
        for (name,) in rows:
            parts = name.split("_")
            if len(parts) == 4 and parts[2].isdigit() and not pid_alive(int(parts[2])):
                conn.execute(text(f'DROP DATABASE IF EXISTS "{name}"'))


@pytest.fixture(scope="session")
def postgres_database_factory(postgres_admin: Engine) -> Iterator[Callable[[], str]]:
    """Makes fresh, empty PostgreSQL databases for this run; drops them all at the end."""
    _drop_stale_databases(postgres_admin)
    created: list[str] = []
    counter = itertools.count()

    def make() -> str:
        name = f"fir_test_{os.getpid()}_{next(counter)}"
        with postgres_admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
            conn.execute(text(f'CREATE DATABASE "{name}"'))
        created.append(name)
        return (
            make_url(postgres_base_url()).set(database=name).render_as_string(hide_password=False)
        )

    yield make
    with postgres_admin.connect() as conn:
        for name in created:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture(params=BACKENDS)
def empty_db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh, unmigrated database of each backend (the SQLite file's folder does not exist)."""
    backend = request.param
    if backend == "sqlite":
        return f"sqlite:///{tmp_path / 'empty' / 'fir.db'}"
    factory = request.getfixturevalue("postgres_database_factory")
    return str(factory())


@pytest.fixture(scope="session", params=BACKENDS)
def db_url(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> str:
    """A database of each backend, migrated to head once per test session."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path_factory.mktemp('db') / 'fir.db'}"
    else:
        url = request.getfixturevalue("postgres_database_factory")()
    migrate.upgrade(url)
    return url


@pytest.fixture(scope="session")
def db_engine(db_url: str) -> Iterator[Engine]:
    engine = create_fir_engine(db_url)
    yield engine
    engine.dispose()


@pytest.fixture
def db_session(db_engine: Engine) -> Iterator[Session]:
    """A session in a transaction that is rolled back after the test.

    Code under test may commit or roll back: with ``join_transaction_mode="create_savepoint"``
    those act on a SAVEPOINT, never on the outer transaction.
    """
    connection = db_engine.connect()
    transaction = connection.begin()
    session = Session(bind=connection, join_transaction_mode="create_savepoint")
    try:
        yield session
    finally:
        session.close()
        if transaction.is_active:
            transaction.rollback()
        connection.close()


@pytest.fixture
def backend(db_engine: Engine) -> str:
    return db_engine.dialect.name
